"""Cleaning: normalise every turn, then keep a record or drop it with the first rule it breaks.

Rules, in order (each name is the drop reason): empty_turn, mojibake, too_short, too_long,
too_few_tokens, too_many_tokens, markup_residue, repeated_chars, repeated_lines,
repeated_ngrams, prompt_echo, language_not_allowed. Token rules count tokens of the base
model's tokenizer when one is given (the seeds' cutoff length is in those tokens); the stage
report names that tokenizer.

The markup and repetition rules judge the prose of the assistant turns, outside code blocks: a
prompt may quote a page or repeat its input, and a function_call turn is JSON, not prose. Markup
is residue only when the prompt neither asks for it nor supplies it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any

from finetune.config import CleanConfig
from finetune.data.engine import LOCAL, Engine
from finetune.data.language import detect_language
from finetune.data.records import (
    ASSISTANT,
    FUNCTION_CALL,
    OBSERVATION,
    Record,
    Stage,
    StageResult,
    StageSummary,
    full_text,
    prompt_text,
    response_text,
    with_messages,
)
from finetune.data.stream import Outcome, collect, dropped, kept
from finetune.data.text_quality import (
    MOJIBAKE_LEFT,
    duplicate_line_fraction,
    echoes_prompt,
    has_char_run,
    has_mojibake,
    markup_count,
    markup_requested,
    normalise_text,
    repeated_ngram_fractions,
    without_code,
)

CHUNK = 1024  # records normalised and measured together; bounds the memory a chunk adds
PROSE_ROLES = (ASSISTANT,)  # trained turns written as text, which the prose rules judge
TOOL_ROLES = (FUNCTION_CALL, OBSERVATION)  # JSON or tool output: not prose, not a language sample


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens of one tokenizer; `name` and `vocab_size` say which, in the stage report."""

    count: Callable[[str], int]
    name: str
    vocab_size: int

    def __call__(self, text: str) -> int:
        return self.count(text)

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": self.name, "vocab_size": self.vocab_size}


def response_prose(record: Record) -> list[str]:
    """Each assistant turn's text outside code blocks (a block becomes a line break)."""
    return [without_code(m["content"], "\n") for m in record["messages"] if m["role"] in PROSE_ROLES]


def _language_samples(record: Record) -> list[str]:
    """The last assistant turn, then the first user turn (the response first: it decides most records)."""
    messages = record["messages"]
    last = next((m["content"] for m in reversed(messages) if m["role"] in PROSE_ROLES), "")
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    return [t for t in (last, first) if t]


