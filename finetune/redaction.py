"""PII out of everything a report writes or shows: prompts, references, generations, probe targets, previews.

Evaluation reports, model cards and check metadata hold free text from held-out records and from
the model itself. With `pii.enabled=false` (accepted on record) that text holds raw PII, and a model
can regurgitate PII whatever the config; so every free-text field is redacted with the detector's
typed placeholders before it is written, independently of the run's `pii` settings (every shipped
entity, the shipped score threshold).
"""

from __future__ import annotations

from typing import Any

from finetune.config import PII_ENTITIES, PiiConfig

# Keys whose string values are free text (the report's examples and probe outputs); other strings
# are paths, ids, trigger tokens and labels the gates look up by value, and stay as they are.
FREE_TEXT_KEYS = frozenset(
    {"prompt", "reference", "tuned", "base", "base+prompt", "target", "output", "prediction", "predictions",
     "response", "completion"}
)  # fmt: skip
THRESHOLD = PiiConfig.model_fields["score_threshold"].default


def redact_text(text: str) -> str:
    """`text` with every PII span the shipped recognizers find replaced by its typed placeholder."""
    from finetune.data.pii import redact

    return redact(text, PII_ENTITIES, THRESHOLD)


def redact_free_text(value: Any, key: str | None = None) -> Any:
    """A copy of a JSON-like report with every free-text string (see FREE_TEXT_KEYS) redacted."""
    if isinstance(value, dict):
        return {k: redact_free_text(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_free_text(v, key) for v in value]
    if isinstance(value, str) and key in FREE_TEXT_KEYS:
        return redact_text(value)
    return value
