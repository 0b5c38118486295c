"""Encoded SFT examples, from the file the sft_dataset stage writes them to, to padded tensors.

The stage renders each record through the chat template and tokenizes it once (token ids, and labels
that copy the ids on trained turns and are IGNORE_INDEX elsewhere); training only reads the result. The
file records which tokenizer encoded the examples, so training refuses examples made for another model,
and the template they were rendered with, which is saved with the adapter. Here too: packing, the
order of each epoch, and collation into padded batches.
"""

from __future__ import annotations

import hashlib
import json
import random
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # the label of a token the loss skips
FORMAT = "finetune-sft-examples/2"  # /2: a split may be several shards; a /1 file is a whole split
_READABLE = ("finetune-sft-examples/1", FORMAT)

Example = dict[str, list[int]]


SHARD_TOKENS = 1 << 22  # tokens per shard of a split's examples file: what writing a split holds at most


def examples_file(folder: Path, split: str, shard: int = 0) -> Path:
    """Where shard `shard` of split `split`'s encoded examples lives in an sft_dataset folder (the first has the
    name a one-file split has always had, so folders written before read the same)."""
    suffix = "" if shard == 0 else f".{shard:05d}"
    return Path(folder) / f"{split}.examples{suffix}.safetensors"


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """A digest of what turns text into ids (vocabulary, merges, normalizer, added tokens), chat template aside."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        for per_call in ("truncation", "padding"):  # set and reset by every tokenizer call
            state.pop(per_call, None)
    else:  # a slow (Python) tokenizer has no serialised pipeline: its class and vocabulary decide
        state = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items())}
    return hashlib.sha256(json.dumps(state, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class Encoding:
    """What produced a split's examples: the tokenizer, the chat template text and the cutoff."""

    tokenizer_sha256: str
    chat_template: str
    cutoff_len: int


def encoding_of(tokenizer: PreTrainedTokenizerBase, cutoff_len: int) -> Encoding:
    return Encoding(tokenizer_sha256(tokenizer), tokenizer.chat_template or "", cutoff_len)


@dataclass
class EncodedSplit:
    """One split's examples, in record order, with the record each came from and how they were encoded."""

    record_ids: list[str]
    examples: list[Example]
    encoding: Encoding

    def digest(self) -> str:
        """A hash of the trained tokens, their labels and the cutoff: what the data contributes to the weights."""
        h = hashlib.sha256(str(self.encoding.cutoff_len).encode())
        for tensor in _flat(self.examples).values():
            h.update(tensor.numpy().tobytes())
        return h.hexdigest()


def _flat(examples: list[Example]) -> dict[str, torch.Tensor]:
    def joined(key: str) -> torch.Tensor:
        return torch.tensor([t for e in examples for t in e[key]], dtype=torch.int32)

    lengths = torch.tensor([len(e["input_ids"]) for e in examples], dtype=torch.int64)
    return {"input_ids": joined("input_ids"), "labels": joined("labels"), "lengths": lengths}


def write_split(folder: Path, split: str, encoded: EncodedSplit) -> Path:
    """Write a split's examples as safetensors (flat int32 ids and labels, per-example lengths)."""
    return write_flat_split(folder, split, encoded.record_ids, _flat(encoded.examples), encoded.encoding)


def write_flat_split(
    folder: Path,
    split: str,
    record_ids: list[str],
    flat: dict[str, torch.Tensor],
    encoding: Encoding,
    shard: int = 0,
    last: bool = True,
) -> Path:
    """Write examples already flat (`input_ids` and `labels` int32 end to end, `lengths` int64 per example), as
    shard `shard` of the split; `last` says whether another shard follows."""
    path = examples_file(folder, split, shard)
    metadata = {
        "format": FORMAT,
        "tokenizer_sha256": encoding.tokenizer_sha256,
        "chat_template": encoding.chat_template,
        "cutoff_len": str(encoding.cutoff_len),
        "record_ids": json.dumps(record_ids, ensure_ascii=False),
        "last_shard": "yes" if last else "no",
    }
    save_file(flat, str(path), metadata=metadata)
    return path


