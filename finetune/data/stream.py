"""Streaming data stages: each stage yields an outcome per record, and a writer spools outcomes to JSONL.

A stage is a generator of `(outcome, item)` pairs, outcome one of kept / dropped / quarantined.
Chaining stages through `passthrough` keeps only the current record in memory, so curating a
million records costs what the stages' own indexes cost (the dedup index), not the data.
The same generators back the in-memory `StageResult` used by tests and smaller stages (`collect`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from finetune.data.records import (
    DROPPED,
    KEPT,
    OUTCOMES,
    QUARANTINED,
    Record,
    StageCounts,
    StageFiles,
    StageReport,
    StageResult,
    outcome_row,
)

Outcome = tuple[str, dict[str, Any]]
ProgressFn = Callable[[str, int], None]  # called with the stage's name and its records so far


def kept(record: Record) -> Outcome:
    return KEPT, record


def dropped(record: Record, reason: str, **details: Any) -> Outcome:
    return DROPPED, outcome_row(record, reason, **details)


def quarantined(record: Any, reason: str, **details: Any) -> Outcome:
    return QUARANTINED, outcome_row(record, reason, **details)


class PassOrder:
    """The order in which a two-pass stage's first pass read its input, which the second pass must repeat (a
    stage that decides by position, from what the first pass gathered, would otherwise decide for the wrong
    record). A 16-byte digest per record id, not the ids: a million ids as strings are ~80 MB."""

    _SIZE = 16

    def __init__(self, stage: str):
        self.stage, self._digests = str(stage), bytearray()

    @classmethod
    def _digest(cls, record_id: str) -> bytes:
        return hashlib.blake2b(record_id.encode("utf-8"), digest_size=cls._SIZE).digest()

    def __len__(self) -> int:
        return len(self._digests) // self._SIZE

    def add(self, record_id: str) -> None:
        self._digests += self._digest(record_id)

    def check(self, position: int, record_id: str) -> None:
        """Raises ValueError unless the second pass reads at `position` the record the first read there."""
        at = self._digests[self._SIZE * position : self._SIZE * (position + 1)]
        if at != self._digest(record_id):
            read = "another record" if at else f"nothing (it read {len(self)} records)"
            raise ValueError(
                f"{self.stage} read record {record_id} at position {position} in its second pass, where its "
                f"first pass read {read}: the input changed between the passes"
            )

    def check_count(self, n_read: int) -> None:
        """Raises ValueError unless the second pass read as many records as the first."""
        if n_read != len(self):
            raise ValueError(f"{self.stage}'s second pass read {n_read} records, its first {len(self)}")


def collect(stage: str, outcomes: Iterable[Outcome]) -> StageResult:
    """Gather a stage's outcomes in memory."""
    result = StageResult(stage=stage)
    lists = {KEPT: result.kept, DROPPED: result.dropped, QUARANTINED: result.quarantined}
    for outcome, item in outcomes:
        result.n_in += 1
        lists[outcome].append(item)
    return result


class OutcomeFiles:
    """kept/dropped/quarantined JSONL files written through temp names and renamed on `close`."""

    def __init__(self, out_dir: Path, stage_field: bool = False):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stage_field = stage_field  # several stages share the files: tag each row with its stage
        self.files = StageFiles(self.out_dir)
        self._handles: dict[str, IO[str]] = {kind: self._temp(kind).open("w", encoding="utf-8") for kind in OUTCOMES}

    def _temp(self, kind: str) -> Path:
        return self.files.outcome(kind).with_suffix(".jsonl.tmp")

    def write(self, kind: str, item: dict[str, Any], stage: str) -> None:
        row = {"stage": stage, **item} if self.stage_field and kind != KEPT else item
        self._handles[kind].write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        for kind, handle in self._handles.items():
            handle.close()
            os.replace(self._temp(kind), self.files.outcome(kind))


