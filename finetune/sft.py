"""SFT formatting: deterministic train/val/test split and chat-template tokenization with response-only labels.

Each kept record is rendered and tokenized here, once; the stage writes the encoded examples of every
split beside its records (finetune/train/examples.py), and training reads those instead of rendering again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from finetune.config import SftConfig, TrainConfig
from finetune.data.records import Record
from finetune.model.conversation import RecordFormatError
from finetune.sft_render import render_record
from finetune.train.examples import IGNORE_INDEX, EncodedSplit, encoding_of

SPLITS = ("train", "val", "test")


def split_of(record_id: str, cfg: SftConfig) -> str:
    """Assign a record to a split from a hash of its id and the seed (stable when other records change)."""
    u = int(hashlib.sha256(f"{cfg.seed}:{record_id}".encode()).hexdigest()[:12], 16) / 16**12
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    cutoff_len: int,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, list[int]]:
    """Token ids and labels: labels copy the ids on trained tokens (assistant and function-call turns) and
    are -100 elsewhere (response-only loss); `full_length` is the length before truncation.

    Raises:
        RecordFormatError: the template cannot render the conversation, a trained turn cannot be located, or
            the rendered text does not survive the tokenizer's encode/decode.
    """
    if not isinstance(cutoff_len, int):
        raise ValueError(
            f"cutoff_len must be a number of tokens here, got {cutoff_len!r}; sft.cutoff_len: auto is resolved by "
            "the sft_dataset stage (build_sft_splits), which records the cutoff with the encoded examples"
        )
    rendered = render_record(tokenizer, messages, tools)
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    if tokenizer.decode(enc["input_ids"]) != rendered.text:
        raise RecordFormatError(
            "the rendered chat text does not round-trip through the tokenizer (decode(encode(x)) != x)"
        )
    labels = []
    for tok_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        # Only tokens wholly inside a span: one that runs past the turn's end holds the next turn's markup.
        trained = any(s <= start and end <= e for s, e in rendered.spans)
        labels.append(tok_id if trained else IGNORE_INDEX)
    return {"input_ids": enc["input_ids"][:cutoff_len], "labels": labels[:cutoff_len], "full_length": len(labels)}


def tokenize_record(tokenizer: PreTrainedTokenizerBase, record: Record, cutoff_len: int) -> dict[str, list[int]]:
    """`tokenize_conversation` on a record's turns and the tools it may call."""
    return tokenize_conversation(tokenizer, record["messages"], cutoff_len, record.get("tools"))


def encode_split(tokenizer: PreTrainedTokenizerBase, records: list[Record], cutoff_len: int) -> EncodedSplit:
    """Records encoded for training at `cutoff_len`; refuses one with no trained token (its loss would be NaN).

    For records that did not pass through `build_sft_splits`, which drops such records instead.
    """
    examples = []
    for record in records:
        full = tokenize_record(tokenizer, record, cutoff_len)
        if all(label == IGNORE_INDEX for label in full["labels"]):
            raise ValueError(
                f"record {record['id']} has no response token within sft.cutoff_len={cutoff_len}; "
                "raise the cutoff or drop it (the sft_dataset stage drops such records as no_trainable_tokens)"
            )
        examples.append({"input_ids": full["input_ids"], "labels": full["labels"]})
    return EncodedSplit([r["id"] for r in records], examples, encoding_of(tokenizer, cutoff_len))


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


def length_percentiles(lengths: Sequence[int] | np.ndarray) -> dict[str, int]:
    """p50/p90/p95/p99/max of tokenized lengths (each an observed length, so nothing is interpolated)."""
    if len(lengths) == 0:
        return {}
    qs = {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}
    return {k: int(np.percentile(lengths, q, method="inverted_cdf")) for k, q in qs.items()}


def resolve_cutoff(
    lengths: Sequence[int] | np.ndarray, cfg: SftConfig, memory_limit: int | None = None
) -> tuple[int, dict[str, Any]]:
    """The cutoff in tokens and how it was chosen.

    A number is used as given. `auto` takes the `cutoff_percentile` of the tokenized lengths (an observed
    length), lowered to `memory_limit` (the longest sequence whose activations and logits fit
    `sft.cutoff_memory_gib`, see finetune/train/memory.py) when that is shorter.
    """
    if cfg.cutoff_len != "auto":
        return cfg.cutoff_len, {"cutoff_len_setting": cfg.cutoff_len}
    percentile = int(np.percentile(lengths, cfg.cutoff_percentile * 100, method="inverted_cdf")) if len(lengths) else 0
    cutoff, limited_by = percentile, "percentile"
    if memory_limit is not None and memory_limit < cutoff:
        cutoff, limited_by = memory_limit, "memory"
    cutoff = max(cutoff, 9)  # the config's own lower bound for a numeric cutoff
    info = {
        "cutoff_len_setting": "auto",
        "cutoff_percentile": cfg.cutoff_percentile,
        "cutoff_at_percentile": percentile,
        "cutoff_memory_limit": memory_limit,
        "cutoff_limited_by": limited_by,
    }
    return cutoff, info


def cutoff_memory_limit(
    base_path: str, sft: SftConfig, train: TrainConfig, trust_remote_code: bool = False
) -> int | None:
    """With `sft.cutoff_len: auto`, the longest sequence whose activations and logits for one micro-batch fit
    `sft.cutoff_memory_gib` (estimated from the model config alone); None for a numeric cutoff."""
    if sft.cutoff_len != "auto":
        return None
    from transformers import AutoConfig

    from finetune.train.memory import longest_sequence_within

    config = AutoConfig.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    return longest_sequence_within(
        config, train.batch_size, sft.cutoff_memory_gib, train.precision == "bf16", train.gradient_checkpointing
    )
