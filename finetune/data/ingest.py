"""Read raw instruction files (Alpaca, ShareGPT, OpenAI messages) into conversation records.

A row that cannot be understood is quarantined with its file, line and the reason;
a file that cannot be opened at all raises one error naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.data.records import ROLES, StageResult, make_record, sha256_file

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
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
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES))
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


def _iter_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line or row number, parsed row, parse error) for each row of a file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    yield lineno, json.loads(raw.decode("utf-8")), None
                except UnicodeDecodeError:
                    yield lineno, raw.decode("utf-8", errors="replace"), "invalid UTF-8"
                except json.JSONDecodeError as exc:
                    yield (
                        lineno,
                        raw.decode("utf-8", errors="replace"),
                        f"invalid JSON: {exc.msg} at column {exc.colno}",
                    )
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IngestError(f"{path}: cannot parse JSON file: {exc}") from exc
        rows = data if isinstance(data, list) else [data]
        for i, row in enumerate(rows, start=1):
            yield i, row, None
    elif suffix in (".csv", ".parquet"):
        import pandas as pd

        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(path)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise IngestError(f"{path}: cannot read {suffix[1:].upper()} file: {exc}") from exc
        # CSV rows are numbered as file lines (header is line 1) so a user can jump to them.
        offset = 2 if suffix == ".csv" else 1
        for i, row in enumerate(frame.to_dict(orient="records")):
            yield i + offset, row, None
    else:
        raise IngestError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def ingest_files(paths: list[Path]) -> tuple[StageResult, list[dict[str, Any]]]:
    """Read every raw file into records; bad rows are quarantined, never lost.

    Returns:
        The stage result and a list of `{"path", "sha256", "rows"}` for each raw file (for lineage).
    """
    result = StageResult(stage="raw_records")
    files = []
    for path in list_raw_files(paths):
        n_rows = 0
        for line, row, error in _iter_rows(path):
            n_rows += 1
            result.n_in += 1
            where = {"file": str(path), "line": line}
            if error is not None:
                result.quarantine(row, "unparseable_row", detail=error, **where)
                continue
            try:
                messages = row_to_messages(row)
            except RowError as exc:
                result.quarantine(row, "invalid_shape", detail=str(exc), **where)
                continue
            result.kept.append(make_record(messages, str(path), line))
        if n_rows == 0:
            result.extra.setdefault("empty_files", []).append(str(path))
        files.append({"path": str(path), "sha256": sha256_file(path), "rows": n_rows})
    if not files:
        raise IngestError(f"no raw data files found under {[str(p) for p in paths]}")
    result.extra["files"] = files
    return result, files


def snapshot_raw_files(paths: list[Path]) -> dict[str, str]:
    """sha256 of every raw data file under the given paths (what a new-data sensor compares)."""
    return {str(p): sha256_file(p) for p in list_raw_files(paths)}