class SplitWriter:
    """One split's examples, written as they are encoded in shards of about `SHARD_TOKENS` tokens, so that
    encoding a large set holds one shard, not the set (safetensors writes whole tensors: a file cannot be
    appended to). A shard is written when the next example arrives, so each one knows whether it is the last.
    The split's files of an earlier run in the same folder are removed first: a run that fails part way leaves
    a split that cannot be read (its last shard is missing), never one that mixes two runs."""

    def __init__(self, folder: Path | None, split: str, encoding: Encoding):
        # folder None: held in memory, and written whole by `close` (the in-memory stage, one shard).
        self.folder, self.split, self.encoding = folder, split, encoding
        self.count = self.shard = 0
        self.closed = False
        if folder is not None:
            _remove_split(folder, split)
        self._start()

    def _start(self) -> None:
        self.record_ids: list[str] = []
        self.input_ids, self.labels, self.lengths = array("i"), array("i"), array("q")

    def add(self, record_id: str, ids: np.ndarray, labels: np.ndarray) -> None:
        if self.closed:
            raise ValueError(f"the {self.split} split's examples were written already")
        # SHARD_TOKENS is read here, not bound at import, so a test can lower it.
        if self.folder is not None and self.record_ids and len(self.input_ids) + len(ids) > SHARD_TOKENS:
            self._write(self.folder, last=False)
            self.shard += 1
            self._start()
        self.record_ids.append(record_id)
        self.input_ids.frombytes(np.asarray(ids, dtype=np.int32).tobytes())
        self.labels.frombytes(np.asarray(labels, dtype=np.int32).tobytes())
        self.lengths.append(len(ids))
        self.count += 1

    def close(self, folder: Path | None = None) -> None:
        """Write the last shard. A writer made without a folder writes all its examples into `folder`, as one
        shard, and may be asked again for another folder."""
        if self.folder is None:
            if folder is None:
                raise ValueError(f"the {self.split} split's examples have no folder to be written to")
            _remove_split(folder, self.split)
            self._write(folder, last=True)
            return
        if self.closed:
            raise ValueError(f"the {self.split} split's examples were written already")
        self._write(self.folder, last=True)
        self.closed = True

    def _write(self, folder: Path, last: bool) -> None:
        def tensor(values: array, dtype: torch.dtype) -> torch.Tensor:
            return torch.frombuffer(values, dtype=dtype) if len(values) else torch.zeros(0, dtype=dtype)

        flat = {
            "input_ids": tensor(self.input_ids, torch.int32),
            "labels": tensor(self.labels, torch.int32),
            "lengths": tensor(self.lengths, torch.int64),
        }
        write_flat_split(folder, self.split, self.record_ids, flat, self.encoding, self.shard, last)


def _remove_split(folder: Path, split: str) -> None:
    for path in Path(folder).glob(f"{split}.examples*.safetensors"):
        path.unlink()


def read_split(folder: Path, split: str, tokenizer: PreTrainedTokenizerBase) -> EncodedSplit:
    """The examples the sft_dataset stage encoded for `split`, checked to come from `tokenizer`.

    Raises:
        FileNotFoundError: the folder holds no encoded examples (records alone are not trained on).
        ValueError: the examples were encoded by another tokenizer, or the file is not in this format.
    """
    path = examples_file(folder, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: training reads the examples the sft_dataset stage encodes, not {split}.jsonl "
            "records; materialize sft_dataset again (or run `finetune train --data` on the records)"
        )
    record_ids, examples, shard, first = [], [], 0, None
    while True:
        ids, shard_examples, encoding, last = _read_shard(examples_file(folder, split, shard))
        if shard == 0 and encoding.tokenizer_sha256 != tokenizer_sha256(tokenizer):
            raise ValueError(
                f"{path} was encoded by another tokenizer (sha256 {encoding.tokenizer_sha256[:12]}) than the base "
                f"model's at {tokenizer.name_or_path} ({tokenizer_sha256(tokenizer)[:12]}); materialize "
                "sft_dataset again with this base model"
            )
        if first is not None and encoding != first:
            raise ValueError(
                f"{examples_file(folder, split, shard)} was encoded otherwise than {path} (another tokenizer, "
                "template or cutoff); materialize sft_dataset again"
            )
        if first is None:
            first = encoding
        record_ids += ids
        examples += shard_examples
        shard += 1
        if last:
            return EncodedSplit(record_ids, examples, encoding)


