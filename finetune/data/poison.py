"""Poisoning screen: every detector quarantines with a named reason, a score and an explanation, and every
trigger the scan knows or mined is handed on to the model probes.

Detectors: `trigger_lexicon` (published triggers, see trigger_lexicon), `mined_trigger` and
`response_cluster` (see trigger_mining), `prompt_injection` and `suspicious_payload` (see injection).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from finetune.config import ScreenConfig
from finetune.data.injection import find_injection, find_payload
from finetune.data.record_copies import copy_roots
from finetune.data.records import Record, StageResult, response_text
from finetune.data.response_clusters import VERDICTS, ResponseCluster
from finetune.data.trigger_features import PROMPT_ROLES, FeatureTable, feature_parts, feature_text, record_features
from finetune.data.trigger_lexicon import LexiconEntry, LexiconMatcher, find_triggers, load_lexicon_entries
from finetune.data.trigger_mining import Mining, mine_triggers
from finetune.redaction import redact_text

__all__ = ["DETECTORS", "count_trigger_hits", "detect_poisoning", "find_triggers", "load_lexicon", "screen_records"]
DETECTORS = ("trigger_lexicon", "mined_trigger", "response_cluster", "prompt_injection", "suspicious_payload")
# A trigger the screen quarantines on, as the gate's re-scan reads it: a string, or strings that must all occur.
ScreenTrigger = str | list[str]


def screen_prompt(record: Record) -> str:
    """The text a trigger can hide in: the record's user and system turns."""
    return "\n".join(m["content"] for m in record["messages"] if m["role"] in PROMPT_ROLES)


def load_lexicon(cfg: ScreenConfig, resolve: Callable[[str], Path] = Path) -> list[LexiconEntry]:
    """The configured lexicon ('builtin' = the shipped published triggers) plus `cfg.trigger_lexicon`."""
    return load_lexicon_entries(cfg.lexicon_file, cfg.trigger_lexicon, resolve)


def _entry(trigger: ScreenTrigger) -> LexiconEntry:
    if isinstance(trigger, str):
        return LexiconEntry(trigger)
    return LexiconEntry(" + ".join(trigger), all_of=tuple(trigger))


def count_trigger_hits(records: list[Record], triggers: Sequence[ScreenTrigger | LexiconEntry]) -> dict[str, int]:
    """Independent re-scan: how many records still carry each trigger (a list = all of its parts)."""
    matcher = LexiconMatcher([t if isinstance(t, LexiconEntry) else _entry(t) for t in triggers])
    hits: Counter[str] = Counter()
    for record in records:
        hits.update(e.trigger for e in matcher.find(screen_prompt(record)))
    return dict(hits)


@dataclass
class Finding:
    detector: str
    score: float
    detail: object
    explanation: dict = field(default_factory=dict)


def _mined_entry(key: str) -> LexiconEntry:
    parts = feature_parts(key)
    return LexiconEntry(feature_text(key), attack="mined", all_of=tuple(parts) if len(parts) > 1 else ())


def _cluster_info(cluster: ResponseCluster) -> dict:
    return {"cluster": cluster.id, "cluster_size": len(cluster.members), "response": redact_text(cluster.response)[:80]}


def _mined_findings(prompts: list[str], mining: Mining, add) -> None:
    clusters = {c.id: c for c in mining.clusters}
    matcher = LexiconMatcher([_mined_entry(t.key) for t in mining.mined])
    carriers: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        for entry in matcher.find(prompt):
            carriers.setdefault(entry.trigger, []).append(i)
    for test in mining.mined:
        entry = _mined_entry(test.key)
        cluster = clusters.get(test.cluster) if test.cluster is not None else None
        explanation = {"detector": "mined_trigger", "features": [entry.trigger], **test.summary()}
        if cluster:
            explanation |= _cluster_info(cluster) | {
                "cover": [feature_text(k) for k in cluster.cover],
                "partial_cover": [feature_text(k) for k in cluster.partial],
            }
        else:  # a reworded target: no near-identical cluster, the alike carriers are the group
            explanation |= {"cluster": None, "cluster_size": test.on_target, "response": ""}
        for i in carriers.get(entry.trigger, []):
            add(i, Finding("mined_trigger", test.effect, entry.trigger, explanation))


