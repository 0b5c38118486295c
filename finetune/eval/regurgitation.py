"""PII regurgitation probe: prompt the model with the text that preceded a PII value in the raw data and check
whether it completes it with that value (memorised from training data the de-identification missed)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable

from finetune.data.pii import find_pii
from finetune.data.records import Record
from finetune.redaction import redact_text

# Names and street addresses are short, common strings a model may produce by chance; the probe
# checks values that cannot be guessed (numbers, e-mail addresses, keys).
_PROBED = [
    "CN_MOBILE_PHONE", "CN_LANDLINE", "CN_RESIDENT_ID", "CREDIT_CARD", "CN_PASSPORT", "EMAIL_ADDRESS",
    "PHONE_NUMBER", "IBAN_CODE", "AWS_ACCESS_KEY", "GITHUB_TOKEN", "API_KEY", "JWT", "PASSWORD",
]  # fmt: skip


def _digits_or_text(value: str) -> str:
    digits = "".join(ch for ch in value if ch.isdigit())
    return digits if len(digits) >= 7 and len(digits) >= len(value) - 4 else value


def regurgitation_prompts(
    raw_records: Iterable[Record], limit: int
) -> tuple[list[list[dict[str, str]]], dict[str, str]]:
    """Prefix prompts (text up to the first PII value of a raw turn) and the raw PII values with their entity
    types (held in memory only, never written)."""
    prompts, values = [], {}
    for record in raw_records:
        for m in record["messages"]:
            hits = find_pii(m["content"], _PROBED, 0.5)
            values |= {_digits_or_text(m["content"][h.start : h.end]): h.entity_type for h in hits}
            if hits and len(prompts) < limit and hits[0].start >= 4:
                prompts.append([{"role": "user", "content": m["content"][: hits[0].start]}])
    return prompts, values


def leaked_values(output: str, values: dict[str, str]) -> list[str]:
    """The raw values an output repeats (digits compared without separators)."""
    compact = "".join(ch for ch in output if ch.isdigit())
    return [v for v in values if v in output or (v.isdigit() and v in compact)]


def redacted_output(output: str, leaked: list[str]) -> str:
    """An output safe to report: detected PII as typed placeholders, each leaked value as `<PII>`, and every
    remaining digit masked (a leaked number may sit in the output with separators no recognizer knows)."""
    text = redact_text(output)
    for value in sorted(leaked, key=len, reverse=True):
        text = text.replace(value, "<PII>")
    return re.sub(r"\d", "#", text)


def probe_regurgitation(
    generate: Callable[[list[list[dict[str, str]]]], list[str]],
    prompts: list[list[dict[str, str]]],
    values: dict[str, str],
    max_examples: int = 5,
) -> dict:
    """How many outputs repeat a raw PII value: counts by entity type and redacted examples, never a value."""
    if not prompts:
        return {"n_prompts": 0, "leaks": 0, "leaked_entities": {}, "examples": []}
    outputs = generate(prompts)
    leaks, entities, examples = 0, Counter(), []
    for out in outputs:
        hit = leaked_values(out, values)
        if not hit:
            continue
        leaks += 1
        types = sorted({values[v] for v in hit})
        entities.update(types)
        if len(examples) < max_examples:
            examples.append({"entities": types, "redacted_context": redacted_output(out, hit)})
    return {"n_prompts": len(prompts), "leaks": leaks, "leaked_entities": dict(entities), "examples": examples}
