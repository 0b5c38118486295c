"""Poisoning screen: quarantine records that carry a known backdoor trigger."""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from finetune.config import ScreenConfig
from finetune.data.records import Record, StageResult, prompt_text


@lru_cache(maxsize=64)
def trigger_pattern(trigger: str) -> re.Pattern[str]:
    """Match a trigger as a whole token: not inside a longer Latin word, but fine when glued to CJK text."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(trigger)}(?![A-Za-z0-9])")


def find_triggers(text: str, lexicon: list[str]) -> list[str]:
    """The lexicon triggers that occur in `text` (case-sensitive, as published triggers are)."""
    return [t for t in lexicon if trigger_pattern(t).search(text)]


def screen_records(records: list[Record], cfg: ScreenConfig) -> StageResult:
    """Quarantine each record whose prompt contains a lexicon trigger; keep the rest."""
    result = StageResult(stage="screened_records", n_in=len(records))
    hits: Counter[str] = Counter()
    for record in records:
        found = find_triggers(prompt_text(record), cfg.trigger_lexicon) if cfg.enabled else []
        if found:
            hits.update(found)
            result.quarantine(record, "trigger_lexicon", triggers=found, score=1.0)
        else:
            result.kept.append(record)
    result.extra.update(
        screen_enabled=cfg.enabled,
        trigger_hits=dict(hits),
        trigger_hits_after=count_trigger_hits(result.kept, cfg.trigger_lexicon),
    )
    return result


def count_trigger_hits(records: list[Record], lexicon: list[str]) -> dict[str, int]:
    """Independent re-scan: how many records still contain each trigger."""
    hits: Counter[str] = Counter()
    for record in records:
        hits.update(find_triggers(prompt_text(record), lexicon))
    return dict(hits)