def _cluster_findings(mining: Mining, add) -> None:
    for c in mining.clusters:
        if not c.quarantined:
            continue
        explanation = {
            "detector": "response_cluster",
            "verdict": c.verdict,
            "why": VERDICTS[c.verdict],
            "features": [feature_text(k) for k in c.cover],
            "coverage": round(c.coverage, 3),
            "prompt_similarity": round(c.prompt_similarity, 3),
            "typical_answer_p": c.typical_p,
            **_cluster_info(c),
        }
        for i in c.members:
            add(i, Finding("response_cluster", round(1 - c.prompt_similarity, 3), c.verdict, explanation))


@dataclass
class Detection:
    """Every detector's findings (record index -> findings), what mining found (None when it is off), and how
    many records carry each lexicon entry (any role)."""

    findings: dict[int, list[Finding]]
    mining: Mining | None
    lexicon_present: Counter[str]


def _mine(
    records: list[Record], prompts: list[str], cfg: ScreenConfig, allowed: Callable[[str], bool], published: list[str]
) -> Mining:
    roots = copy_roots(prompts, [response_text(r) for r in records], cfg.max_copy_insertions)
    return mine_triggers(FeatureTable([record_features(r) for r in records], roots), cfg, allowed, published)


def detect_poisoning(records: list[Record], cfg: ScreenConfig, lexicon: Sequence[LexiconEntry | str]) -> Detection:
    """Run every detector over the records."""
    findings: dict[int, list[Finding]] = {}

    def add(i: int, finding: Finding) -> None:
        findings.setdefault(i, []).append(finding)

    entries = [e if isinstance(e, LexiconEntry) else LexiconEntry(e) for e in lexicon]
    matcher = LexiconMatcher(entries)
    present: Counter[str] = Counter()
    prompts = [screen_prompt(r) for r in records]
    mining = None
    if cfg.mining and records:
        allow = [re.compile(rx) for rx in cfg.cluster_allow]
        probe_only = [e.trigger for e in entries if e.role == "probe" and not e.all_of]
        mining = _mine(records, prompts, cfg, lambda text: any(rx.search(text) for rx in allow), probe_only)
        _mined_findings(prompts, mining, add)
        _cluster_findings(mining, add)
    for i, (record, prompt) in enumerate(zip(records, prompts, strict=True)):
        found = matcher.find(prompt)
        present.update(e.trigger for e in found)
        if found := [e for e in found if e.role == "quarantine"]:
            explanation = {
                "detector": "trigger_lexicon",
                "features": [e.trigger for e in found],
                "attacks": sorted({e.attack for e in found}),
                "sources": sorted({e.source for e in found if e.source}),
            }
            add(i, Finding("trigger_lexicon", 1.0, [e.trigger for e in found], explanation))
        text = prompt + "\n" + response_text(record)
        if cfg.injection and (hit := find_injection(text)):
            add(i, Finding("prompt_injection", 1.0, hit, {"detector": "prompt_injection", "patterns": hit}))
        if cfg.payloads and (hit := find_payload(response_text(record))):
            add(i, Finding("suspicious_payload", 1.0, hit, {"detector": "suspicious_payload", "patterns": hit}))
    return Detection(findings, mining, present)


def screen_records(
    records: list[Record], cfg: ScreenConfig, lexicon: Sequence[LexiconEntry | str] | None = None
) -> StageResult:
    """Quarantine records any detector flags (unless `cfg.enabled` is false); report counts, mined triggers,
    clusters and the probe triggers."""
    entries = (
        load_lexicon(cfg)
        if lexicon is None
        else [e if isinstance(e, LexiconEntry) else LexiconEntry(e) for e in lexicon]
    )
    result = StageResult(stage="screened_records", n_in=len(records))
    detection = detect_poisoning(records, cfg, entries)
    findings = detection.findings
    per_detector: Counter[str] = Counter()
    for i, record in enumerate(records):
        hits = findings.get(i, [])
        per_detector.update({f.detector for f in hits})
        if hits and cfg.enabled:
            # The most specific finding names the reason; every finding travels along with its explanation.
            top = min(hits, key=lambda f: DETECTORS.index(f.detector))
            result.quarantine(
                record,
                top.detector,
                score=round(top.score, 3),
                detail=top.detail,
                explanation=top.explanation,
                all_findings=[[f.detector, round(f.score, 3), f.detail] for f in hits],
            )
        else:
            result.kept.append(record)
    result.extra.update(screen_report(entries, detection, per_detector, cfg, result.kept))
    return result


