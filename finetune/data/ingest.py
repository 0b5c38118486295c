"""Read raw instruction files (Alpaca, ShareGPT, OpenAI messages) into conversation records.

A row that cannot be understood is quarantined with its file, line and the reason;
a file that cannot be opened at all raises one error naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.data.dataset_info import DatasetSource, read_dataset_info
from finetune.data.records import ROLES, StageResult, make_record, sha256_file
from finetune.data.stream import Outcome, collect, kept, quarantined

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DATASET_INFO = "dataset_info.json"  # LLaMA-Factory's dataset description, read as-is
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class IngestError(ValueError):
    """A raw data path cannot be read at all."""


class RowError(ValueError):
    """One row has the wrong shape; the message names the field."""


def list_raw_files(paths: list[Path]) -> list[Path]:
    """Expand files and folders into a sorted list of supported data files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES and p.name != DATASET_INFO)
            )
        elif path.is_file():
            files.append(path)
        else:
            raise IngestError(
                f"data path does not exist: {path} (check --input/--data, or paths.raw_data in the config)"
            )
    return files


def _text(row: dict[str, Any], key: str, required: bool) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):  # NaN from CSV/Parquet
        if required:
            raise RowError(f"missing field '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _from_alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    messages = []
    system = _text(row, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("field 'history' must be a list of [prompt, response] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"field 'history[{i}]' must be a [prompt, response] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    instruction = _text(row, "instruction", required=True)
    extra_input = _text(row, "input", required=False)
    prompt = f"{instruction}\n{extra_input}" if extra_input else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(row, "output", True)}]
    return messages


def _from_turns(turns: Any, field: str, role_key: str, text_key: str, role_map: dict[str, str]) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise RowError(f"field '{field}' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"field '{field}[{i}]' must be an object")
        role = role_map.get(str(turn.get(role_key)))
        if role is None:
            raise RowError(f"field '{field}[{i}].{role_key}' has unknown role {turn.get(role_key)!r}")
        content = turn.get(text_key)
        if not isinstance(content, str):
            raise RowError(f"field '{field}[{i}].{text_key}' must be a string")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise RowError(f"field '{field}' must end with an assistant turn")
    return messages


def row_to_messages(row: Any) -> list[dict[str, str]]:
    """Normalise one Alpaca / ShareGPT / OpenAI-messages row to a list of messages.

    Raises:
        RowError: the row matches no known shape or a field has the wrong type.
    """
    if not isinstance(row, dict):
        raise RowError(f"a record must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        return _from_turns(row["messages"], "messages", "role", "content", {r: r for r in ROLES})
    if "conversations" in row:
        return _from_turns(row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES)
    if "instruction" in row or "output" in row:
        return _from_alpaca(row)
    raise RowError(f"unknown record shape with keys {sorted(row)[:8]}; expected Alpaca, ShareGPT or OpenAI messages")


CHUNK_ROWS = 10_000  # CSV/Parquet are read in chunks so a large file never sits in memory whole


def _iter_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line or row number, parsed row, parse error) for each row of a file.

    Raises:
        IngestError: the file as a whole cannot be parsed (its rows cannot be told apart).
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    yield lineno, json.loads(raw.decode("utf-8-sig")), None  # -sig: tolerate a BOM (Windows exports)
                except UnicodeDecodeError as exc:
                    yield lineno, raw.decode("utf-8", errors="replace"), f"invalid UTF-8 at byte {exc.start}"
                except json.JSONDecodeError as exc:
                    yield (
                        lineno,
                        raw.decode("utf-8", errors="replace"),
                        f"invalid JSON: {exc.msg} at column {exc.colno}",
                    )
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IngestError(f"{path}: cannot parse JSON file: {exc}") from exc
        rows = data if isinstance(data, list) else [data]
        for i, row in enumerate(rows, start=1):
            yield i, row, None
    elif suffix == ".csv":
        import pandas as pd

        try:
            # CSV rows are numbered as file lines (header is line 1) so a user can jump to them;
            # a quoted field spanning lines makes that approximate.
            line = 2
            for chunk in pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                chunksize=CHUNK_ROWS,
                encoding="utf-8-sig",
                encoding_errors="replace",  # bad bytes become U+FFFD, which cleaning drops as mojibake
            ):
                for row in chunk.to_dict(orient="records"):
                    yield line, row, None
                    line += 1
        except pd.errors.EmptyDataError:
            return
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise IngestError(f"{path}: cannot read CSV file: {exc}") from exc
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
            row = 1
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
                for item in batch.to_pylist():
                    yield row, item, None
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            raise IngestError(f"{path}: cannot read Parquet file: {exc}") from exc
    else:
        raise IngestError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def _sources(paths: list[Path]) -> list[tuple[Path, DatasetSource | None]]:
    """Data files to read, each with the dataset_info.json entry that describes it (if any)."""
    out: list[tuple[Path, DatasetSource | None]] = []
    for path in paths:
        if path.name == DATASET_INFO:
            for source in read_dataset_info(path):
                out += [(file, source) for file in list_raw_files([source.path])]
        else:
            out += [(file, None) for file in list_raw_files([path])]
    return out


class RawReader:
    """Streams every raw file's rows as ingest outcomes; `files` fills with lineage as files finish."""

    def __init__(self, paths: list[Path]):
        self.sources = _sources(paths)
        if not self.sources:
            raise IngestError(f"no raw data files found under {[str(p) for p in paths]}")
        self.files: list[dict[str, Any]] = []
        self.empty_files: list[str] = []

    def __iter__(self) -> Iterator[Outcome]:
        for path, source in self.sources:
            n_rows = 0
            try:
                for line, row, error in _iter_rows(path):
                    n_rows += 1
                    yield _row_outcome(path, line, row, error, source)
            except IngestError as exc:
                # The run goes on with the other files; the file is accounted for as one quarantined item.
                n_rows += 1
                yield quarantined({"file": str(path)}, "unreadable_file", detail=str(exc), file=str(path), line=0)
            if n_rows == 0:
                self.empty_files.append(str(path))
            entry = {"path": str(path), "sha256": sha256_file(path), "rows": n_rows}
            self.files.append(entry | ({"dataset": source.name} if source else {}))

    def extra(self) -> dict[str, Any]:
        return {"files": self.files} | ({"empty_files": self.empty_files} if self.empty_files else {})


def _row_outcome(path: Path, line: int, row: Any, error: str | None, source: DatasetSource | None) -> Outcome:
    where = {"file": str(path), "line": line}
    if error is not None:
        return quarantined(row, "unparseable_row", detail=error, **where)
    try:
        messages = row_to_messages(source.to_native(row) if source else row)
    except RowError as exc:
        return quarantined(row, "invalid_shape", detail=str(exc), **where)
    return kept(make_record(messages, str(path), line))


def ingest_files(paths: list[Path]) -> tuple[StageResult, list[dict[str, Any]]]:
    """Read every raw file into records; bad rows (and unreadable files) are quarantined, never lost.

    Returns:
        The stage result and a list of `{"path", "sha256", "rows"}` for each raw file (for lineage).
    """
    reader = RawReader(paths)
    result = collect("raw_records", reader)
    result.extra.update(reader.extra())
    return result, reader.files


def snapshot_raw_files(paths: list[Path]) -> dict[str, str]:
    """sha256 of every raw data file under the given paths (what a new-data sensor compares)."""
    return {str(p): sha256_file(p) for p, _ in _sources(paths)}


def snapshot_digest(snapshot: dict[str, str]) -> str:
    """A short id of one raw-data snapshot: the sensor's run key and the raw_records data version."""
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:16]
