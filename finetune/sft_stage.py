"""The sft_dataset stage: records to train/val/test splits and their encoded examples, in two streaming passes.

The cutoff may depend on every record's length (`sft.cutoff_len: auto` takes a percentile), so the first
pass (`SftFormatter.measure`) tokenizes each record once, at full length, and spools its ids and labels to
a temporary file beside the stage's outputs, keeping only the lengths. The second (`outcomes`) reads the
records again with their spooled tokens, cuts each at the cutoff, assigns its split from a hash of its id
(no global state) and decides it. Each kept example goes to its split's examples file as it passes
(finetune/train/examples.py `SplitWriter`, in shards of bounded size), so what stays in memory grows by a
length and a 16-byte digest per record, not by its tokens.
"""

from __future__ import annotations

import json
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from finetune.config import SftConfig
from finetune.data.records import Record, Stage, StageFiles, StageReport, StageResult, StageSummary
from finetune.data.stream import (
    Outcome,
    PassOrder,
    ProgressFn,
    collect,
    dropped,
    iter_jsonl,
    kept,
    quarantined,
    spool_stage,
)
from finetune.model.chat_template import TemplateInfo, template_info
from finetune.model.conversation import RecordFormatError
from finetune.redaction import redact_text
from finetune.sft import SPLITS, length_percentiles, mask_preview, resolve_cutoff, split_of, tokenize_record
from finetune.train.examples import IGNORE_INDEX, Encoding, SplitWriter, encoding_of

STAGE = Stage.SFT
_UNLIMITED = 1 << 62  # tokenize at full length: the cutoff is chosen from the lengths afterwards


@dataclass(frozen=True)
class SftSummary(StageSummary):
    """What training, evaluation, the asset and the commands read of an sft_dataset report (the report's other
    keys are for people: how the cutoff was chosen, trained tokens)."""

    split_sizes: dict[str, int]  # records per split
    cutoff_len: int  # tokens, as trained: `sft.cutoff_len: auto` resolved
    truncated_at_cutoff: int  # records cut at it
    truncated_share: float  # of the records that encoded
    chat_template: TemplateInfo
    token_lengths: dict[str, int]  # percentiles of the full token lengths
    mask_preview: list[str]  # the first kept examples with their trained tokens marked, PII-redacted

    @classmethod
    def _decoded(cls, values: dict[str, Any]) -> SftSummary:
        return cls(**values | {"chat_template": TemplateInfo(**values["chat_template"])})


class SftFormatter:
    """Both passes of the stage over the same records; see the module docstring."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        cfg: SftConfig,
        memory_limit: int | None = None,
        out_dir: Path | None = None,
    ):
        self.tokenizer, self.cfg, self.memory_limit = tokenizer, cfg, memory_limit
        # The token spool and the examples files go there (not /tmp: it may be RAM); None: the examples are
        # held until `write_examples` names the folder.
        self.out_dir = out_dir
        # Written by hand: two int32 runs per record, read back in order, need no file format.
        self._spool: IO[bytes] = tempfile.TemporaryFile(dir=out_dir)
        self.order = PassOrder(STAGE)
        self.lengths = array("q")  # each record's full token length; -1 when its template failed
        self.failed: dict[int, str] = {}
        self.cutoff, self.cutoff_info, self.token_lengths = 0, {}, {}
        self.splits: dict[str, SplitWriter] = {}
        self.truncated = self.trained_tokens = 0
        self.previews: list[str] = []

    def measure(self, records: Iterable[Record]) -> None:
        """Pass 1: tokenize every record at full length, spool the tokens, choose the cutoff."""
        for i, record in enumerate(records):
            self.order.add(record["id"])
            try:
                full = tokenize_record(self.tokenizer, record, _UNLIMITED)
            except RecordFormatError as err:
                self.failed[i] = str(err)
                self.lengths.append(-1)
                continue
            self.lengths.append(full["full_length"])
            self._spool.write(np.asarray(full["input_ids"], dtype=np.int32).tobytes())
            self._spool.write(np.asarray(full["labels"], dtype=np.int32).tobytes())
        lengths = np.frombuffer(self.lengths, dtype=np.int64) if self.lengths else np.zeros(0, dtype=np.int64)
        measured = lengths[lengths >= 0]
        self.cutoff, self.cutoff_info = resolve_cutoff(measured, self.cfg, self.memory_limit)
        self.token_lengths = length_percentiles(measured)
        self._spool.seek(0)
        self.splits = {name: SplitWriter(self.out_dir, name, self.encoding()) for name in SPLITS}

    def _spooled(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.frombuffer(self._spool.read(4 * n), dtype=np.int32)
        return ids, np.frombuffer(self._spool.read(4 * n), dtype=np.int32)

    def outcomes(self, records: Iterable[Record]) -> Iterator[Outcome]:
        """Pass 2: each record quarantined (`chat_template_failed`), dropped (`no_trainable_tokens` within the
        cutoff) or kept with its split."""
        n = -1
        for n, record in enumerate(records):
            self.order.check(n, record["id"])
            if n in self.failed:
                yield quarantined(record, "chat_template_failed", detail=self.failed[n])
                continue
            ids, labels = self._spooled(self.lengths[n])
            self.truncated += self.lengths[n] > self.cutoff  # of every tokenized example, kept or dropped
            ids, labels = ids[: self.cutoff], labels[: self.cutoff]
            n_trained = int((labels != IGNORE_INDEX).sum())
            if n_trained == 0:
                yield dropped(record, "no_trainable_tokens", cutoff_len=self.cutoff)
                continue
            split = split_of(record["id"], self.cfg)
            self.splits[split].add(record["id"], ids, labels)
            self.trained_tokens += n_trained
            if len(self.previews) < 3:
                example = {"input_ids": ids.tolist(), "labels": labels.tolist()}
                self.previews.append(redact_text(mask_preview(self.tokenizer, example)))  # metadata: no raw PII
            yield kept({**record, "split": split})
        self._spool.close()
        self.order.check_count(n + 1)

    def encoding(self) -> Encoding:
        return encoding_of(self.tokenizer, self.cutoff)

    def report(self) -> dict[str, Any]:
        """The stage report's keys: split sizes, the template, the cutoff and how it was chosen, truncation.

        Raises:
            ValueError: no record is left for the train split.
        """
        if "train" not in self.splits or not self.splits["train"].count:
            first = next(iter(self.failed.values()), "none quarantined")
            raise ValueError(
                "no records left for the train split; add data or lower sft.val_fraction/test_fraction "
                f"({len(self.failed)} records failed the chat template; first: {first})"
            )
        encoded = sum(n >= 0 for n in self.lengths)
        summary = SftSummary(
            {name: s.count for name, s in self.splits.items()},
            self.cutoff,
            self.truncated,
            self.truncated / max(encoded, 1),
            template_info(self.tokenizer),
            self.token_lengths,
            self.previews,
        )
        return summary.to_json() | {"trained_tokens": self.trained_tokens, **self.cutoff_info}

    def write_examples(self, out_dir: Path) -> None:
        """Write each split's last shard of examples (all of them, for a formatter made without a folder)."""
        for split in self.splits.values():
            split.close(out_dir)