def broken_rule(
    record: Record,
    cfg: CleanConfig,
    count_tokens: TokenCounter | None = None,
    mojibake_left: bool = False,
    ngram_fractions: Sequence[float] | None = None,
) -> tuple[str, dict] | None:
    """The first rule a normalised record breaks, with its measured value; None if it passes all.

    `mojibake_left`: normalisation found encoding damage it could not repair. `ngram_fractions`: each
    assistant turn's `repeated_ngram_fractions` of its `response_prose`, when measured for a whole
    batch of records beforehand.
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
    return _broken_prose_rule(record, cfg, ngram_fractions)


def _broken_prose_rule(record: Record, cfg: CleanConfig, ngram_fractions: Sequence[float] | None) -> tuple | None:
    """The markup, repetition, echo and language rules, which judge what the record says, not its size."""
    prose, prompt = response_prose(record), prompt_text(record)
    if not prose:  # only function calls: nothing written to judge
        return None
    if cfg.max_markup and (n := max(map(markup_count, prose))) > cfg.max_markup and not markup_requested(prompt):
        return "markup_residue", {"tags": n, "max_markup": cfg.max_markup}
    if cfg.max_char_run and (n := max(has_char_run(t, cfg.max_char_run) for t in prose)):
        return "repeated_chars", {"run": n, "max_char_run": cfg.max_char_run}
    if (f := max(map(duplicate_line_fraction, prose))) > cfg.max_duplicate_line_fraction:
        return "repeated_lines", {"fraction": round(f, 3)}
    if ngram_fractions is None:
        ngram_fractions = repeated_ngram_fractions(prose).tolist()
    if (f := max(ngram_fractions)) > cfg.max_repeated_ngram_fraction:
        return "repeated_ngrams", {"fraction": round(f, 3)}
    response = response_text(record)
    if cfg.drop_prompt_echo and echoes_prompt(prompt, response):
        return "prompt_echo", {}
    if cfg.languages:
        return _language_not_allowed(record, cfg)
    return None


def _language_not_allowed(record: Record, cfg: CleanConfig) -> tuple[str, dict] | None:
    """Neither the response nor the first prompt is in an allowed language (with enough confidence).

    Judged turn by turn: a translation task asks in Chinese or English and answers in French, or
    quotes German and answers in English; either side in an allowed language keeps it, and a side too short
    to identify leaves the decision to the other.
    """
    found = None
    for text in _language_samples(record):
        language, confidence = detect_language(text)
        if not language:  # too short to tell: the other turn decides
            continue
        if language in cfg.languages or confidence < cfg.min_language_confidence:
            return None
        found = found or {"language": language, "confidence": round(confidence, 3)}
    return ("language_not_allowed", found) if found else None


def normalise_record(record: Record, cfg: CleanConfig) -> tuple[Record, bool, list[str]]:
    """The record with every turn normalised, whether encoding damage is left in it, and the fixes applied."""
    messages, left, changed, applied = [], False, False, []
    for m in record["messages"]:
        text, fixes = normalise_text(m["content"], cfg.unicode_form, cfg.traditional_to_simplified, cfg.fix_mojibake)
        if fixes:
            left = left or MOJIBAKE_LEFT in fixes
            applied += [f for f in fixes if f != MOJIBAKE_LEFT]
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
    return cleaned, left, applied


def clean_chunk(
    chunk: list[Record], cfg: CleanConfig, count_tokens: TokenCounter | None = None
) -> tuple[list[Outcome], Counter[str]]:
    """One outcome per record of a chunk (kept normalised, or dropped with the rule it broke), and the
    normalisation fixes it took. A function of the chunk alone, so an `Engine` may run it anywhere."""
    fixes: Counter[str] = Counter()
    normalised = []
    for record in chunk:
        cleaned, left, applied = normalise_record(record, cfg)
        fixes.update(applied)
        normalised.append((cleaned, left))
    # The repeated n-gram measure runs over all of a chunk's turns in one pass.
    prose = [response_prose(r) for r, _ in normalised]
    fractions = repeated_ngram_fractions([t for turns in prose for t in turns]).tolist()
    outcomes, at = [], 0
    for (cleaned, mojibake_left), turns in zip(normalised, prose, strict=True):
        own = fractions[at : at + len(turns)]
        broken = broken_rule(cleaned, cfg, count_tokens, mojibake_left, own)
        at += len(turns)
        outcomes.append(dropped(cleaned, broken[0], **broken[1]) if broken else kept(cleaned))
    return outcomes, fixes


class Cleaner:
    """Normalises and filters records a chunk at a time on an `Engine`; `fixes` counts what normalisation changed."""

    def __init__(self, cfg: CleanConfig, count_tokens: TokenCounter | None = None, engine: Engine = LOCAL):
        self.cfg, self.count_tokens, self.engine = cfg, count_tokens, engine
        self.fixes: Counter[str] = Counter()

    def stream(self, records: Iterable[Record]) -> Iterator[Outcome]:
        """One outcome per record: kept (normalised) or dropped with the rule it broke."""
        records = iter(records)
        chunks = iter(lambda: list(islice(records, CHUNK)), [])
        work = partial(clean_chunk, cfg=self.cfg, count_tokens=self.count_tokens)
        for outcomes, fixes in self.engine.map(work, chunks, batch=1):
            self.fixes.update(fixes)
            yield from outcomes

    def summary(self) -> CleanSummary:
        counter = self.count_tokens
        tokens = None if counter is None else getattr(counter, "describe", lambda: {"tokenizer": "unnamed"})()
        return CleanSummary(dict(self.fixes), tokens)

    def extra(self) -> dict[str, Any]:
        """The stage report's keys: the typed `summary()`."""
        return self.summary().to_json()


@dataclass(frozen=True)
class CleanSummary(StageSummary):
    """What the cleaned_records asset and the commands read of a cleaning report."""

    normalisation_fixes: dict[str, int]  # records changed, per normalisation (mojibake repaired, ...)
    token_rules: dict[str, Any] | None  # the tokenizer the token-length rules counted with; None: rules off


def clean_records(records: list[Record], cfg: CleanConfig, count_tokens: TokenCounter | None = None) -> StageResult:
    """Normalise every turn, then keep or drop each record with a named reason (in memory)."""
    cleaner = Cleaner(cfg, count_tokens)
    result = collect(Stage.CLEANED, cleaner.stream(records))
    result.extra.update(cleaner.extra())
    return result
