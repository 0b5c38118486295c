"""Exact deduplication on normalised text; the first occurrence of each group is kept."""

from __future__ import annotations

import hashlib
import re

from finetune.data.records import Record, StageResult

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def dedup_key(record: Record) -> str:
    """Hash of the record's turns, case-folded with punctuation and whitespace removed."""
    parts = [m["role"] + ":" + _NOT_WORD.sub("", m["content"].casefold()) for m in record["messages"]]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def deduplicate_records(records: list[Record]) -> StageResult:
    """Keep the first record of each exact-duplicate group; drop the rest naming the kept one."""
    result = StageResult(stage="deduplicated_records", n_in=len(records))
    first_seen: dict[str, str] = {}
    for record in records:
        key = dedup_key(record)
        if key in first_seen:
            result.drop(record, "exact_duplicate", duplicate_of=first_seen[key])
        else:
            first_seen[key] = record["id"]
            result.kept.append(record)
    result.extra["duplicate_groups"] = len({d["duplicate_of"] for d in result.dropped})
    return result