def write_split_records(out_dir: Path, records: Iterable[Record]) -> None:
    """train/val/test.jsonl: the kept records, each in the file of its split, written as they pass."""
    handles = {name: (Path(out_dir) / f"{name}.jsonl").open("w", encoding="utf-8") for name in SPLITS}
    try:
        for record in records:
            handles[record["split"]].write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        for handle in handles.values():
            handle.close()


@dataclass
class SftDataset(StageResult):
    """The stage's outcome held in memory, and the formatter that encoded its kept records."""

    formatter: SftFormatter | None = None


def build_sft_splits(
    records: list[Record], tokenizer: PreTrainedTokenizerBase, cfg: SftConfig, memory_limit: int | None = None
) -> SftDataset:
    """The stage over records held in memory (`finetune train --data`, tests); `write_sft_dataset` writes it."""
    formatter = SftFormatter(tokenizer, cfg, memory_limit)
    formatter.measure(records)
    result = collect(STAGE, formatter.outcomes(records))
    dataset = SftDataset(STAGE, result.n_in, result.kept, result.dropped, result.quarantined, formatter=formatter)
    dataset.extra.update(formatter.report())
    return dataset


def splits_of(result: StageResult) -> dict[str, list[Record]]:
    """The kept records grouped by the split each one was assigned."""
    return {name: [r for r in result.kept if r["split"] == name] for name in SPLITS}


def write_sft_dataset(result: SftDataset, out_dir: Path) -> StageReport:
    """Write the stage's files, train/val/test.jsonl and their encoded examples; return the report."""
    report = result.write(out_dir)
    write_split_records(out_dir, result.kept)
    result.formatter.write_examples(out_dir)
    return report


def sft_stage(
    kept_path: Path,
    tokenizer: PreTrainedTokenizerBase,
    cfg: SftConfig,
    memory_limit: int | None,
    out_dir: Path,
    progress: ProgressFn | None = None,
) -> StageReport:
    """The stage over an upstream kept.jsonl, streamed: the same files as `write_sft_dataset`; return the report.

    When no record is left for the train split, the outcome files are written (so the user can see why)
    and the report is not: the stage fails with the reason.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    formatter = SftFormatter(tokenizer, cfg, memory_limit, out_dir)
    formatter.measure(iter_jsonl(kept_path))
    report = spool_stage(STAGE, formatter.outcomes(iter_jsonl(kept_path)), out_dir, progress, formatter.report)
    write_split_records(out_dir, iter_jsonl(StageFiles(out_dir).kept))
    formatter.write_examples(out_dir)
    return report