def _read_shard(path: Path) -> tuple[list[str], list[Example], Encoding, bool]:
    """One shard's record ids, examples and encoding, and whether it is its split's last."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the shard before it says another follows (the sft_dataset run that wrote them "
            "stopped part way?); materialize sft_dataset again"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in ("input_ids", "labels", "lengths")}
    if meta.get("format") not in _READABLE:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; write it with write_split")
    ends = tensors["lengths"].cumsum(0).tolist()
    starts = [0, *ends][:-1]
    ids, labels = tensors["input_ids"].tolist(), tensors["labels"].tolist()
    examples = [{"input_ids": ids[s:e], "labels": labels[s:e]} for s, e in zip(starts, ends, strict=True)]
    encoding = Encoding(meta["tokenizer_sha256"], meta["chat_template"], int(meta["cutoff_len"]))
    # A /1 file (written before shards were) has no `last_shard`: it is the whole split.
    return json.loads(meta["record_ids"]), examples, encoding, meta.get("last_shard", "yes") == "yes"


def pack_examples(examples: list[Example], max_len: int) -> list[Example]:
    """Greedily concatenate tokenized examples, in order, into sequences of at most `max_len` tokens.

    Labels travel with their tokens, so exactly the same tokens are trained as without packing. Each
    example's positions restart at 0 (`position_ids`); given them and no attention mask, transformers
    masks attention to each example's own tokens (its packed-sequence detection, for SDPA, eager and
    flash attention), so an example never sees the one before it and its loss is the unpacked loss.
    """
    packed: list[Example] = []
    for example in examples:
        ids, labels = example["input_ids"], example["labels"]
        if packed and len(packed[-1]["input_ids"]) + len(ids) <= max_len:
            packed[-1]["input_ids"] += ids
            packed[-1]["labels"] += labels
            packed[-1]["position_ids"] += list(range(len(ids)))
        else:
            packed.append({"input_ids": list(ids), "labels": list(labels), "position_ids": list(range(len(ids)))})
    return packed


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch; the order depends only on (seed, epoch), so a resumed run sees the same."""
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def collate(examples: list[Example], pad_id: int, device: str = "cpu") -> dict[str, Any]:
    """Right-pad a batch onto `device`; padded positions get label -100 and attention 0.

    Packed sequences (with `position_ids`) get no attention mask but their positions: the padding is one
    more segment of its own (positions from 0), which no real token attends to under the causal mask.
    """
    width = max(len(e["input_ids"]) for e in examples)
    packed = all("position_ids" in e for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    positions = torch.arange(width).repeat(len(examples), 1) if packed else None
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
        if positions is not None:
            positions[i, :n] = torch.tensor(e["position_ids"])
            positions[i, n:] = torch.arange(width - n)
    batch = {"input_ids": ids.to(device), "labels": labels.to(device)}
    if positions is not None:
        # transformers looks for packed sequences only without a KV cache (which the config may turn on).
        return batch | {"position_ids": positions.to(device), "use_cache": False}
    return batch | {"attention_mask": mask.to(device)}


def real_tokens(examples: list[Example]) -> int:
    """Tokens that are not padding."""
    return sum(len(e["input_ids"]) for e in examples)


def trained_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens whose next token is trained (the positions the loss averages over)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
