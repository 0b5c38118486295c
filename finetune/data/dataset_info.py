"""Read LLaMA-Factory's `dataset_info.json` as-is: which local files, which format, which columns.

LLaMA-Factory (data/README.md) describes each dataset by `file_name`, `formatting`
(`alpaca` | `sharegpt`), `columns` (alpaca: prompt, query, response, system, history;
sharegpt: messages, system) and, for sharegpt, `tags` (role_tag, content_tag, user_tag,
assistant_tag, system_tag, observation_tag, function_tag). Entries that point at the hub
(`hf_hub_url`, `ms_hub_url`, `script_url`) cannot be read offline and are refused by name.
No library reads this file outside LLaMA-Factory itself, so the mapping is written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
    "history": "history",
}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
}
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "script_url", "om_hub_url")


class DatasetInfoError(ValueError):
    """A dataset_info.json entry cannot be used; the message names the file and the entry."""


@dataclass
class DatasetSource:
    """One local file described by a dataset_info.json entry, and how to read its rows."""

    name: str
    path: Path
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def to_native(self, row: Any) -> Any:
        """Rename the entry's columns to this project's native Alpaca/ShareGPT keys (unknown rows pass through)."""
        if not isinstance(row, dict):
            return row
        if self.formatting == "alpaca":
            cols = ALPACA_COLUMNS | self.columns
            native = {key: row[cols[key]] for key in ALPACA_COLUMNS if cols[key] in row}
            return {ALPACA_COLUMNS[k]: v for k, v in native.items()}
        cols = SHAREGPT_COLUMNS | self.columns
        tags = SHAREGPT_TAGS | self.tags
        turns = row.get(cols["messages"])
        if not isinstance(turns, list):
            return {"conversations": turns}
        roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system"}
        converted = [
            {"from": roles.get(t.get(tags["role_tag"]), t.get(tags["role_tag"])), "value": t.get(tags["content_tag"])}
            if isinstance(t, dict)
            else t
            for t in turns
        ]
        system = row.get(cols["system"])
        if isinstance(system, str) and system:
            converted = [{"from": "system", "value": system}, *converted]
        return {"conversations": converted}


def read_dataset_info(path: Path, names: list[str] | None = None) -> list[DatasetSource]:
    """The local sources of a dataset_info.json (every entry, or the named ones), in file order."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetInfoError(f"{path}: cannot read dataset_info.json: {exc}") from exc
    if not isinstance(info, dict):
        raise DatasetInfoError(f"{path}: dataset_info.json must be an object of dataset entries")
    unknown = sorted(set(names or []) - set(info))
    if unknown:
        raise DatasetInfoError(f"{path}: no dataset named {unknown}; entries are {sorted(info)}")
    sources = []
    for name in names or list(info):
        entry = info[name]
        if not isinstance(entry, dict):
            raise DatasetInfoError(f"{path}: entry '{name}' must be an object")
        remote = [k for k in REMOTE_KEYS if k in entry]
        if remote or "file_name" not in entry:
            raise DatasetInfoError(
                f"{path}: entry '{name}' has no local file_name"
                + (f" (it uses {remote[0]}, which needs the network)" if remote else "")
            )
        formatting = entry.get("formatting", "alpaca")
        if formatting not in ("alpaca", "sharegpt"):
            raise DatasetInfoError(f"{path}: entry '{name}' has formatting {formatting!r}; use alpaca or sharegpt")
        file = Path(path).parent / entry["file_name"]
        sources.append(DatasetSource(name, file, formatting, entry.get("columns", {}), entry.get("tags", {})))
    return sources
