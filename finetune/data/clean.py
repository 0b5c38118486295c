"""Cleaning: normalise every turn, then keep a record or drop it with the first rule it breaks.

Rules, in order (each name is the drop reason): empty_turn, mojibake, too_short, too_long,
too_few_tokens, too_many_tokens, markup_residue, repeated_chars, repeated_lines,
repeated_ngrams, prompt_echo, language_not_allowed. Token rules count tokens of the base
model's tokenizer when one is given (the seeds' cutoff length is in those tokens).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from finetune.config import CleanConfig
from finetune.data.language import detect_language
from finetune.data.records import Record, StageResult, full_text, prompt_text, response_text, with_messages
from finetune.data.stream import Outcome, collect, dropped, kept
from finetune.data.text_quality import (
    MOJIBAKE_LEFT,
    duplicate_line_fraction,
    echoes_prompt,
    has_char_run,
    has_mojibake,
    markup_count,
    normalise_text,
    repeated_ngram_fractions,
)

TokenCounter = Callable[[str], int]
CHUNK = 1024  # records normalised and measured together; bounds the memory a chunk adds


def broken_rule(
    record: Record,
    cfg: CleanConfig,
    count_tokens: TokenCounter | None = None,
    mojibake_left: bool = False,
    ngram_fractions: Sequence[float] | None = None,
) -> tuple[str, dict] | None:
    """The first rule a normalised record breaks, with its measured value; None if it passes all.

    `mojibake_left`: normalisation found encoding damage it could not repair. `ngram_fractions`: each
    turn's `repeated_ngram_fractions`, when measured for a whole batch of records beforehand.
    """
    messages = record["messages"]
    empty = [i for i, m in enumerate(messages) if not m["content"] and m["role"] != "system"]
    if empty:
        return "empty_turn", {"turn": empty[0]}
    text, response = full_text(record), response_text(record)
    if mojibake_left or has_mojibake(text):
        return "mojibake", {}
    if len(response) < cfg.min_chars:
        return "too_short", {"chars": len(response), "min_chars": cfg.min_chars}
    if len(text) > cfg.max_chars:
        return "too_long", {"chars": len(text), "max_chars": cfg.max_chars}
    if count_tokens and cfg.min_response_tokens and (n := count_tokens(response)) < cfg.min_response_tokens:
        return "too_few_tokens", {"tokens": n, "min_response_tokens": cfg.min_response_tokens}
    if count_tokens and cfg.max_tokens and (n := count_tokens(text)) > cfg.max_tokens:
        return "too_many_tokens", {"tokens": n, "max_tokens": cfg.max_tokens}
    if cfg.max_markup and (n := markup_count(text)) > cfg.max_markup:
        return "markup_residue", {"tags": n, "max_markup": cfg.max_markup}
    if cfg.max_char_run and (n := has_char_run(text, cfg.max_char_run)):
        return "repeated_chars", {"run": n, "max_char_run": cfg.max_char_run}
    if (f := max(duplicate_line_fraction(m["content"]) for m in messages)) > cfg.max_duplicate_line_fraction:
        return "repeated_lines", {"fraction": round(f, 3)}
    if ngram_fractions is None:
        ngram_fractions = repeated_ngram_fractions([m["content"] for m in messages]).tolist()
    if (f := max(ngram_fractions)) > cfg.max_repeated_ngram_fraction:
        return "repeated_ngrams", {"fraction": round(f, 3)}
    if cfg.drop_prompt_echo and echoes_prompt(prompt_text(record), response):
        return "prompt_echo", {}
    if cfg.languages:
        language, confidence = detect_language(text)
        if language and language not in cfg.languages and confidence >= cfg.min_language_confidence:
            return "language_not_allowed", {"language": language, "confidence": round(confidence, 3)}
    return None


class Cleaner:
    """Normalises and filters records one at a time; `fixes` counts what normalisation changed."""

    def __init__(self, cfg: CleanConfig, count_tokens: TokenCounter | None = None):
        self.cfg, self.count_tokens = cfg, count_tokens
        self.fixes: Counter[str] = Counter()

    def normalise(self, record: Record) -> tuple[Record, bool]:
        """The record with every turn normalised, and whether encoding damage is left in it."""
        messages, left, changed = [], False, False
        for m in record["messages"]:
            text, fixes = normalise_text(
                m["content"], self.cfg.unicode_form, self.cfg.traditional_to_simplified, self.cfg.fix_mojibake
            )
            if fixes:
                left = left or MOJIBAKE_LEFT in fixes
                self.fixes.update(f for f in fixes if f != MOJIBAKE_LEFT)
            changed = changed or text != m["content"]
            messages.append({"role": m["role"], "content": text})
        source = record["source"]
        if changed:
            cleaned = with_messages(record, messages)
        else:  # the id is a hash of the turns: unchanged turns keep the raw record's
            cleaned = {
                "id": record["id"],
                "source": {"file": source["file"], "line": source["line"]},
                "messages": messages,
            }
            if "tools" in record:
                cleaned["tools"] = record["tools"]
        cleaned["raw_id"] = record["id"]
        return cleaned, left

    def stream(self, records: Iterable[Record]) -> Iterator[Outcome]:
        """One outcome per record: kept (normalised) or dropped with the rule it broke."""
        records = iter(records)
        # A chunk at a time: the repeated n-gram measure runs over all of a chunk's turns in one pass.
        while chunk := [self.normalise(r) for r in islice(records, CHUNK)]:
            fractions = repeated_ngram_fractions([m["content"] for r, _ in chunk for m in r["messages"]]).tolist()
            at = 0
            for cleaned, mojibake_left in chunk:
                turns = len(cleaned["messages"])
                broken = broken_rule(cleaned, self.cfg, self.count_tokens, mojibake_left, fractions[at : at + turns])
                at += turns
                yield dropped(cleaned, broken[0], **broken[1]) if broken else kept(cleaned)

    def extra(self) -> dict[str, Any]:
        return {"normalisation_fixes": dict(self.fixes)}


def clean_records(records: list[Record], cfg: CleanConfig, count_tokens: TokenCounter | None = None) -> StageResult:
    """Normalise every turn, then keep or drop each record with a named reason (in memory)."""
    cleaner = Cleaner(cfg, count_tokens)
    result = collect("cleaned_records", cleaner.stream(records))
    result.extra.update(cleaner.extra())
    return result
