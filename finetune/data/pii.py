"""PII de-identification with Presidio, offline, with recognizers that work on Chinese text.

Presidio's built-in recognizers anchor on `\\b`, which never matches between a CJK
character and a digit, so PII glued to Chinese text is missed; the recognizers here
use explicit look-arounds instead and validate checksums where the format has one.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Any

from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
from presidio_analyzer.nlp_engine import NoOpNlpEngine
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

from finetune.config import PiiConfig
from finetune.data.records import Record, StageResult, make_record

# Presidio selects recognizers by language code; records mix Chinese and English in one
# string, so every recognizer is registered under one code and each text is analyzed once.
LANGUAGE = "en"

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def cn_resident_id_check_digit(body: str) -> str:
    """The ISO 7064 MOD 11-2 check character for the first 17 digits of a PRC resident ID number."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]


def is_valid_cn_resident_id(value: str) -> bool:
    """True if an 18-character PRC resident ID number has a correct check digit."""
    value = value.upper()
    if len(value) != 18 or not value[:17].isdigit():
        return False
    return cn_resident_id_check_digit(value[:17]) == value[17]


def luhn_valid(digits: str) -> bool:
    """True if a digit string passes the Luhn checksum (bank and credit card numbers)."""
    digits = "".join(ch for ch in digits if ch.isdigit())
    if len(digits) < 13:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


class CnResidentIdRecognizer(PatternRecognizer):
    """18-digit PRC resident ID with birth-date shape and checksum."""

    def __init__(self) -> None:
        pattern = (
            r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])"
            r"(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9A-Za-z])"
        )
        super().__init__(
            supported_entity="CN_RESIDENT_ID",
            patterns=[Pattern("cn_resident_id", pattern, 0.6)],
            context=["身份证", "证件号", "ID"],
            supported_language=LANGUAGE,
        )

    def validate_result(self, pattern_text: str) -> bool:
        return is_valid_cn_resident_id(pattern_text)


class BankCardRecognizer(PatternRecognizer):
    """13-19 digit card numbers (optionally grouped by spaces or dashes) that pass Luhn."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CREDIT_CARD",
            patterns=[Pattern("card_number", r"(?<!\d)\d(?:[ -]?\d){12,18}(?![0-9Xx])", 0.5)],
            context=["卡号", "银行卡", "card"],
            supported_language=LANGUAGE,
        )

    def validate_result(self, pattern_text: str) -> bool:
        digits = "".join(ch for ch in pattern_text if ch.isdigit())
        # An 18-digit run that is a valid resident ID is reported as that, not as a card.
        return luhn_valid(digits) and not is_valid_cn_resident_id(pattern_text)


def build_recognizers() -> list[PatternRecognizer]:
    """The recognizers this project ships (Chinese-aware, offline)."""
    mobile = PatternRecognizer(
        supported_entity="CN_MOBILE_PHONE",
        patterns=[Pattern("cn_mobile", r"(?<![\d+])(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)", 0.7)],
        context=["电话", "手机", "phone", "mobile"],
        supported_language=LANGUAGE,
    )
    email = PatternRecognizer(
        supported_entity="EMAIL_ADDRESS",
        # ASCII-only local part and domain so adjacent Chinese text is not swallowed.
        patterns=[
            Pattern(
                "email",
                r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])",
                0.9,
            )
        ],
        supported_language=LANGUAGE,
    )
    return [mobile, CnResidentIdRecognizer(), email, BankCardRecognizer()]


@lru_cache(maxsize=1)
def build_analyzer() -> AnalyzerEngine:
    """A Presidio analyzer that needs no model download (pattern recognizers, no-op NLP engine)."""
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in build_recognizers():
        registry.add_recognizer(recognizer)
    nlp_engine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "noop"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE])


def find_pii(text: str, entities: list[str], threshold: float) -> list[Any]:
    """Presidio results (entity_type, start, end, score) for one text."""
    if not text:
        return []
    return build_analyzer().analyze(text=text, language=LANGUAGE, entities=entities, score_threshold=threshold)


def replace_hits(text: str, hits: list[Any]) -> str:
    """Replace the given analyzer hits by typed placeholders like `<EMAIL_ADDRESS>`."""
    if not hits:
        return text
    operators = {h.entity_type: OperatorConfig("replace", {"new_value": f"<{h.entity_type}>"}) for h in hits}
    return AnonymizerEngine().anonymize(text=text, analyzer_results=hits, operators=operators).text


def redact(text: str, entities: list[str], threshold: float = 0.5) -> str:
    """Replace every detected PII span by a typed placeholder (safe to log afterwards)."""
    return replace_hits(text, find_pii(text, entities, threshold))


def deidentify_records(records: list[Record], cfg: PiiConfig) -> StageResult:
    """Replace PII in every turn with typed placeholders; counts per entity, never the values."""
    result = StageResult(stage="deidentified_records", n_in=len(records))
    by_entity: Counter[str] = Counter()
    changed = 0
    for record in records:
        if not cfg.enabled:
            result.kept.append(record)
            continue
        messages = []
        for m in record["messages"]:
            hits = find_pii(m["content"], cfg.entities, cfg.score_threshold)
            by_entity.update(h.entity_type for h in hits)
            messages.append({"role": m["role"], "content": replace_hits(m["content"], hits)})
        new = make_record(messages, record["source"]["file"], record["source"]["line"])
        new["raw_id"] = record.get("raw_id", record["id"])
        changed += new["id"] != record["id"]
        result.kept.append(new)
    result.extra.update(pii_enabled=cfg.enabled, replaced_by_entity=dict(by_entity), records_changed=changed)
    result.extra["residual_scan"] = scan_residual_pii(result.kept, cfg)
    return result


def scan_residual_pii(records: list[Record], cfg: PiiConfig) -> dict[str, Any]:
    """Independent re-scan for PII left in records; examples are given by record id and entity, never value."""
    by_entity: Counter[str] = Counter()
    examples = []
    for record in records:
        for turn, m in enumerate(record["messages"]):
            for hit in find_pii(m["content"], cfg.entities, cfg.score_threshold):
                by_entity[hit.entity_type] += 1
                if len(examples) < 5:
                    examples.append({"record_id": record["id"], "turn": turn, "entity": hit.entity_type})
    return {"residual_total": sum(by_entity.values()), "by_entity": dict(by_entity), "examples": examples}
