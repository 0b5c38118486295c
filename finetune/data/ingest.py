"""Read raw instruction files (Alpaca, ShareGPT, OpenAI messages) into conversation records.

Nothing an input folder holds may crash or hang the run, or cost the good records beside it: a row
that cannot be understood is quarantined with its file, line and the reason; a file that cannot be
read at all (permission, symlink loop, FIFO, broken Parquet footer) is one quarantined item naming
it. A damaged `.json` array or CSV loses only its damaged rows. A LLaMA-Factory `dataset_info.json`
(or a folder holding one) is read entry by entry; entries that cannot be trained on here are skipped
with their reason in the report.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import IngestConfig
from finetune.data import raw_json
from finetune.data.dataset_info import DatasetInfo, DatasetSource, read_dataset_info
from finetune.data.raw_files import (
    DATASET_INFO,
    SUPPORTED_SUFFIXES,
    IngestError,
    RawFile,
    discover,
    file_sha256,
)
from finetune.data.raw_rows import file_rows
from finetune.data.records import Stage, StageResult, StageSummary, make_record
from finetune.data.row_formats import RowError, TurnOrderError, row_to_conversation, row_to_messages
from finetune.data.stream import KEPT, Outcome, collect, kept, quarantined
from finetune.data.template_vars import TemplateVariables

__all__ = [
    "SUPPORTED_SUFFIXES",
    "DATASET_INFO",
    "IngestError",
    "RowError",
    "RawReader",
    "IngestSummary",
    "ingest_files",
]
__all__ += ["row_to_messages", "snapshot_raw_files", "snapshot_digest"]

Parsed = raw_json.Parsed


@dataclass
class SourcePlan:
    """Which files to read (each with the dataset_info.json entry describing it) and which entries are skipped."""

    files: list[tuple[RawFile, DatasetSource | None]] = field(default_factory=list)
    infos: list[DatasetInfo] = field(default_factory=list)
    undescribed: list[str] = field(default_factory=list)  # data files beside a dataset_info.json it does not list


def _entry_files(source: DatasetSource) -> list[RawFile]:
    files = discover(source.path)
    if source.root is None:
        return files
    root = source.root.resolve()
    return [
        f if f.problem or f.path.resolve().is_relative_to(root) else RawFile(f.path, f"resolves outside {root}")
        for f in files
    ]


def _holds_dataset_info(path: Path) -> bool:
    try:
        return path.is_dir() and (path / DATASET_INFO).is_file()
    except OSError:  # an unreadable folder: discover() lists it with the reason
        return False


def plan_sources(paths: list[Path], cfg: IngestConfig) -> SourcePlan:
    """Expand the input paths into the files to read.

    Raises:
        IngestError: a path does not exist, or a selected dataset name is in no dataset_info.json.
    """
    plan = SourcePlan()
    for path in map(Path, paths):
        info_file = path / DATASET_INFO if _holds_dataset_info(path) else path
        if info_file.name != DATASET_INFO:
            plan.files += [(f, None) for f in discover(path)]
            continue
        info = read_dataset_info(info_file, cfg.dataset or None, cfg.confine_to_dataset_dir)
        plan.infos.append(info)
        for source in info.sources:
            plan.files += [(f, source) for f in _entry_files(source)]
        if info_file is not path:  # a LLaMA-Factory dataset_dir: say which of its files no entry reads
            named = [s.path for s in info.sources] + [s.path for s in info.skipped if s.path]
            plan.undescribed += [
                str(f.path) for f in discover(path) if not any(f.path == n or n in f.path.parents for n in named)
            ]
    if cfg.dataset:
        known = {name for info in plan.infos for name in info.names}
        if missing := [n for n in cfg.dataset if n not in known]:
            where = [str(i.path) for i in plan.infos] or "no dataset_info.json among the inputs"
            raise IngestError(
                f"ingest.dataset names {missing} that are not entries of {where}; entries: {sorted(known)}"
            )
    return plan


class RawReader:
    """Streams every raw file's rows as ingest outcomes; `files` fills with lineage as files finish."""

    def __init__(self, paths: list[Path], cfg: IngestConfig | None = None):
        cfg = cfg or IngestConfig()
        self.plan = plan_sources(paths, cfg)
        if not self.plan.files:
            skipped = [f"{s.name}: {s.reason}" for info in self.plan.infos for s in info.skipped]
            raise IngestError(
                f"no raw data files found under {[str(p) for p in paths]}"
                + (f"; every dataset_info.json entry was skipped: {skipped}" if skipped else "")
            )
        self.templates = TemplateVariables(cfg.template_variables, cfg.flag_template_variables)
        self.files: list[dict[str, Any]] = []
        self.empty_files: list[str] = []
        self.per_dataset: dict[str, Counter[str]] = {}

    def __iter__(self) -> Iterator[Outcome]:
        for raw, source in self.plan.files:
            stats: dict[str, Any] = {"path": str(raw.path)}
            n_rows = 0
            for outcome in self._file_outcomes(raw, source, stats):
                n_rows += 1
                if source:
                    counter = self.per_dataset.setdefault(source.name, Counter())
                    counter[KEPT if outcome[0] == KEPT else outcome[1]["reason"]] += 1
                yield outcome
            if n_rows == 0:
                self.empty_files.append(str(raw.path))
            self.files.append(_lineage(raw, stats, n_rows, source))

    def _file_outcomes(self, raw: RawFile, source: DatasetSource | None, stats: dict[str, Any]) -> Iterator[Outcome]:
        where = {"file": str(raw.path), "line": 0}
        if raw.problem:
            yield quarantined({"file": str(raw.path)}, "unreadable_file", detail=raw.problem, **where)
            return
        line = 0
        try:
            for parsed in file_rows(raw.path, stats):
                line = parsed.line
                yield self._outcome(raw.path, parsed, source)
        except (IngestError, OSError) as exc:
            # The run goes on with the other files; what could not be read is one quarantined item.
            detail = str(exc) if line == 0 else f"read error after line {line}: {exc}"
            yield quarantined({"file": str(raw.path)}, "unreadable_file", detail=detail, **where)

    def _outcome(self, path: Path, parsed: Parsed, source: DatasetSource | None) -> Outcome:
        where = {"file": str(path), "line": parsed.line}
        if parsed.error is not None:
            return quarantined(parsed.text, "unparseable_row", detail=parsed.error, **where)
        try:
            conversation = row_to_conversation(source.to_native(parsed.value) if source else parsed.value)
        except TurnOrderError as exc:
            return quarantined(parsed.value, exc.rule, detail=str(exc), **where)
        except RowError as exc:
            return quarantined(parsed.value, "invalid_shape", detail=str(exc), **where)
        messages, unfilled = self.templates.fill_messages(conversation.messages)
        if unfilled:
            return quarantined(parsed.value, "unfilled_template_variable", detail=unfilled, **where)
        return kept(make_record(messages, str(path), parsed.line, conversation.tools))

    def summary(self) -> IngestSummary:
        datasets = [row for info in self.plan.infos for row in self._dataset_rows(info)]
        return IngestSummary(self.files, datasets if self.plan.infos else None)

    def extra(self) -> dict[str, Any]:
        """Report keys: the typed `summary()`, and for people the files that gave nothing, the dataset_info.json
        entries skipped and the template variables filled."""
        out = self.summary().to_json()
        if self.empty_files:
            out["empty_files"] = self.empty_files
        if self.plan.infos:
            out["skipped_datasets"] = [{"name": s.name, "reason": s.reason} for i in self.plan.infos for s in i.skipped]
        if self.plan.undescribed:
            out["undescribed_files"] = self.plan.undescribed
        if self.templates.filled:
            out["template_variables_filled"] = dict(self.templates.filled)
        return out

    def _dataset_rows(self, info: DatasetInfo) -> list[dict[str, Any]]:
        rows = []
        for source in info.sources:
            counts = self.per_dataset.get(source.name, Counter())
            reasons = {r: n for r, n in counts.items() if r != KEPT}
            row = {"name": source.name, "dataset_info": str(info.path), "status": "read", "kept": counts[KEPT]}
            row |= {"quarantined": sum(reasons.values()), "quarantined_by_reason": reasons}
            rows.append(row | ({"ignored_keys": source.ignored_keys} if source.ignored_keys else {}))
        rows += [{"name": s.name, "dataset_info": str(info.path), "status": "skipped", "reason": s.reason}
                 for s in info.skipped]  # fmt: skip
        return rows


