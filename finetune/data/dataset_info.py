"""Read LLaMA-Factory's `dataset_info.json` as it ships: which local files, which format, which columns.

LLaMA-Factory (data/README.md) describes each dataset by `file_name`, `formatting` (`alpaca` |
`sharegpt` | `openai`), `columns` (alpaca: prompt, query, response, system, history, tools; sharegpt:
messages, system, tools) and, for sharegpt, `tags` (role_tag, content_tag, user_tag, assistant_tag,
system_tag, observation_tag, function_tag). An upstream file lists hub datasets, preference, KTO,
multimodal and pre-training sets beside the SFT demos: each entry this pipeline cannot train on is
skipped with its reason (listed in the ingest report), never refused as a whole. Entries may be picked
by name (`ingest.dataset`, LLaMA-Factory's `dataset: [a, b]`). A `file_name` must stay inside the
dataset folder unless `ingest.confine_to_dataset_dir` is off. No library reads this file outside
LLaMA-Factory itself, so the mapping is written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.data.raw_files import SUPPORTED_SUFFIXES, open_regular, os_reason

ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
    "history": "history",
    "tools": "tools",
}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
    "observation_tag": "observation",
    "function_tag": "function_call",
}
TAG_ROLES = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
    "observation_tag": "observation",
    "function_tag": "function_call",
}
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
NOT_SFT_COLUMNS = {
    "chosen": "preference pairs (chosen/rejected) are for DPO or reward models, not SFT",
    "rejected": "preference pairs (chosen/rejected) are for DPO or reward models, not SFT",
    "kto_tag": "KTO feedback labels: training them as SFT would also learn the answers marked undesirable",
    "images": "multimodal (images): this pipeline trains text-only models",
    "videos": "multimodal (videos): this pipeline trains text-only models",
    "audios": "multimodal (audios): this pipeline trains text-only models",
}
IGNORED_KEYS = ("num_samples", "split", "subset", "folder")  # hub options, or sampling not done here


class DatasetInfoError(ValueError):
    """A dataset_info.json cannot be used at all; the message names the file."""


@dataclass
class DatasetSource:
    """One local file (or folder) described by a dataset_info.json entry, and how to read its rows."""

    name: str
    path: Path
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    root: Path | None = None  # the dataset folder its files must stay inside (None: not confined)
    ignored_keys: list[str] = field(default_factory=list)

    def to_native(self, row: Any) -> Any:
        """Rename the entry's columns and role tags to this project's native Alpaca/ShareGPT keys."""
        if not isinstance(row, dict):
            return row
        if self.formatting == "alpaca":
            cols = ALPACA_COLUMNS | self.columns
            return {native: row[cols[key]] for key, native in ALPACA_COLUMNS.items() if cols[key] in row}
        cols = SHAREGPT_COLUMNS | self.columns
        native = {key: row[cols[key]] for key in ("system", "tools") if cols[key] in row}
        turns = row.get(cols["messages"])
        if not isinstance(turns, list):
            return native | {"conversations": turns}
        tags = SHAREGPT_TAGS | self.tags
        roles = {tags[tag]: role for tag, role in TAG_ROLES.items()}
        return native | {"conversations": [self._turn(t, tags, roles) for t in turns]}

    @staticmethod
    def _turn(turn: Any, tags: dict[str, str], roles: dict[str, str]) -> Any:
        if not isinstance(turn, dict):
            return turn
        role = turn.get(tags["role_tag"])
        out = {"from": roles.get(role, role) if isinstance(role, str) else role, "value": turn.get(tags["content_tag"])}
        return out | {k: turn[k] for k in ("tool_calls", "function_call") if k in turn}  # OpenAI-style calls


@dataclass
class SkippedDataset:
    """An entry that is not read, and why."""

    name: str
    reason: str
    path: Path | None = None  # the file the entry names, when it names one


@dataclass
class DatasetInfo:
    """What one dataset_info.json gives: the entries read, the entries skipped, every entry's name."""

    path: Path
    sources: list[DatasetSource]
    skipped: list[SkippedDataset]
    names: list[str]


