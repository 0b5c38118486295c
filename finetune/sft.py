"""SFT formatting: deterministic train/val/test split and chat-template tokenization with response-only labels."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from finetune.config import SftConfig
from finetune.data.records import Record, StageResult, write_jsonl
from finetune.redaction import redact_text

IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")


class TemplateError(ValueError):
    """The chat template cannot be used to locate the response tokens."""


def split_of(record_id: str, cfg: SftConfig) -> str:
    """Assign a record to a split from a hash of its id and the seed (stable when other records change)."""
    u = int(hashlib.sha256(f"{cfg.seed}:{record_id}".encode()).hexdigest()[:12], 16) / 16**12
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return the character spans of every assistant turn.

    Each span runs from the end of the rendered prompt (with the generation prompt) to the end
    of the rendered turn, so it holds the response and its end-of-turn token.
    """
    render = lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix, upto = render(messages[:i], True), render(messages[: i + 1], False)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise TemplateError(
                "the chat template renders a conversation prefix differently from the whole conversation, "
                "so response tokens cannot be located; use a template whose turns are appended in order"
            )
        spans.append((len(prefix), len(upto)))
    return full, spans


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], cutoff_len: int
) -> dict[str, list[int]]:
    """Token ids and labels: labels copy the ids on assistant tokens and are -100 elsewhere (response-only loss)."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok_id, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        trained = any(s <= start < e for s, e in spans)
        labels.append(tok_id if trained else IGNORE_INDEX)
    decoded = tokenizer.decode(enc["input_ids"])
    if decoded != text:
        raise TemplateError("the rendered chat text does not round-trip through the tokenizer (decode(encode(x)) != x)")
    return {"input_ids": enc["input_ids"][:cutoff_len], "labels": labels[:cutoff_len], "full_length": len(labels)}


def mask_preview(tokenizer: PreTrainedTokenizerBase, example: dict[str, list[int]]) -> str:
    """Show which tokens are trained: trained text in [[...]], masked text plain."""
    out, run, trained = [], [], None
    for tok_id, label in zip(example["input_ids"], example["labels"], strict=True):
        is_trained = label != IGNORE_INDEX
        if trained is not None and is_trained != trained:
            piece = tokenizer.decode(run)
            out.append(f"[[{piece}]]" if trained else piece)
            run = []
        run.append(tok_id)
        trained = is_trained
    if run:
        piece = tokenizer.decode(run)
        out.append(f"[[{piece}]]" if trained else piece)
    return "".join(out)


def build_sft_splits(records: list[Record], tokenizer: PreTrainedTokenizerBase, cfg: SftConfig) -> StageResult:
    """Split records and check each tokenizes with at least one trained token; drop those that do not."""
    result = StageResult(stage="sft_dataset", n_in=len(records))
    trained_tokens, truncated, previews = 0, 0, []
    for record in records:
        example = tokenize_conversation(tokenizer, record["messages"], cfg.cutoff_len)
        n_trained = sum(1 for label in example["labels"] if label != IGNORE_INDEX)
        if n_trained == 0:
            result.drop(record, "no_trainable_tokens", cutoff_len=cfg.cutoff_len)
            continue
        result.kept.append({**record, "split": split_of(record["id"], cfg)})
        trained_tokens += n_trained
        truncated += example["full_length"] > cfg.cutoff_len
        if len(previews) < 3:
            previews.append(redact_text(mask_preview(tokenizer, example)))  # shown in metadata: no raw PII
    splits = splits_of(result)
    if not splits["train"]:
        raise ValueError("no records left for the train split; add data or lower sft.val_fraction/test_fraction")
    result.extra.update(
        split_sizes={s: len(v) for s, v in splits.items()},
        trained_tokens=trained_tokens,
        truncated_at_cutoff=truncated,
        mask_preview=previews,
    )
    return result


def splits_of(result: StageResult) -> dict[str, list[Record]]:
    """The kept records grouped by the split each one was assigned."""
    return {name: [r for r in result.kept if r["split"] == name] for name in SPLITS}


def write_sft_dataset(result: StageResult, out_dir: Path) -> dict[str, Any]:
    """Write train/val/test JSONL beside the stage's kept/dropped files; return the report."""
    report = result.write(out_dir)
    for name, rows in splits_of(result).items():
        write_jsonl(out_dir / f"{name}.jsonl", rows)
    return report
