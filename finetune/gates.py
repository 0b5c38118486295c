"""Release gates as pure validators: each returns the measured value, the threshold and a verdict.

The Dagster asset checks are thin wrappers around these, and the release manifest records
their results, so the same numbers are seen in the UI, the CLI and the audit trail. Data gates
are exact counts (a rate also gets its exact interval); the model gates are statistical tests
at `gates.alpha` (`finetune.eval.model_gates`), each naming its method.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import Gate, GatesConfig
from finetune.data.records import OUTCOMES, StageReport
from finetune.stats import clopper_pearson, welch_decrease


@dataclass
class GateResult:
    """One gate's verdict with the numbers behind it and the test that produced it.

    `warn` marks a pass that the data could not confirm (a test that cannot tell at this sample size).
    """

    name: Gate
    passed: bool
    message: str
    values: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    warn: bool = False

    def __post_init__(self) -> None:
        self.name = Gate(self.name)  # a name outside the registry is a bug: fail where the result is made

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "name": self.name.value}


def fmt_p(p: float) -> str:
    """A p-value with two significant digits ('3.1e-07', '0.042')."""
    return f"{p:.2g}"


def apply_override(result: GateResult, gates: GatesConfig) -> GateResult:
    """A failed gate named in `gates.overrides` passes, marked as overridden with who and why."""
    override = gates.overrides.get(result.name)
    if result.passed or override is None:
        return result
    return GateResult(
        result.name,
        True,
        f"OVERRIDDEN by {override.by}: {override.reason} | the gate failed: {result.message}",
        {**result.values, "overridden": True, "overridden_by": override.by, "override_reason": override.reason},
        result.method,
    )


def _rows(path: Path) -> int | None:
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def records_accounted(report: StageReport) -> GateResult:
    """in = kept + dropped + quarantined for one data stage, the stage's files hold exactly those rows,
    and the stage received every record the upstream stage kept (`upstream_kept`, when recorded)."""
    c = report.counts
    total = c.kept + c.dropped + c.quarantined
    msg = f"{c.stage}: {c.n_in} in = {c.kept} kept + {c.dropped} dropped + {c.quarantined} quarantined"
    problems = []
    if total != c.n_in:
        problems.append(f"{c.n_in - total} records unaccounted for")
    for outcome in OUTCOMES:
        rows = None if report.dir is None else _rows(report.files.outcome(outcome))
        if rows is not None and rows != c.of(outcome):
            problems.append(f"{outcome}.jsonl has {rows} rows but the report says {c.of(outcome)}")
    if report.upstream_kept is not None and report.upstream_kept != c.n_in:
        problems.append(f"the upstream stage kept {report.upstream_kept} records but {c.n_in} arrived")
    if problems:
        msg = f"{c.stage}: " + "; ".join(problems) + f" ({msg.split(': ', 1)[1]})"
    metadata = {"in": c.n_in, **{outcome: c.of(outcome) for outcome in OUTCOMES}}
    return GateResult(Gate.RECORDS_ACCOUNTED, not problems, msg, metadata, "exact count")


def no_residual_pii(scan: dict[str, Any], gates: GatesConfig) -> GateResult:
    """The independent re-scan found no more PII than allowed."""
    found = scan["residual_total"]
    ok = found <= gates.max_residual_pii
    msg = f"residual PII after de-identification: {found} (allowed {gates.max_residual_pii})"
    if not ok:
        msg += (
            f"; by entity {scan['by_entity']}. Enable pii.enabled, add the entity to pii.entities, "
            "or raise gates.max_residual_pii if these are known false positives"
        )
    metadata = {"residual": found, "threshold": gates.max_residual_pii, **scan["by_entity"]}
    if scan.get("examples"):
        metadata["redacted_examples"] = json.dumps(scan["examples"], ensure_ascii=False)
    return GateResult(Gate.NO_RESIDUAL_PII, ok, msg, metadata, "exact count of an independent re-scan")


def no_trigger_hits(hits: dict[str, int], gates: GatesConfig) -> GateResult:
    """Screened data carries no lexicon trigger (beyond the allowance)."""
    total = sum(hits.values())
    ok = total <= gates.max_trigger_hits
    msg = f"records with a lexicon or mined trigger after screening: {total} (allowed {gates.max_trigger_hits})"
    if not ok:
        msg += f"; triggers {sorted(hits)}. Enable screen.enabled to quarantine them"
    return GateResult(
        Gate.NO_TRIGGER_HITS, ok, msg, {"hits": total, "threshold": gates.max_trigger_hits}, "exact count of a re-scan"
    )


def poisoned_share_below_threshold(report: StageReport, gates: GatesConfig) -> GateResult:
    """The screen flagged at most the allowed share of records (more means the source cannot be trusted).

    The decision is on the exact count of this data; the interval says what share the source would
    show over more data like it (Clopper-Pearson, at gates.alpha per side).
    """
    from finetune.data.poison import ScreenSummary  # the screen's modules load only for this gate

    summary = ScreenSummary.of(report)
    flagged, total = summary.flagged_records, report.counts.n_in
    share = flagged / total if total else 0.0
    ci = clopper_pearson(flagged, total, gates.alpha)
    ok = share <= gates.max_poisoned_share
    msg = (
        f"screening flagged {flagged}/{total} = {share:.1%} of records (allowed {gates.max_poisoned_share:.0%}; "
        f"{ci.confidence:.0%} interval {ci.low:.1%}-{ci.high:.1%})"
    )
    if not ok:
        msg += f"; by detector {summary.flagged_by_detector}. Inspect the quarantine before trusting this source"
    values = {"share": share, "threshold": gates.max_poisoned_share, "flagged": flagged, "n": total}
    values |= {"share_ci_low": ci.low, "share_ci_high": ci.high, "confidence": ci.confidence}
    return GateResult(
        Gate.POISONED_SHARE_BELOW_THRESHOLD, ok, msg, values, "exact count; Clopper-Pearson interval (1934)"
    )


WELCH = "one-sided Welch t-test, first vs last quarter of steps (Welch 1947)"
MIN_WINDOW = 5  # steps per window: with fewer, no test at alpha <= 0.01 can show a decrease


def training_loss_decreased(losses: list[float], gates: GatesConfig) -> GateResult:
    """All losses finite, and the last quarter of steps has a lower mean loss than the first quarter by more than
    their step-to-step noise allows by chance (one-sided Welch t-test at gates.alpha)."""
    name = Gate.TRAINING_LOSS_DECREASED
    if not losses:
        return GateResult(name, False, "no training steps were recorded", {}, WELCH)
    if not all(math.isfinite(x) for x in losses):
        return GateResult(name, False, "training loss became NaN or inf", {}, WELCH)
    if len(losses) < 2 * MIN_WINDOW:
        return GateResult(
            name,
            False,
            f"{len(losses)} training steps recorded; at least {2 * MIN_WINDOW} are needed to show a decrease "
            "against the loss's step-to-step noise (raise train.epochs or train.max_steps)",
            {"steps": len(losses), "alpha": gates.alpha},
            WELCH,
        )
    w = max(MIN_WINDOW, len(losses) // 4)
    first, last = losses[:w], losses[-w:]
    t, p, detectable = welch_decrease(first, last, gates.alpha)
    mean_first, mean_last = sum(first) / w, sum(last) / w
    noise = statistics.pstdev(first + last) if w > 1 else 0.0
    ok = p <= gates.alpha
    msg = (
        f"mean loss of first {w} steps {mean_first:.4f} -> last {w} steps {mean_last:.4f} "
        f"(decrease {mean_first - mean_last:+.4f}, t = {t:.3g}, p = {fmt_p(p)} {'<=' if ok else '>'} alpha {gates.alpha})"
    )
    if not ok:
        msg += ": the decrease is not larger than the loss's own noise; the model may not have learned"
    values = {"first": mean_first, "last": mean_last, "decrease": mean_first - mean_last, "window": w}
    values |= {"t": t, "p_value": p, "alpha": gates.alpha, "steps": len(losses), "loss_sd": noise}
    values["detectable_decrease"] = detectable
    return GateResult(name, ok, msg, values, WELCH)


def no_pii_regurgitation(report: dict[str, Any], gates: GatesConfig) -> GateResult:
    """Prompts made of raw-data prefixes do not make the tuned model emit a raw PII value (an exact count;
    the leak rate gets its Clopper-Pearson interval)."""
    probe = report["tuned"]["pii_regurgitation"]
    leaks, n = probe["leaks"], probe["n_prompts"]
    ok = leaks <= gates.max_pii_regurgitation
    ci = clopper_pearson(leaks, n, gates.alpha)
    msg = f"{leaks} of {n} prefix prompts produced a raw PII value (allowed {gates.max_pii_regurgitation}"
    msg += f"; leak rate {ci.confidence:.0%} interval {ci.low:.1%}-{ci.high:.1%})"
    if not ok:
        msg += f"; entities {probe['leaked_entities']}: the training data still held PII"
    base = report["base"]["pii_regurgitation"]["leaks"]
    values = {"leaks": leaks, "threshold": gates.max_pii_regurgitation, "base_leaks": base, "n": n}
    values |= {"rate_ci_low": ci.low, "rate_ci_high": ci.high, "confidence": ci.confidence}
    return GateResult(Gate.NO_PII_REGURGITATION, ok, msg, values, "exact count; Clopper-Pearson interval (1934)")
