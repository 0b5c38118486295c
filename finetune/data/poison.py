"""Poisoning screen: every detector quarantines with a named reason, a score and an explanation, and every
trigger the scan knows or mined is handed on to the model probes.

Detectors: `trigger_lexicon` (published triggers, see trigger_lexicon), `mined_trigger` and
`response_cluster` (see trigger_mining), `prompt_injection` and `suspicious_payload` (see injection).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from finetune.config import ScreenConfig
from finetune.data.engine import LOCAL, Engine
from finetune.data.injection import find_injection, find_payload
from finetune.data.record_copies import copy_roots
from finetune.data.records import Record, Stage, StageReport, StageResult, StageSummary, response_text
from finetune.data.response_clusters import VERDICTS, ResponseCluster
from finetune.data.stream import Outcome, PassOrder, ProgressFn, collect, iter_jsonl, kept, quarantined, spool_stage
from finetune.data.trigger_features import (
    PROMPT_ROLES,
    FeatureTable,
    RecordFeatures,
    feature_parts,
    feature_text,
    record_features,
)
from finetune.data.trigger_lexicon import LexiconEntry, LexiconMatcher, find_triggers, fold, load_lexicon_entries
from finetune.data.trigger_mining import Mining, mine_triggers
from finetune.redaction import redact_text

__all__ = [
    "DETECTORS",
    "Screen",
    "count_trigger_hits",
    "detect_poisoning",
    "find_triggers",
    "load_lexicon",
    "screen_records",
    "screen_stage",
]
STAGE = Stage.SCREENED
DETECTORS = ("trigger_lexicon", "mined_trigger", "response_cluster", "prompt_injection", "suspicious_payload")
# A trigger the screen quarantines on, as the gate's re-scan reads it: a string, or strings that must all occur.
ScreenTrigger = str | list[str]


def mining_inputs(record: Record) -> tuple[str, str, str, RecordFeatures]:
    """What screening's first pass keeps of a record: its id, screen prompt, response and trigger features."""
    return record["id"], screen_prompt(record), response_text(record), record_features(record)


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


def _trigger_matcher(triggers: Sequence[ScreenTrigger | LexiconEntry]) -> LexiconMatcher:
    return LexiconMatcher([t if isinstance(t, LexiconEntry) else _entry(t) for t in triggers])


def count_trigger_hits(records: Iterable[Record], triggers: Sequence[ScreenTrigger | LexiconEntry]) -> dict[str, int]:
    """Independent re-scan: how many records still carry each trigger (a list = all of its parts)."""
    matcher = _trigger_matcher(triggers)
    hits: Counter[str] = Counter()
    for record in records:
        hits.update(e.trigger for e in matcher.find(screen_prompt(record)))
    return dict(hits)


@dataclass(frozen=True)
class ScreenSummary(StageSummary):
    """What the gates and the evaluation read of a screen's report, typed (the report's other keys are for
    people: the UI's tables and the explanations)."""

    flagged_records: int  # flagged by any detector, quarantined or not (`screen.enabled` off)
    flagged_by_detector: dict[str, int]
    screen_triggers: list[ScreenTrigger]  # what the screen quarantines on, for the gate's re-scan
    probe_triggers: list[str]  # mined features and the published triggers the data carries, for the model probe
    mined_triggers: list[str]  # as text, sorted
    mined_features: list[dict[str, Any]]  # each mined trigger's test: evidence, support, specificity, q, cluster
    response_clusters: list[dict[str, Any]]  # id, size, verdict, the features covering it, a redacted response
    trigger_hits: dict[str, int]  # quarantined records per published trigger


def kept_trigger_hits(report: StageReport) -> dict[str, int]:
    """The `no_trigger_hits` gate's independent re-scan: the triggers the screen quarantines on
    (`screen_triggers`, not the probes, which also try ordinary words such as 2024 that clean records may
    carry), counted in the kept.jsonl the screen wrote."""
    return count_trigger_hits(iter_jsonl(report.files.kept), ScreenSummary.of(report).screen_triggers)


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