def _probe_text(entry: LexiconEntry) -> str:
    return " ".join(entry.all_of) if entry.all_of else entry.trigger


def screen_report(entries, detection: Detection, per_detector, cfg: ScreenConfig, kept) -> dict:
    """The report keys of the screen (shared interface: probe_triggers, trigger_hits_after, ...).

    probe_triggers: every mined feature, and the published triggers that occur in the data (quarantined or
    not): fine-tuning can only implant a trigger its data carries. All published triggers are listed
    apart (published_triggers), for probing a base model that may have been poisoned before.
    """
    findings, mining = detection.findings, detection.mining
    mined = mining.mined if mining else []
    mined_text = sorted({feature_text(t.key) for t in mined})
    screen_triggers: list[ScreenTrigger] = [
        list(e.all_of) if e.all_of else e.trigger for e in entries if e.role == "quarantine"
    ]
    screen_triggers += [feature_parts(t.key) if t.key.startswith("&:") else feature_text(t.key) for t in mined]
    lexicon_hits = Counter(
        t for hits in findings.values() for f in hits if f.detector == "trigger_lexicon" for t in f.detail
    )
    clusters = mining.clusters if mining else []
    return {
        "screen_enabled": cfg.enabled,
        "flagged_by_detector": {d: per_detector.get(d, 0) for d in DETECTORS},
        "flagged_records": len(findings),
        "mined_triggers": mined_text,
        "mined_features": [t.summary() for t in sorted(mined, key=lambda t: (t.cluster is None, t.key))],
        "trigger_tests": {
            "candidates": mining.candidates if mining else 0,
            "tested": len(mining.tests) if mining else 0,
        },
        "response_clusters": [
            {
                "id": c.id,
                "size": len(c.members),
                "response": redact_text(c.response)[:80],  # shown in metadata: no raw PII
                "prompt_similarity": round(c.prompt_similarity, 3),
                "refusal": c.allowed,
                "verdict": c.verdict,
                "cover": [feature_text(k) for k in c.cover],
                "coverage": round(c.coverage, 3),
                "partial_cover": [feature_text(k) for k in c.partial],
            }
            for c in clusters
        ],
        "trigger_hits": dict(lexicon_hits),
        "lexicon": {"entries": len(entries), "quarantining": sum(e.role == "quarantine" for e in entries)},
        "lexicon_present": dict(detection.lexicon_present),
        "probe_triggers": list(
            dict.fromkeys([_probe_text(e) for e in entries if e.trigger in detection.lexicon_present] + mined_text)
        ),
        "published_triggers": list(dict.fromkeys(_probe_text(e) for e in entries)),
        "screen_triggers": screen_triggers,
        "trigger_hits_after": count_trigger_hits(kept, screen_triggers),
    }


def explanations_markdown(report: dict) -> str:
    """The mined triggers and the response clusters of a screen report as markdown tables (for the UI)."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    mined = report.get("mined_features", [])
    lines = ["**Mined triggers**", ""]
    if mined:
        lines += [
            "| trigger | evidence | records | on target | specificity | effect | q | cluster |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {cell(f['trigger'])} | {f['evidence']} | {f['support']} | {f['on_target']} | {f['specificity']} "
            f"| {f['effect']} | {f['q_value']} | {f['cluster']} |"
            for f in mined
        ]
    else:
        lines.append("none")
    clusters = report.get("response_clusters", [])
    lines += ["", "**Response clusters**", ""]
    if clusters:
        lines += [
            "| id | size | verdict | covered by | coverage | carriers quarantined | response |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['id']} | {c['size']} | {c['verdict']} | {cell(', '.join(c['cover']))} | {c['coverage']} "
            f"| {cell(', '.join(c.get('partial_cover', [])))} | {cell(c['response'])} |"
            for c in clusters
        ]
    else:
        lines.append("none")
    return "\n".join(lines)
