"""Cleaning: normalise whitespace and Unicode, drop empty, too short and too long records with a reason."""

from __future__ import annotations

import re
import unicodedata

from finetune.config import CleanConfig
from finetune.data.records import Record, StageResult, full_text, make_record, response_text

_SPACES = re.compile(r"[ \t\u3000\xa0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """NFC-normalise, collapse runs of spaces/tabs, trim each line and squeeze blank lines."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def clean_records(records: list[Record], cfg: CleanConfig) -> StageResult:
    """Normalise every turn, then keep or drop each record with a named reason."""
    result = StageResult(stage="cleaned_records", n_in=len(records))
    for record in records:
        messages = [{"role": m["role"], "content": normalise_text(m["content"])} for m in record["messages"]]
        cleaned = make_record(messages, record["source"]["file"], record["source"]["line"])
        cleaned["raw_id"] = record["id"]
        empty = [i for i, m in enumerate(messages) if not m["content"] and m["role"] != "system"]
        if empty:
            result.drop(cleaned, "empty_turn", turn=empty[0])
        elif len(response_text(cleaned)) < cfg.min_chars:
            result.drop(cleaned, "too_short", chars=len(response_text(cleaned)), min_chars=cfg.min_chars)
        elif len(full_text(cleaned)) > cfg.max_chars:
            result.drop(cleaned, "too_long", chars=len(full_text(cleaned)), max_chars=cfg.max_chars)
        else:
            result.kept.append(cleaned)
    return result