def _mined_finding(test, clusters: dict[int, ResponseCluster]) -> Finding:
    """What a record carrying mined trigger `test` is quarantined with."""
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
    return Finding("mined_trigger", test.effect, entry.trigger, explanation)


def _cluster_findings(mining: Mining) -> dict[int, list[Finding]]:
    findings: dict[int, list[Finding]] = {}
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
            findings.setdefault(i, []).append(
                Finding("response_cluster", round(1 - c.prompt_similarity, 3), c.verdict, explanation)
            )
    return findings


@dataclass
class Detection:
    """Every detector's findings (record index -> findings), what mining found (None when it is off), and how
    many records carry each lexicon entry (any role)."""

    findings: dict[int, list[Finding]]
    mining: Mining | None
    lexicon_present: Counter[str]


@dataclass
class Judgement:
    """The second pass's view of one record: every finding and the lexicon entries present (any role)."""

    findings: list[Finding]
    lexicon_present: list[str]


@dataclass
class RecordDetectors:
    """What the second pass needs to judge a record alone, mining's results included; picklable, so an
    `Engine` may run `judge` anywhere."""

    cfg: ScreenConfig
    matcher: LexiconMatcher
    mined: list[tuple[str, Finding]]  # (trigger text, finding) in mining's order
    mined_matcher: LexiconMatcher
    clusters: dict[int, list[Finding]]  # by input position

    def findings(self, i: int, record: Record, prompt: str) -> tuple[list[Finding], list[str]]:
        """Every detector's findings on the record at input position `i`, and the lexicon entries it carries."""
        folded = fold(prompt), fold(prompt, case_sensitive=True)
        carried = {e.trigger for e in self.mined_matcher.find_folded(*folded)}
        found = [finding for trigger, finding in self.mined if trigger in carried] + self.clusters.get(i, [])
        lexicon = self.matcher.find_folded(*folded)
        present = [e.trigger for e in lexicon]
        if lexicon := [e for e in lexicon if e.role == "quarantine"]:
            explanation = {
                "detector": "trigger_lexicon",
                "features": [e.trigger for e in lexicon],
                "attacks": sorted({e.attack for e in lexicon}),
                "sources": sorted({e.source for e in lexicon if e.source}),
            }
            found.append(Finding("trigger_lexicon", 1.0, [e.trigger for e in lexicon], explanation))
        response = response_text(record)
        if self.cfg.injection and (hit := find_injection(prompt + "\n" + response)):
            found.append(Finding("prompt_injection", 1.0, hit, {"detector": "prompt_injection", "patterns": hit}))
        if self.cfg.payloads and (hit := find_payload(response)):
            found.append(Finding("suspicious_payload", 1.0, hit, {"detector": "suspicious_payload", "patterns": hit}))
        return found, present

    def judge(self, item: tuple[int, Record]) -> Judgement:
        i, record = item
        return Judgement(*self.findings(i, record, screen_prompt(record)))