@dataclass(frozen=True)
class IngestSummary(StageSummary):
    """What the raw_records asset and the release read of an ingest report."""

    files: list[dict[str, Any]]  # lineage of every raw file: path, sha256, rows (and dataset, error)
    # per dataset_info.json entry: read (with its counts) or skipped (with the reason); None: no dataset_info.json
    datasets: list[dict[str, Any]] | None = None


def _lineage(raw: RawFile, stats: dict[str, Any], n_rows: int, source: DatasetSource | None) -> dict[str, Any]:
    entry = stats | {"rows": n_rows}
    try:
        entry["sha256"] = "" if raw.problem else file_sha256(raw.path)
    except IngestError as exc:
        entry["sha256"] = ""
        entry["error"] = str(exc)
    if raw.problem:
        entry["error"] = raw.problem
    return entry | ({"dataset": source.name} if source else {})


def ingest_files(paths: list[Path], cfg: IngestConfig | None = None) -> tuple[StageResult, list[dict[str, Any]]]:
    """Read every raw file into records; bad rows (and unreadable files) are quarantined, never lost.

    Returns:
        The stage result and a list of `{"path", "sha256", "rows"}` for each raw file (for lineage).
    """
    reader = RawReader(paths, cfg)
    result = collect(Stage.RAW, reader)
    result.extra.update(reader.extra())
    return result, reader.files


def snapshot_raw_files(paths: list[Path], cfg: IngestConfig | None = None) -> dict[str, str]:
    """sha256 of every raw data file under the given paths (what a new-data sensor compares); a file that
    cannot be read hashes to "" as in the ingest report, so the sensor's snapshot id is the data version."""
    snapshot = {}
    for raw, _ in plan_sources(paths, cfg or IngestConfig()).files:
        try:
            snapshot[str(raw.path)] = "" if raw.problem else file_sha256(raw.path)
        except IngestError:
            snapshot[str(raw.path)] = ""
    return snapshot


def snapshot_digest(snapshot: dict[str, str]) -> str:
    """A short id of one raw-data snapshot: the sensor's run key and the raw_records data version."""
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:16]