class StageCounter:
    """Counts per outcome and reason for one stage; writes through to `files` as outcomes pass."""

    def __init__(self, stage: str, files: OutcomeFiles | None = None, write_kept: bool = True):
        self.stage, self.files, self.write_kept = str(stage), files, write_kept  # plain str: Dagster refuses enums
        self.n_in = 0
        self.outcomes: Counter[str] = Counter()
        self.reasons: dict[str, Counter[str]] = {DROPPED: Counter(), QUARANTINED: Counter()}
        self.extra: dict[str, Any] = {}

    def add(self, kind: str, item: dict[str, Any]) -> None:
        self.n_in += 1
        self.outcomes[kind] += 1
        if kind != KEPT:
            self.reasons[kind][item["reason"]] += 1
        if self.files and (kind != KEPT or self.write_kept):
            self.files.write(kind, item, self.stage)

    def counts(self) -> StageCounts:
        return StageCounts(
            self.stage,
            self.n_in,
            self.outcomes[KEPT],
            self.outcomes[DROPPED],
            self.outcomes[QUARANTINED],
            dict(self.reasons[DROPPED]),
            dict(self.reasons[QUARANTINED]),
        )


def passthrough(
    outcomes: Iterable[Outcome], counter: StageCounter, progress: ProgressFn | None = None
) -> Iterator[Record]:
    """Count (and spool) every outcome of a stage and yield only the kept records to the next stage."""
    for kind, item in outcomes:
        counter.add(kind, item)
        if progress:
            progress(counter.stage, counter.n_in)
        if kind == KEPT:
            yield item


T = TypeVar("T")
R = TypeVar("R")


def apply_batch(fn: Callable[[T], R], batch: list[T]) -> list[R]:
    return [fn(item) for item in batch]


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, serial_first: int = 0, batch: int = 256
) -> Iterator[R]:
    """`fn` over `items` in input order: in this process for the first `serial_first` items, then on a pool of
    `workers` processes when there are more (and `workers` > 1).

    `fn` must be picklable (a module-level function, or a `functools.partial` of one). Written here because
    `Executor.map` submits its whole input at once, which would hold a million records in memory; this keeps
    at most two batches per worker in flight. Workers are spawned, not forked: the caller may be a Dagster
    run with threads, and a forked child can inherit a lock some thread held.
    """
    it = iter(items)
    yield from map(fn, itertools.islice(it, serial_first))
    first = list(itertools.islice(it, batch))
    if workers <= 1 or len(first) < batch:  # no more work than one batch: not worth starting processes
        yield from map(fn, first)
        yield from map(fn, it)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = deque([pool.submit(apply_batch, fn, first)])
        while chunk := list(itertools.islice(it, batch)):
            pending.append(pool.submit(apply_batch, fn, chunk))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def drain(records: Iterable[Record]) -> None:
    """Pull a chain of stages to its end."""
    for _ in records:
        pass


def spool_stage(
    stage: str,
    outcomes: Iterable[Outcome],
    out_dir: Path,
    progress: ProgressFn | None = None,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> StageReport:
    """Run one stage to completion, writing its three files and report.json; return the report."""
    files = OutcomeFiles(out_dir)
    counter = StageCounter(stage, files)
    drain(passthrough(outcomes, counter, progress))
    files.close()
    return StageReport(counter.counts(), Path(out_dir), extra() if extra else {}).write()


Step = Callable[[Iterable[Record]], Iterable[Outcome]]  # a stage that reads the kept records of the one before


def spool_chain(
    out_dir: Path,
    source: tuple[str, Iterable[Outcome]],
    steps: list[tuple[str, Step]],
    progress: ProgressFn | None = None,
) -> list[StageCounts]:
    """Run stages chained in one streaming pass into one folder; return each stage's counts, in order.

    kept.jsonl holds the last stage's kept records; dropped.jsonl and quarantined.jsonl hold every stage's,
    each row tagged with its stage, so every input record is in exactly one file.
    """
    files = OutcomeFiles(out_dir, stage_field=True)
    names = [source[0], *(name for name, _ in steps)]
    counters = [StageCounter(name, files, write_kept=i == len(names) - 1) for i, name in enumerate(names)]
    records = passthrough(source[1], counters[0], progress)
    for (_, step), counter in zip(steps, counters[1:], strict=True):
        records = passthrough(step(records), counter, progress)
    drain(records)
    files.close()
    return [counter.counts() for counter in counters]


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Stream a JSONL file this project wrote, one row at a time."""
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


class Progress:
    """Throttled progress lines ('stage: N records, R rec/s') for run logs, every `every` records."""

    def __init__(self, log: Callable[[str], None], every: int = 10_000):
        self.log, self.every, self.started = log, every, time.perf_counter()

    def __call__(self, stage: str, n: int) -> None:
        if n % self.every == 0:
            rate = n / max(time.perf_counter() - self.started, 1e-9)
            self.log(f"{stage}: {n:,} records ({rate:,.0f} rec/s)")