def read_dataset_info(path: Path, names: list[str] | None = None, confine: bool = True) -> DatasetInfo:
    """The local SFT sources of a dataset_info.json (every entry, or those in `names`), in file order.

    Raises:
        DatasetInfoError: the file cannot be read or is not an object of entries.
    """
    try:
        with open_regular(Path(path)) as fh:
            info = json.loads(fh.read().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # UnreadableFile is a ValueError
        raise DatasetInfoError(f"{path}: cannot read dataset_info.json: {exc}") from None
    if not isinstance(info, dict):
        raise DatasetInfoError(f"{path}: dataset_info.json must be an object of dataset entries")
    folder = Path(path).parent
    sources, skipped = [], []
    for name in [n for n in info if not names or n in names]:
        source = _source(name, info[name], folder, confine)
        (skipped if isinstance(source, SkippedDataset) else sources).append(source)
    return DatasetInfo(Path(path), sources, skipped, list(info))


def _source(name: str, entry: Any, folder: Path, confine: bool) -> DatasetSource | SkippedDataset:
    named = folder / entry["file_name"] if isinstance(entry, dict) and isinstance(entry.get("file_name"), str) else None
    reason = _unusable(entry) or _unreadable_path(entry, folder, confine)
    if reason:
        return SkippedDataset(name, reason, named)
    formatting = "alpaca" if entry.get("formatting", "alpaca") == "alpaca" else "sharegpt"
    ignored = [k for k in IGNORED_KEYS if entry.get(k) is not None and not (k == "split" and entry[k] == "train")]
    columns, tags = entry.get("columns") or {}, entry.get("tags") or {}
    return DatasetSource(
        name, folder / entry["file_name"], formatting, columns, tags, folder if confine else None, ignored
    )


def _unreadable_path(entry: dict[str, Any], folder: Path, confine: bool) -> str | None:
    path = folder / entry["file_name"]
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        return f"cannot resolve file_name {entry['file_name']!r}: {exc}"
    if confine and not inside:
        return (
            f"file_name {entry['file_name']!r} resolves outside the dataset folder {folder} "
            "(set ingest.confine_to_dataset_dir: false to read files outside it)"
        )
    try:
        if not path.exists():
            return f"file not found: {path}"
        if path.is_file() and not path.name.lower().endswith(SUPPORTED_SUFFIXES):
            return f"file type {path.suffix!r} is not read; use one of {', '.join(SUPPORTED_SUFFIXES)}"
    except OSError as exc:  # e.g. a folder on the way that the user cannot enter
        return f"cannot reach file_name {entry['file_name']!r}: {os_reason(exc)}"
    return None


def _unusable(entry: Any) -> str | None:
    """Why an entry cannot be trained on here (None: it can)."""
    if not isinstance(entry, dict):
        return f"entry must be an object, got {type(entry).__name__}"
    remote = [k for k in REMOTE_KEYS if k in entry]
    if remote:
        return f"needs the network ({remote[0]}: {entry[remote[0]]}); only local file_name entries are read offline"
    if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
        return "no file_name"
    if entry.get("formatting", "alpaca") not in ("alpaca", "sharegpt", "openai"):
        return f"formatting {entry['formatting']!r} is not one of alpaca, sharegpt, openai"
    if entry.get("ranking"):
        return "preference data (ranking: true) is for DPO or reward models, not SFT"
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict) or not isinstance(entry.get("tags") or {}, dict):
        return "columns and tags must be objects"
    for column, why in NOT_SFT_COLUMNS.items():
        if columns.get(column):
            return why
    if entry.get("formatting", "alpaca") == "alpaca" and list(columns) == ["prompt"]:  # LF's pre-training form
        return f"pre-training text (columns map only a prompt, {columns['prompt']!r}, and no response)"
    return None
