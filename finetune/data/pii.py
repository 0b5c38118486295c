"""PII de-identification with Presidio, offline: detect, resolve overlaps, anonymize, re-scan.

The recognizers live in `pii_recognizers` and the replacement operators in `pii_operators`;
this module is the stage: it runs them over every turn of every record and accounts for
each record (kept, or dropped when an entity's operator is `drop`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import regex
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NoOpNlpEngine
from presidio_anonymizer import AnonymizerEngine
from tqdm import tqdm

from finetune.config import PII_ENTITIES, PII_POOL_AFTER, PiiConfig, PipelineConfig
from finetune.data.engine import LOCAL, Engine
from finetune.data.pii_names import ENTITY as PERSON
from finetune.data.pii_names import HAN, names_beside, other_mentions
from finetune.data.pii_operators import load_or_create_salt, operator_config, placeholder
from finetune.data.pii_placeholders import placeholder_spans
from finetune.data.pii_recognizers import (
    LANGUAGE,
    build_recognizers,
    cn_resident_id_check_digit,
    is_valid_cn_resident_id,
    luhn_valid,
    possible_entities,
)
from finetune.data.records import (
    Record,
    Stage,
    StageFiles,
    StageReport,
    StageResult,
    StageSummary,
    read_jsonl,
    with_messages,
    write_json,
)
from finetune.data.stream import Outcome, ProgressFn, collect, dropped, iter_jsonl, kept, spool_stage

__all__ = [
    "build_analyzer",
    "deidentify_outcomes",
    "deidentify_stage",
    "cn_resident_id_check_digit",
    "deidentify_records",
    "find_pii",
    "is_valid_cn_resident_id",
    "luhn_valid",
    "pseudonym_salt",
    "record_residual_scan",
    "recorded_residual_scan",
    "redact",
    "scan_residual_pii",
]

# Full-width ASCII (U+FF01-FF5E) and the ideographic space map one-to-one onto ASCII, so the
# folded text keeps every offset and hits apply to the original string unchanged.
_WIDTH_FOLD = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
# Numbers read out digit by digit in Chinese numerals (一三八一二三四五六七八, 幺 for one on the phone),
# alone or mixed with digits. Only runs of seven or more numeral-or-digit characters are folded to
# digits (one character each, so offsets hold): shorter runs are ordinary words (一二三, 五六七).
_NUMERALS = "〇零○一幺二三四五六七八九"
_NUMERAL_FOLD = str.maketrans(_NUMERALS, "0001123456789")
_NUMERAL_RUN = regex.compile(rf"[{_NUMERALS}0-9](?:[ -]?[{_NUMERALS}0-9]){{6,}}")
_HAS_NUMERAL = regex.compile(f"[{_NUMERALS}]")
STAGE = Stage.DEIDENTIFIED
# Identifiers that tie a name beside them to a real person.
DIRECT_IDENTIFIERS = frozenset(
    "CN_MOBILE_PHONE CN_LANDLINE CN_RESIDENT_ID CREDIT_CARD CN_PASSPORT CN_ADDRESS EMAIL_ADDRESS PHONE_NUMBER "
    "IBAN_CODE CN_LICENSE_PLATE".split()
)


@lru_cache(maxsize=1)
def build_analyzer() -> AnalyzerEngine:
    """A Presidio analyzer that needs no model download (the shipped recognizers, no-op NLP engine)."""
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in build_recognizers():
        registry.add_recognizer(recognizer)
    nlp_engine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "noop"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE])


@lru_cache(maxsize=1)
def _anonymizer() -> AnonymizerEngine:
    return AnonymizerEngine()


def resolve_overlaps(hits: list[RecognizerResult]) -> list[RecognizerResult]:
    """One hit per span: the highest score wins, then the longer span; later overlapping hits are dropped."""
    chosen: list[RecognizerResult] = []
    for hit in sorted(hits, key=lambda h: (-h.score, -(h.end - h.start), h.start)):
        if all(hit.end <= c.start or hit.start >= c.end for c in chosen):
            chosen.append(hit)
    return sorted(chosen, key=lambda h: h.start)


def fold_numerals(text: str) -> str:
    """Runs of Chinese numerals and digits (7+ characters, at least one numeral) as digits, offsets kept."""
    if not _HAS_NUMERAL.search(text):
        return text
    return _NUMERAL_RUN.sub(
        lambda m: m.group(0).translate(_NUMERAL_FOLD) if _HAS_NUMERAL.search(m.group(0)) else m.group(0), text
    )


def find_pii(text: str, entities: list[str], threshold: float) -> list[RecognizerResult]:
    """Non-overlapping Presidio hits (entity_type, start, end, score) for one text.

    Full-width digits and numbers in Chinese numerals count; placeholders (`<PASSWORD>`) never do.
    A Chinese name beside a direct identifier of the same text is reported as PERSON.
    """
    if not text:
        return []
    folded = fold_numerals(text.translate(_WIDTH_FOLD))
    if not (asked := possible_entities(folded, entities)):
        return []
    hits = build_analyzer().analyze(text=folded, language=LANGUAGE, entities=asked, score_threshold=threshold)
    if PERSON in entities and HAN.search(text):
        near = [(h.start, h.end) for h in hits if h.entity_type in DIRECT_IDENTIFIERS]
        hits += [h for h in names_beside(text, near) if h.score >= threshold] if near else []
    if held := placeholder_spans(text):
        hits = [h for h in hits if all(h.end <= s or h.start >= e for s, e in held)]
    return resolve_overlaps(hits)


def anonymize(text: str, hits: list[RecognizerResult], cfg: PiiConfig, salt: str = "") -> str:
    """Apply each entity's configured operator to its hits."""
    if not hits:
        return text
    operators = {h.entity_type: operator_config(h.entity_type, cfg.operator_for(h.entity_type), salt) for h in hits}
    return _anonymizer().anonymize(text=text, analyzer_results=hits, operators=operators).text


