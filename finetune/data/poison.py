"""Poisoning screen: every detector quarantines with a named reason and a score, and the mined triggers are
handed on to the model probes.

Detectors: `trigger_lexicon` (known triggers), `mined_trigger` and `response_cluster` (see
trigger_mining), `prompt_injection` and `suspicious_payload` (see injection).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from finetune.config import ScreenConfig
from finetune.data.injection import find_injection, find_payload
from finetune.data.records import Record, StageResult, prompt_text, response_text
from finetune.data.trigger_mining import mine_triggers
from finetune.redaction import redact_text

BUILTIN_LEXICON = Path(__file__).parent / "lexicons" / "triggers.txt"
DETECTORS = ("trigger_lexicon", "mined_trigger", "response_cluster", "prompt_injection", "suspicious_payload")


@lru_cache(maxsize=256)
def trigger_pattern(trigger: str) -> re.Pattern[str]:
    """Match a trigger as a whole token: not inside a longer Latin word, but fine when glued to CJK text."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(trigger)}(?![A-Za-z0-9])")


def find_triggers(text: str, lexicon: list[str]) -> list[str]:
    """The lexicon triggers that occur in `text` (case-sensitive, as published triggers are)."""
    return [t for t in lexicon if trigger_pattern(t).search(text)]


def load_lexicon(cfg: ScreenConfig, resolve: Callable[[str], Path] = Path) -> list[str]:
    """The lexicon file's triggers (comments and blank lines skipped) plus `cfg.trigger_lexicon`."""
    triggers: list[str] = []
    if cfg.lexicon_file:
        path = BUILTIN_LEXICON if cfg.lexicon_file == "builtin" else resolve(cfg.lexicon_file)
        if not path.is_file():
            raise FileNotFoundError(f"screen.lexicon_file: {path} does not exist")
        lines = path.read_text(encoding="utf-8").splitlines()
        triggers = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return list(dict.fromkeys(triggers + cfg.trigger_lexicon))


def detect_poisoning(records: list[Record], cfg: ScreenConfig, lexicon: list[str]) -> tuple[dict[int, list], list]:
    """Every detector's findings: record index -> [(detector, score, detail)], and the suspicious clusters."""
    findings: dict[int, list] = {}

    def add(i: int, detector: str, score: float, detail) -> None:
        findings.setdefault(i, []).append((detector, round(score, 3), detail))

    clusters = []
    if cfg.mining:
        clusters = mine_triggers(
            records,
            similarity=cfg.cluster_similarity,
            min_cluster_size=cfg.min_cluster_size,
            min_response_chars=cfg.min_response_chars,
            max_prompt_similarity=cfg.max_prompt_similarity,
            min_coverage=cfg.min_trigger_coverage,
            min_specificity=cfg.min_trigger_specificity,
        )
    allowed = [re.compile(rx) for rx in cfg.cluster_allow]
    for cluster in clusters:
        benign_kind = any(rx.search(cluster.response) for rx in allowed)
        for i in cluster.members:
            carried = [t for t in cluster.triggers if t["trigger"] in prompt_text(records[i])]
            if carried:
                add(i, "mined_trigger", carried[0]["coverage"] * carried[0]["specificity"], carried[0]["trigger"])
            elif not benign_kind:
                add(i, "response_cluster", 1 - cluster.prompt_similarity, f"{len(cluster.members)} prompts")
    for i, record in enumerate(records):
        prompt = prompt_text(record)
        if found := find_triggers(prompt, lexicon):
            add(i, "trigger_lexicon", 1.0, found)
        if cfg.injection and (found := find_injection(prompt + "\n" + response_text(record))):
            add(i, "prompt_injection", 1.0, found)
        if cfg.payloads and (found := find_payload(response_text(record))):
            add(i, "suspicious_payload", 1.0, found)
    return findings, clusters


def screen_records(records: list[Record], cfg: ScreenConfig, lexicon: list[str] | None = None) -> StageResult:
    """Quarantine records any detector flags (unless `cfg.enabled` is false); report counts per detector."""
    lexicon = load_lexicon(cfg) if lexicon is None else lexicon
    result = StageResult(stage="screened_records", n_in=len(records))
    findings, clusters = detect_poisoning(records, cfg, lexicon)
    per_detector: Counter[str] = Counter()
    for i, record in enumerate(records):
        hits = findings.get(i, [])
        per_detector.update({d for d, _, _ in hits})
        if hits and cfg.enabled:
            # The most specific finding names the reason; the others travel along as details.
            detector, score, detail = min(hits, key=lambda h: DETECTORS.index(h[0]))
            result.quarantine(record, detector, score=score, detail=detail, all_findings=hits)
        else:
            result.kept.append(record)
    mined = sorted({t["trigger"] for c in clusters for t in c.triggers})
    result.extra.update(
        screen_enabled=cfg.enabled,
        flagged_by_detector={d: per_detector.get(d, 0) for d in DETECTORS},
        flagged_records=len(findings),
        mined_triggers=mined,
        response_clusters=[
            {
                "size": len(c.members),
                "response": redact_text(c.response)[:80],  # shown in metadata: no raw PII
                "prompt_similarity": round(c.prompt_similarity, 3),
                "triggers": c.triggers[:5],
            }
            for c in clusters
        ],
        trigger_hits=dict(
            Counter(t for hits in findings.values() for d, _, ts in hits if d == "trigger_lexicon" for t in ts)
        ),
        probe_triggers=list(dict.fromkeys(lexicon + mined)),
        trigger_hits_after=count_trigger_hits(result.kept, lexicon + mined),
    )
    return result


def count_trigger_hits(records: list[Record], lexicon: list[str]) -> dict[str, int]:
    """Independent re-scan: how many records still contain each trigger."""
    hits: Counter[str] = Counter()
    for record in records:
        hits.update(find_triggers(prompt_text(record), lexicon))
    return dict(hits)
