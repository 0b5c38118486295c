"""From SFT records to padded tensors: tokenizing with response-only labels, packing, epoch order, collation."""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedTokenizerBase

from finetune.data.records import Record
from finetune.sft import IGNORE_INDEX, tokenize_record
from finetune.train.guards import TrainingError

Example = dict[str, list[int]]


def encode_records(tokenizer: PreTrainedTokenizerBase, records: list[Record], cutoff_len: int) -> list[Example]:
    """Tokenize each record's conversation and tools; refuses a record with no trained token (its loss would be NaN)."""
    examples = [tokenize_record(tokenizer, r, cutoff_len) for r in records]
    for record, example in zip(records, examples, strict=True):
        if all(label == IGNORE_INDEX for label in example["labels"]):
            raise TrainingError(
                f"record {record['id']} has no response token within sft.cutoff_len={cutoff_len}; "
                "raise the cutoff or drop it (the sft_dataset stage drops such records as no_trainable_tokens)"
            )
    return examples


def pack_examples(examples: list[Example], max_len: int) -> list[Example]:
    """Greedily concatenate tokenized examples, in order, into sequences of at most `max_len` tokens.

    Labels travel with their tokens, so exactly the same tokens are trained as without packing.
    """
    packed: list[Example] = []
    for example in examples:
        ids, labels = example["input_ids"], example["labels"]
        if packed and len(packed[-1]["input_ids"]) + len(ids) <= max_len:
            packed[-1]["input_ids"] += ids
            packed[-1]["labels"] += labels
        else:
            packed.append({"input_ids": list(ids), "labels": list(labels)})
    return packed


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch; the order depends only on (seed, epoch), so a resumed run sees the same."""
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def collate(examples: list[Example], pad_id: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad a batch onto `device`; padded positions get label -100 and attention 0."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def trained_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens whose next token is trained (the positions the loss averages over)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