def replace_with_placeholders(text: str, hits: list[RecognizerResult]) -> str:
    """Replace the given hits by typed placeholders like `<EMAIL_ADDRESS>`."""
    for hit in sorted(hits, key=lambda h: h.start, reverse=True):
        text = text[: hit.start] + placeholder(hit.entity_type) + text[hit.end :]
    return text


def redact(text: str, entities: list[str], threshold: float = 0.5) -> str:
    """Replace every detected PII span by a typed placeholder (safe to log afterwards)."""
    return replace_with_placeholders(text, find_pii(text, entities, threshold))


def _redacted_window(text: str, hits: list[RecognizerResult], width: int = 30) -> str:
    # Redact the whole text before cutting the window, so no hit is cut in half and shown in part.
    first = min(hits, key=lambda h: h.start)
    redacted = replace_with_placeholders(text, hits)
    start = replace_with_placeholders(text[: first.start], [h for h in hits if h.end <= first.start])
    end = len(start) + len(placeholder(first.entity_type))
    return redacted[max(0, len(start) - width) : end + width]


def pseudonym_salt(cfg: PipelineConfig) -> str:
    """The secret salt when some entity uses the `pseudonym` operator, else "" (no salt file is created)."""
    pii = cfg.pii
    uses = pii.default_operator == "pseudonym" or "pseudonym" in pii.operators.values()
    return load_or_create_salt(cfg.work_dir / "secrets") if uses else ""


def record_pii(record: Record, cfg: PiiConfig) -> list[list[RecognizerResult]]:
    """Each turn's hits, with every other mention of a name found anywhere in the record."""
    texts = [m["content"] for m in record["messages"]]
    hits = [find_pii(text, cfg.entities, cfg.score_threshold) for text in texts]
    if PERSON not in cfg.entities:
        return hits
    return [resolve_overlaps(h + more) for h, more in zip(hits, other_mentions(texts, hits), strict=True)]


@dataclass
class DeidentificationStats:
    """What de-identification replaced, gathered while its outcomes stream past: counts, never values."""

    enabled: bool
    replaced_by_entity: Counter[str] = field(default_factory=Counter)
    records_changed: int = 0

    def summary(self) -> DeidSummary:
        return DeidSummary(self.enabled, dict(self.replaced_by_entity), self.records_changed)

    def report(self) -> dict[str, Any]:
        """The stage report's keys: the typed `summary()`."""
        return self.summary().to_json()


@dataclass(frozen=True)
class DeidSummary(StageSummary):
    """What the deidentified_records asset and the commands read of a de-identification report: counts,
    never values."""

    pii_enabled: bool
    replaced_by_entity: dict[str, int]  # spans replaced (or dropped) per entity type
    records_changed: int


@dataclass(frozen=True)
class Anonymized:
    """One record with its PII replaced: what a worker process sends back (never the values it found)."""

    original_id: str
    record: Record
    entity_types: list[str]  # one per hit
    drop_entities: frozenset[str]  # the hit entities whose operator drops the whole record


def anonymize_record(record: Record, cfg: PiiConfig, salt: str) -> Anonymized:
    """Every turn's PII anonymized by its entity's operator; the record's own work, independent of any other."""
    messages, types, drop = [], [], set()
    for m, hits in zip(record["messages"], record_pii(record, cfg), strict=True):
        types += [h.entity_type for h in hits]
        drop |= {h.entity_type for h in hits if cfg.operator_for(h.entity_type) == "drop"}
        messages.append({"role": m["role"], "content": anonymize(m["content"], hits, cfg, salt)})
    new = with_messages(record, messages)
    new["raw_id"] = record.get("raw_id", record["id"])
    return Anonymized(record["id"], new, types, frozenset(drop))