class Screen:
    """The poisoning screen over one stage's records, in two passes over the same input.

    Mining needs the whole set (a trigger is a feature many records share), so the first pass (`mine`)
    keeps only what mining reads: each record's prompt, response and features, never the records or
    their outcomes. The second pass (`outcomes`) reads the records again in the same order and decides
    each as it passes: the lexicon, injection and payload detectors look at the record alone, and what
    mining found is looked up by the record's position.
    """

    def __init__(self, cfg: ScreenConfig, entries: Sequence[LexiconEntry]):
        self.cfg, self.entries = cfg, list(entries)
        self.matcher = LexiconMatcher(self.entries)
        self.mining: Mining | None = None
        self.order = PassOrder(STAGE)
        self._detectors: RecordDetectors | None = None  # the second pass's, with what mining found
        self.per_detector: Counter[str] = Counter()
        self.lexicon_present: Counter[str] = Counter()
        self.lexicon_hits: Counter[str] = Counter()
        self.flagged = 0

    def mine(self, records: Iterable[Record], engine: Engine = LOCAL) -> None:
        """Pass 1: mine triggers and response clusters from the whole input (features on the engine)."""
        prompts, responses, feats = [], [], []
        if not self.cfg.mining:
            for record in records:
                self.order.add(record["id"])
            return
        for record_id, prompt, response, features in engine.map(mining_inputs, records, batch=512):
            self.order.add(record_id)
            prompts.append(prompt)
            responses.append(response)
            # Interned here, in this process: the same feature strings recur across records, mining holds
            # every record's set at once, and strings computed in another process arrive as copies.
            feats.append(replace(features, units=tuple(map(sys.intern, features.units))))
        if not feats:
            return
        allow = [re.compile(rx) for rx in self.cfg.cluster_allow]
        probe_only = [e.trigger for e in self.entries if e.role == "probe" and not e.all_of]
        roots = copy_roots(prompts, responses, self.cfg.max_copy_insertions)
        del prompts, responses  # mining reads the folded copies the features hold
        table = FeatureTable(feats, roots, self.cfg.min_trigger_support)
        del feats  # the table keeps what mining reads of them
        self.mining = mine_triggers(table, self.cfg, lambda text: any(rx.search(text) for rx in allow), probe_only)
        clusters = {c.id: c for c in self.mining.clusters}
        mined = [(_mined_entry(t.key).trigger, _mined_finding(t, clusters)) for t in self.mining.mined]
        matcher = LexiconMatcher([_mined_entry(t.key) for t in self.mining.mined])
        self._detectors = self._with_mining(mined, matcher, _cluster_findings(self.mining))

    def _with_mining(
        self, mined: list[tuple[str, Finding]], matcher: LexiconMatcher, clusters: dict[int, list[Finding]]
    ) -> RecordDetectors:
        return RecordDetectors(self.cfg, self.matcher, mined, matcher, clusters)

    def detectors(self) -> RecordDetectors:
        """The second pass's detectors, with what mining found (call after `mine`)."""
        if self._detectors is None:  # mining off, or nothing to mine
            self._detectors = self._with_mining([], LexiconMatcher([]), {})
        return self._detectors

    def findings(self, i: int, record: Record) -> list[Finding]:
        """Every detector's findings on the record at position `i` of the input `mine` read."""
        self.order.check(i, record["id"])
        found, present = self.detectors().findings(i, record, screen_prompt(record))
        self.lexicon_present.update(present)
        return found

    def outcomes(self, records: Iterable[Record], engine: Engine = LOCAL) -> Iterator[Outcome]:
        """Pass 2: one outcome per record, quarantined when any detector flags it (unless `cfg.enabled` is off).
        Each record is judged on the engine; the counts and outcomes are taken here, in input order."""
        n = -1
        for n, ((_, record), judged) in enumerate(engine.paired(self.detectors().judge, enumerate(records))):
            self.order.check(n, record["id"])
            self.lexicon_present.update(judged.lexicon_present)
            hits = judged.findings
            self.per_detector.update({f.detector for f in hits})
            self.flagged += bool(hits)
            self.lexicon_hits.update(t for f in hits if f.detector == "trigger_lexicon" for t in f.detail)
            if hits and self.cfg.enabled:
                # The most specific finding names the reason; every finding travels along with its explanation.
                top = min(hits, key=lambda f: DETECTORS.index(f.detector))
                yield quarantined(
                    record,
                    top.detector,
                    score=round(top.score, 3),
                    detail=top.detail,
                    explanation=top.explanation,
                    all_findings=[[f.detector, round(f.score, 3), f.detail] for f in hits],
                )
            else:
                yield kept(record)
        self.order.check_count(n + 1)

    def screen_triggers(self) -> list[ScreenTrigger]:
        """The triggers the screen quarantines on, as the gate's re-scan reads them."""
        mined = self.mining.mined if self.mining else []
        triggers: list[ScreenTrigger] = [
            list(e.all_of) if e.all_of else e.trigger for e in self.entries if e.role == "quarantine"
        ]
        return triggers + [feature_parts(t.key) if t.key.startswith("&:") else feature_text(t.key) for t in mined]

    def summary(self) -> ScreenSummary:
        """probe_triggers: every mined feature, and the published triggers that occur in the data (quarantined or
        not): fine-tuning can only implant a trigger its data carries."""
        mined_triggers = self.mined_triggers()
        probes = [_probe_text(e) for e in self.entries if e.trigger in self.lexicon_present] + mined_triggers
        mining = self.mining
        mined = mining.mined if mining else []
        return ScreenSummary(
            self.flagged,
            {d: self.per_detector.get(d, 0) for d in DETECTORS},
            self.screen_triggers(),
            list(dict.fromkeys(probes)),
            mined_triggers,
            [t.summary() for t in sorted(mined, key=lambda t: (t.cluster is None, t.key))],
            [_cluster_row(c) for c in (mining.clusters if mining else [])],
            dict(self.lexicon_hits),
        )

    def mined_triggers(self) -> list[str]:
        return sorted({feature_text(t.key) for t in (self.mining.mined if self.mining else [])})

    def report(self) -> dict:
        """The stage report's screening keys: the typed `summary()`, and the rest for people. All published
        triggers are listed apart (published_triggers), for probing a base model poisoned before."""
        mining, entries = self.mining, self.entries
        return {
            "screen_enabled": self.cfg.enabled,
            **self.summary().to_json(),
            "trigger_tests": {
                "candidates": mining.candidates if mining else 0,
                "tested": len(mining.tests) if mining else 0,
            },
            "lexicon": {"entries": len(entries), "quarantining": sum(e.role == "quarantine" for e in entries)},
            "lexicon_present": dict(self.lexicon_present),
            "published_triggers": list(dict.fromkeys(_probe_text(e) for e in entries)),
        }


