"""The internal record schema (a conversation) and the per-stage accounting every data stage returns."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
# Tool calling: a `function_call` turn is the assistant calling a tool, its content the JSON text
# `{"name": ..., "arguments": {...}}`; an `observation` turn is what the tool returned.
FUNCTION_CALL, OBSERVATION = "function_call", "observation"
ROLES = (SYSTEM, USER, ASSISTANT, FUNCTION_CALL, OBSERVATION)
TRAINED_ROLES = (ASSISTANT, FUNCTION_CALL)  # the turns the model learns to produce

# A record is a plain dict so it round-trips through JSONL unchanged:
#   {"id": <content hash>, "source": {"file": str, "line": int}, "messages": [{"role", "content"}, ...],
#    "tools": [<function schema: {"name", "description", "parameters"}>, ...]}   ("tools" only when present)
Record = dict[str, Any]


def record_id(messages: list[dict[str, str]], tools: list[dict[str, Any]] | None = None) -> str:
    """Stable id of a conversation: sha256 of its canonical JSON, so the same content gets the same id.

    The tools a conversation may call are part of what is trained, so they are part of the id (a record
    without tools keeps the id it had before tools were supported).
    """
    turns: list[Any] = [[m["role"], m["content"]] for m in messages]
    if tools:
        turns.append(["tools", json.dumps(tools, ensure_ascii=False, sort_keys=True)])
    blob = json.dumps(turns, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def make_record(
    messages: list[dict[str, str]], file: str, line: int, tools: list[dict[str, Any]] | None = None
) -> Record:
    """Build a record from normalised messages (and the tools it may call) and its source position."""
    record = {"id": record_id(messages, tools), "source": {"file": file, "line": line}, "messages": messages}
    if tools:
        record["tools"] = tools
    return record


def with_messages(record: Record, messages: list[dict[str, str]]) -> Record:
    """A stage's rewrite of a record's turns: new id, same source and tools (a stage never loses them)."""
    return make_record(messages, record["source"]["file"], record["source"]["line"], record.get("tools"))


def prompt_text(record: Record) -> str:
    """All text the model is not trained to produce (system, user, tool results), joined."""
    return "\n".join(m["content"] for m in record["messages"] if m["role"] not in TRAINED_ROLES)


def response_text(record: Record) -> str:
    """The last trained turn: the final assistant answer, or the tool call a conversation ends with."""
    for m in reversed(record["messages"]):
        if m["role"] in TRAINED_ROLES:
            return m["content"]
    return ""


def full_text(record: Record) -> str:
    """Every turn's text, joined."""
    return "\n".join(m["content"] for m in record["messages"])


class Stage(StrEnum):
    """The data stages in pipeline order. Each name is its Dagster asset's, its folder's under the artifacts
    and its report's `stage`, so the checks, the release and the audit find a stage by this name alone."""

    RAW = "raw_records"
    CLEANED = "cleaned_records"
    DEDUPLICATED = "deduplicated_records"
    DEIDENTIFIED = "deidentified_records"
    SCREENED = "screened_records"
    SFT = "sft_dataset"


KEPT, DROPPED, QUARANTINED = "kept", "dropped", "quarantined"
OUTCOMES = (KEPT, DROPPED, QUARANTINED)


@dataclass(frozen=True)
class StageFiles:
    """A data stage's folder: one JSONL file per outcome and report.json, the same names for every stage,
    whether its asset, its CLI command or the audit reads them."""

    dir: Path

    def outcome(self, kind: str) -> Path:
        return self.dir / f"{kind}.jsonl"

    @property
    def kept(self) -> Path:
        return self.outcome(KEPT)

    @property
    def report(self) -> Path:
        return self.dir / "report.json"