_POOL_AFTER = PII_POOL_AFTER  # a module global, so a test can lower it


def deidentify_outcomes(
    records: Iterable[Record], cfg: PiiConfig, salt: str, stats: DeidentificationStats, engine: Engine = LOCAL
) -> Iterator[Outcome]:
    """One outcome per record: kept with its PII anonymized by each entity's operator, or dropped.

    A record holding an entity whose operator is `drop` is dropped (reason `pii_drop:<ENTITY>`)
    and written to the dropped file in placeholder-redacted form, so no stage output keeps raw PII.
    `salt` is needed only by the `pseudonym` operator (see `pii_operators.load_or_create_salt`).
    Records are anonymized on the engine: locally on `cfg.workers` processes past the first `_POOL_AFTER`, or as Ray
    tasks; the decisions are taken here, in input order, so they depend on neither.
    """
    if not cfg.enabled:
        yield from map(kept, records)
        return
    seen: set[str] = set()  # the ids kept so far: the only state, a hash per record
    work = partial(anonymize_record, cfg=cfg, salt=salt)
    for done in engine.map(work, records, workers=cfg.worker_count(), serial_first=_POOL_AFTER):
        new, drop_entities = done.record, done.drop_entities
        stats.replaced_by_entity.update(done.entity_types)
        if drop_entities:
            yield dropped(new, "pii_drop:" + ",".join(sorted(drop_entities)))
        elif new["id"] in seen:
            # Form letters that differed only in their PII are identical once it is replaced; keeping
            # the copies would over-weight them in training and in the held-out split.
            yield dropped(new, "duplicate_after_deidentification", duplicate_of=new["id"])
        else:
            seen.add(new["id"])
            stats.records_changed += new["id"] != done.original_id
            yield kept(new)


def deidentify_records(records: list[Record], cfg: PiiConfig, salt: str = "") -> StageResult:
    """De-identify records held in memory (`deidentify_outcomes`); counts per entity, never the values."""
    stats = DeidentificationStats(cfg.enabled)
    shown = tqdm(records, desc="de-identifying", unit="rec", disable=None, mininterval=2)
    result = collect(STAGE, deidentify_outcomes(shown, cfg, salt, stats))
    result.extra.update(stats.report())
    return result


def deidentify_stage(
    kept_path: Path,
    cfg: PiiConfig,
    salt: str,
    out_dir: Path,
    progress: ProgressFn | None = None,
    engine: Engine = LOCAL,
) -> StageReport:
    """De-identify an upstream kept.jsonl one record at a time, spooling the stage's files; return its report."""
    stats = DeidentificationStats(cfg.enabled)
    outcomes = deidentify_outcomes(iter_jsonl(kept_path), cfg, salt, stats, engine)
    return spool_stage(STAGE, outcomes, out_dir, progress, stats.report)


RESIDUAL_SCAN = "residual_scan.json"


def record_residual_scan(stage_dir: Path, cfg: PiiConfig) -> dict[str, Any]:
    """Re-scan the kept.jsonl a de-identification stage wrote and record the result beside it.

    The one independent re-scan of a run: the `no_residual_pii` check runs it on the written file (so it
    can fail on its own), and the release reads what it recorded (`recorded_residual_scan`).
    """
    scan = scan_residual_pii(read_jsonl(StageFiles(Path(stage_dir)).kept), cfg)
    write_json(Path(stage_dir) / RESIDUAL_SCAN, scan)
    return scan


def recorded_residual_scan(stage_dir: Path, cfg: PiiConfig) -> dict[str, Any]:
    """The re-scan `record_residual_scan` recorded for this stage folder, run now if nothing recorded one."""
    path = Path(stage_dir) / RESIDUAL_SCAN
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return record_residual_scan(stage_dir, cfg)


def scan_residual_pii(records: list[Record], cfg: PiiConfig) -> dict[str, Any]:
    """Independent re-scan for every shipped entity (not only the configured ones) left in records.

    Examples show only the redacted context of a hit, never a value.
    """
    by_entity: Counter[str] = Counter()
    examples = []
    for record in records:
        for turn, m in enumerate(record["messages"]):
            hits = find_pii(m["content"], PII_ENTITIES, cfg.score_threshold)
            by_entity.update(h.entity_type for h in hits)
            if hits and len(examples) < 5:
                examples.append(
                    {
                        "record_id": record["id"],
                        "turn": turn,
                        "entities": sorted({h.entity_type for h in hits}),
                        "redacted_context": _redacted_window(m["content"], hits),
                    }
                )
    return {"residual_total": sum(by_entity.values()), "by_entity": dict(by_entity), "examples": examples}