def _entries(lexicon: Sequence[LexiconEntry | str] | None, cfg: ScreenConfig) -> list[LexiconEntry]:
    if lexicon is None:
        return load_lexicon(cfg)
    return [e if isinstance(e, LexiconEntry) else LexiconEntry(e) for e in lexicon]


def detect_poisoning(records: list[Record], cfg: ScreenConfig, lexicon: Sequence[LexiconEntry | str]) -> Detection:
    """Run every detector over records held in memory."""
    screen = Screen(cfg, _entries(lexicon, cfg))
    screen.mine(records)
    findings = {i: hits for i, record in enumerate(records) if (hits := screen.findings(i, record))}
    return Detection(findings, screen.mining, screen.lexicon_present)


def screen_records(
    records: list[Record], cfg: ScreenConfig, lexicon: Sequence[LexiconEntry | str] | None = None
) -> StageResult:
    """Screen records held in memory (`Screen`); quarantine what any detector flags unless `cfg.enabled` is off."""
    screen = Screen(cfg, _entries(lexicon, cfg))
    screen.mine(records)
    result = collect(STAGE, screen.outcomes(records))
    result.extra.update(screen.report())
    return result


def screen_stage(
    kept_path: Path,
    cfg: ScreenConfig,
    lexicon: Sequence[LexiconEntry | str] | None,
    out_dir: Path,
    progress: ProgressFn | None = None,
    engine: Engine = LOCAL,
) -> StageReport:
    """Screen an upstream kept.jsonl in two streaming passes, spooling the stage's files; return its report."""
    screen = Screen(cfg, _entries(lexicon, cfg))
    screen.mine(iter_jsonl(kept_path), engine)
    return spool_stage(STAGE, screen.outcomes(iter_jsonl(kept_path), engine), out_dir, progress, screen.report)


def _cluster_row(c: ResponseCluster) -> dict:
    return {
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


def _probe_text(entry: LexiconEntry) -> str:
    return " ".join(entry.all_of) if entry.all_of else entry.trigger


def explanations_markdown(summary: ScreenSummary) -> str:
    """The mined triggers and the response clusters of a screen report as markdown tables (for the UI)."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    mined = summary.mined_features
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
    clusters = summary.response_clusters
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