@dataclass(frozen=True)
class StageCounts:
    """What a stage did with every record it received, per outcome and reason: the numbers the accounting gate
    checks (in = kept + dropped + quarantined)."""

    stage: str
    n_in: int
    kept: int
    dropped: int
    quarantined: int
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", str(self.stage))  # a Stage given: JSON and Dagster hold plain strings

    def of(self, outcome: str) -> int:
        """The count of one outcome (kept, dropped or quarantined)."""
        return {KEPT: self.kept, DROPPED: self.dropped, QUARANTINED: self.quarantined}[outcome]

    def describe(self) -> str:
        """One line for logs, the CLI and the audit: outcome counts with their reasons."""
        return (
            f"{self.stage}: in {self.n_in}, kept {self.kept}, dropped {self.dropped} {self.dropped_by_reason}, "
            f"quarantined {self.quarantined} {self.quarantined_by_reason}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "in": self.n_in,
            "kept": self.kept,
            "dropped": self.dropped,
            "quarantined": self.quarantined,
            "dropped_by_reason": dict(self.dropped_by_reason),
            "quarantined_by_reason": dict(self.quarantined_by_reason),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageCounts:
        return cls(
            data["stage"],
            data["in"],
            data["kept"],
            data["dropped"],
            data["quarantined"],
            data.get("dropped_by_reason", {}),
            data.get("quarantined_by_reason", {}),
        )


_COUNT_KEYS = frozenset(StageCounts("", 0, 0, 0, 0).to_json())
_REPORT_KEYS = _COUNT_KEYS | {"dir", "run_id", "upstream_kept"}


@dataclass(frozen=True)
class StageReport:
    """A data stage's report, the value of its Dagster asset and its report.json: the counts, the folder of its
    files, and what the stage measured besides (`extra`: stage-specific, JSON-able, e.g. the screen's mined
    triggers). `run_id` and `upstream_kept` are set by the asset, for the accounting check and the lineage."""

    counts: StageCounts
    dir: Path | None  # None: a stage run in memory, nothing written
    extra: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    upstream_kept: int | None = None

    @property
    def stage(self) -> str:
        return self.counts.stage

    @property
    def files(self) -> StageFiles:
        if self.dir is None:
            raise ValueError(f"stage {self.stage} ran in memory: it wrote no files")
        return StageFiles(Path(self.dir))

    def to_json(self) -> dict[str, Any]:
        """The flat JSON object report.json and the asset value hold (the counts' keys, extra, dir, run)."""
        run = {k: v for k, v in (("run_id", self.run_id), ("upstream_kept", self.upstream_kept)) if v is not None}
        return {**self.counts.to_json(), **self.extra, "dir": None if self.dir is None else str(self.dir), **run}

    def write(self) -> StageReport:
        """Write report.json into the stage's folder, atomically; return the report."""
        write_json(self.files.report, self.to_json())
        return self

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageReport:
        extra = {k: v for k, v in data.items() if k not in _REPORT_KEYS}
        folder = data.get("dir")
        return cls(
            StageCounts.from_json(data),
            None if folder is None else Path(folder),
            extra,
            data.get("run_id"),
            data.get("upstream_kept"),
        )


class StageSummary:
    """Base of a stage's typed summary: the report keys that code (assets, commands, checks, the release) reads,
    one dataclass per stage, so nothing downstream reads a report by string keys. Its fields are report.json
    keys, so a report written before reads back; a report's other keys are for people (the UI's tables)."""

    @classmethod
    def of(cls, report: StageReport) -> Self:
        """The summary a stage's report holds.

        Raises:
            ValueError: the report lacks a field that has no default (a report of another stage).
        """
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]  # subclasses are dataclasses
            if f.name in report.extra:
                values[f.name] = report.extra[f.name]
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"the {report.stage} report has no {f.name!r}: it is not a {cls.__name__}")
        return cls._decoded(values)

    @classmethod
    def _decoded(cls, values: dict[str, Any]) -> Self:
        """The summary from its JSON values; a field that is itself typed is rebuilt here."""
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


def outcome_row(record: Any, reason: str, **details: Any) -> dict[str, Any]:
    """A dropped.jsonl / quarantined.jsonl row: the reason, what was measured, and the record itself."""
    return {"reason": reason, **details, "record": record}


@dataclass
class StageResult:
    """What a data stage did with every record it received: in = kept + dropped + quarantined."""

    stage: str
    n_in: int = 0
    kept: list[Record] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stage = str(self.stage)  # a Stage given: reports and Dagster metadata hold plain strings

    def drop(self, record: Record, reason: str, **details: Any) -> None:
        self.dropped.append(outcome_row(record, reason, **details))

    def quarantine(self, record: Any, reason: str, **details: Any) -> None:
        self.quarantined.append(outcome_row(record, reason, **details))

    def counts(self) -> StageCounts:
        return StageCounts(
            self.stage,
            self.n_in,
            len(self.kept),
            len(self.dropped),
            len(self.quarantined),
            dict(Counter(d["reason"] for d in self.dropped)),
            dict(Counter(q["reason"] for q in self.quarantined)),
        )

    def report(self, out_dir: Path | None = None) -> StageReport:
        return StageReport(self.counts(), out_dir, dict(self.extra))

    def write(self, out_dir: Path) -> StageReport:
        """Write kept/dropped/quarantined JSONL and report.json atomically; return the report."""
        out_dir.mkdir(parents=True, exist_ok=True)
        files = StageFiles(out_dir)
        for kind, rows in zip(OUTCOMES, (self.kept, self.dropped, self.quarantined), strict=True):
            write_jsonl(files.outcome(kind), rows)
        return self.report(out_dir).write()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as UTF-8 JSONL through a temp file and an atomic rename, so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Write pretty JSON atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file this project wrote."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
