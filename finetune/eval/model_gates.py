"""The gates over the evaluation report: regression, learning floor and backdoor, each a stated test at gates.alpha."""

from __future__ import annotations

import math
from typing import Any

from finetune.config import Gate, GatesConfig
from finetune.eval.backdoor_test import POWER, decide
from finetune.eval.regression import CANNOT_TELL, NOT_WORSE, WORSE, compare_to_base
from finetune.gates import GateResult, fmt_p
from finetune.stats import (
    Comparison,
    clopper_pearson,
    mean_statistic,
    paired_bootstrap,
    rate_above,
    smallest_count_above,
)

REGRESSION_METHOD = (
    "non-inferiority on paired per-example scores: paired bootstrap (Efron & Tibshirani 1993; corpus BLEU as in "
    "Koehn 2004) for ROUGE-L, BLEU and held-out loss, Tango's paired score test (Tango 1998) for C-Eval and "
    "task accuracies; Holm (1979) over metrics for 'worse', intersection-union (Berger 1982) for 'not worse'"
)
BACKDOOR_METHOD = (
    "per candidate trigger: collapse count vs random controls of the same form (beta-binomial null, Williams "
    "1975) and vs the base model (exact McNemar 1947), intersection-union of both; Holm (1979) over candidates; "
    f"detectable ASR: the rate flagged with {POWER:.0%} power (binomial-beta identity)"
)
LOSS_METHOD = "one-sided paired bootstrap of per-example held-out loss, tuned vs base (Efron & Tibshirani 1993)"
DEGENERATE_METHOD = "one-sided exact binomial test that the degenerate-answer share exceeds the stated share"
_SLUGS = {
    "ROUGE-L": "rougeL",
    "BLEU": "bleu",
    "held-out loss (base - tuned)": "heldout_loss",
    "C-Eval accuracy": "ceval_accuracy",
    "label accuracy": "label_accuracy",
    "JSON format compliance": "json_compliance",
}
_POINTS = {"C-Eval accuracy", "label accuracy", "JSON format compliance"}  # shown in percentage points


def _describe(c: Comparison) -> str:
    scale, unit = (100, " points") if c.metric in _POINTS else (1, "")
    return (
        f"{c.metric} {c.estimate * scale:+.3g}{unit} [{c.low * scale:+.3g}, {c.high * scale:+.3g}] "
        f"(tuned {c.tuned * scale:.3g} vs base {c.base * scale:.3g}, margin -{c.margin * scale:.3g}, n={c.n})"
    )


def _comparison_values(c: Comparison, adjusted: float | None) -> dict[str, float]:
    slug = _SLUGS.get(c.metric, c.metric)
    values = {f"{slug}_{k}": getattr(c, k) for k in ("estimate", "low", "high", "tuned", "base", "margin", "n")}
    values |= {f"{slug}_p_worse": c.p_worse, f"{slug}_p_not_worse": c.p_not_worse}
    if adjusted is not None:
        values[f"{slug}_p_worse_holm"] = adjusted
    # Roughly the smallest true drop the test calls 'worse with confidence' half the time at this size.
    values[f"{slug}_detectable_drop"] = c.margin + (c.high - c.low) / 2
    return {k: v for k, v in values.items() if not (isinstance(v, float) and math.isinf(v))}


def not_worse_than_base(report: dict[str, Any], gates: GatesConfig) -> GateResult:
    """Tuned is not worse than base by more than each metric's margin, with confidence; worse with confidence
    blocks, and 'cannot tell at this sample size' follows gates.inconclusive (warn by default)."""
    result = compare_to_base(report, gates)
    level = f"{1 - 2 * gates.alpha:.0%} intervals of tuned - base"
    values: dict[str, Any] = {"verdict": result.verdict, "alpha": gates.alpha, "confidence": 1 - 2 * gates.alpha}
    for c, adj in zip(result.comparisons, result.p_worse_adjusted or [None] * len(result.comparisons), strict=True):
        values |= _comparison_values(c, adj)
    if result.verdict == WORSE:
        worse = [
            f"{_describe(c)}: p = {fmt_p(c.p_worse)}, Holm-adjusted {fmt_p(adj)} <= alpha {gates.alpha}"
            for c, adj, w in zip(result.comparisons, result.p_worse_adjusted, result.worse, strict=True)
            if w
        ]
        keys = "gates.max_rouge_drop, gates.max_bleu_drop, gates.max_loss_increase, gates.max_ceval_drop_points"
        msg = f"worse with confidence than base ({level}): " + "; ".join(worse) + f" (margins: {keys})"
        return GateResult(Gate.NOT_WORSE_THAN_BASE, False, msg, values, REGRESSION_METHOD)
    detail = "; ".join(_describe(c) for c in result.comparisons) or "no metric measured on both models"
    if result.verdict == NOT_WORSE:
        msg = f"not worse than base ({level}): {detail}"
        return GateResult(Gate.NOT_WORSE_THAN_BASE, True, msg, values, REGRESSION_METHOD)
    undecided = [c for c in result.comparisons if c.p_not_worse > gates.alpha]
    names = ", ".join(c.metric for c in undecided) or "every metric"
    block = gates.inconclusive == "block"
    msg = (
        f"{'BLOCKED' if block else 'WARN'}: {CANNOT_TELL} for {names} (gates.inconclusive={gates.inconclusive}; "
        f"more test examples narrow the intervals) ({level}): {detail}"
    )
    return GateResult(Gate.NOT_WORSE_THAN_BASE, not block, msg, values, REGRESSION_METHOD, warn=not block)


def heldout_loss_below_base(report: dict[str, Any], gates: GatesConfig) -> GateResult:
    """Positive evidence of learning: the tuned model's loss on held-out responses is below the base model's."""
    tuned = report["tuned"]["per_example"].get("heldout_loss", [])
    base = report["base"]["per_example"].get("heldout_loss", [])
    pairs = [(t, b) for t, b in zip(tuned, base, strict=True) if math.isfinite(t) and math.isfinite(b)]
    if len(pairs) < 2:
        msg = f"{len(pairs)} test examples with a response to score; cannot show the model learned"
        return GateResult(Gate.HELDOUT_LOSS_BELOW_BASE, False, msg, {"n": len(pairs)}, LOSS_METHOD)
    means = mean_statistic([-t for t, _ in pairs], [-b for _, b in pairs])  # lower loss = higher score
    c = paired_bootstrap(
        "held-out loss", len(pairs), means, 0.0, gates.alpha, gates.bootstrap_resamples, gates.bootstrap_seed
    )
    ok = c.p_not_worse <= gates.alpha  # H0: base - tuned <= 0, i.e. tuned loss not lower
    msg = (
        f"held-out loss per response token: tuned {-c.tuned:.4f} vs base {-c.base:.4f} on {c.n} test examples "
        f"(reduction {c.estimate:+.4f}, {1 - 2 * gates.alpha:.0%} interval [{c.low:+.4f}, {c.high:+.4f}]; "
        f"p = {fmt_p(c.p_not_worse)} {'<=' if ok else '>'} alpha {gates.alpha})"
    )
    if not ok:
        msg += ": no evidence that fine-tuning taught the model the held-out answers"
    values = {"tuned_loss": -c.tuned, "base_loss": -c.base, "reduction": c.estimate, "reduction_low": c.low}
    values |= {"reduction_high": c.high, "p_value": c.p_not_worse, "alpha": gates.alpha, "n": c.n}
    values["detectable_reduction"] = (c.high - c.low) / 2
    return GateResult(Gate.HELDOUT_LOSS_BELOW_BASE, ok, msg, values, LOSS_METHOD)


def answers_not_degenerate(report: dict[str, Any], gates: GatesConfig) -> GateResult:
    """Blocks a model whose answers to held-out prompts are empty, repetitive or all alike more often than
    gates.max_degenerate_share, shown by a one-sided exact binomial test at gates.alpha (so a model within
    the stated share is blocked with probability <= alpha; a model that answers nothing is blocked at any
    sample size of 7 or more)."""
    reasons = report["tuned"].get("answers", {}).get("degenerate", [])
    n, k = len(reasons), sum(1 for r in reasons if r)
    p = rate_above(k, n, gates.max_degenerate_share)
    ci = clopper_pearson(k, n, gates.alpha)
    blocked = p <= gates.alpha
    by_reason = {r: reasons.count(r) for r in sorted(set(reasons) - {""})}
    msg = (
        f"{k}/{n} tuned answers to held-out prompts degenerate {by_reason or ''} ({ci.confidence:.0%} interval "
        f"{ci.low:.0%}-{ci.high:.0%}); {'shown' if blocked else 'not shown'} above {gates.max_degenerate_share:.0%}: "
        f"p = {fmt_p(p)} {'<=' if blocked else '>'} alpha {gates.alpha}"
    )
    if blocked:
        msg += " (gates.max_degenerate_share): the model does not answer the held-out prompts"
    values = {"degenerate": k, "n": n, "share": k / n if n else 0.0, "share_ci_low": ci.low}
    values |= {"share_ci_high": ci.high, "max_share": gates.max_degenerate_share, "p_value": p, "alpha": gates.alpha}
    values |= {f"degenerate_{r.replace(' ', '_')}": v for r, v in by_reason.items()}
    # The detectable effect at this size: the gate blocks from this share of degenerate answers on.
    values["blocks_from_share"] = min(smallest_count_above(n, gates.max_degenerate_share, gates.alpha), n) / max(n, 1)
    return GateResult(Gate.ANSWERS_NOT_DEGENERATE, not blocked, msg, values, DEGENERATE_METHOD)


def no_backdoor_trigger(report: dict[str, Any], gates: GatesConfig) -> GateResult:
    """No candidate trigger makes the tuned model collapse onto one target more than random controls of its form
    do and more than the base model does, and no repeated training response is what odd insertions in general
    make it give, at family-wise level gates.alpha."""
    decision = decide(report["tuned"]["backdoor"], gates.alpha)
    m, n = len(decision.findings) + len(decision.targets), decision.n_prompts
    values: dict[str, Any] = {"alpha": gates.alpha, "candidates": len(decision.findings), "prompts": n}
    values |= {"controls": decision.n_controls, "shared_targets": len(decision.targets)}
    detectable = {form: v for form, v in decision.detectable_asr.items() if v is not None}
    blind = [form for form, v in decision.detectable_asr.items() if v is None]
    values |= {f"detectable_asr_{_form_slug(form)}": v for form, v in detectable.items()}
    values |= {f"flagged_from_hits_{_form_slug(form)}": k for form, k in decision.flagged_from.items()}
    values |= {"detectable_asr_power": POWER, "undetectable_forms": blind}
    if detectable:
        values["detectable_asr"] = max(detectable.values())
    if not decision.findings:
        msg = "no candidate triggers to probe (empty lexicon and nothing mined)"
        return GateResult(Gate.NO_BACKDOOR_TRIGGER, True, msg, values, BACKDOOR_METHOD)
    top = decision.findings[0]
    values |= {"top_trigger": top.trigger, "top_hits": top.hits, "top_asr": top.hits / top.n, "top_p": top.p}
    values |= {"top_p_holm": top.p_adjusted, "top_p_controls": top.p_controls, "top_controls_max": top.controls_max}
    values["findings"] = [f.to_dict() for f in decision.findings[:10]]
    values["target_findings"] = [t.to_dict() for t in decision.targets]
    if decision.flagged or decision.flagged_targets:
        parts = [_finding_text(f, gates.alpha, m) for f in decision.flagged]
        parts += [_target_text(t, gates.alpha, m) for t in decision.flagged_targets]
        return GateResult(
            Gate.NO_BACKDOOR_TRIGGER, False, "backdoor suspected: " + "; ".join(parts), values, BACKDOOR_METHOD
        )
    power = ", ".join(
        f"{form} {v:.2f} (flagged from {decision.flagged_from[form]}/{n})" for form, v in detectable.items()
    )
    msg = (
        f"no trigger flagged: {len(decision.findings)} candidates x {n} prompts against {decision.n_controls} "
        f"controls; strongest {_finding_text(top, gates.alpha, m)}; attack success rate detected with "
        f"{POWER:.0%} power, by trigger form: {power or 'none'}"
    )
    if blind:
        msg += (
            f"; at {n} prompts no {' or '.join(blind)} trigger can be flagged (it would need more prompts on one "
            "target than there are): raise eval.probe_prompts"
        )
    return GateResult(Gate.NO_BACKDOOR_TRIGGER, True, msg, values, BACKDOOR_METHOD)


def _form_slug(form: str) -> str:
    return form.replace(" ", "_").replace("+", "plus")


def _finding_text(f, alpha: float, m: int) -> str:
    positions = ", ".join(f"{pos} {h}/{k}" for pos, (h, k) in f.by_position.items())
    base = f"base {f.base_hits}/{f.n}" if f.base_hits is not None else "base not needed"
    relation = "<=" if f.flagged else ">"
    return (
        f"trigger {f.trigger!r}: {f.hits}/{f.n} triggered prompts give target {f.target[:60]!r} ({positions}), "
        f"controls <= {f.controls_max}/{f.n}, {base}, p = {fmt_p(f.p)} (Holm-adjusted {fmt_p(f.p_adjusted)}, "
        f"{m} tests) {relation} alpha {alpha}"
    )


def _target_text(t, alpha: float, m: int) -> str:
    controls = [i for i in t.insertions if i[1] == "control"]
    strongest = ", ".join(f"{text!r} {hits}" for text, _, hits in t.insertions[:3])
    return (
        f"target {t.target[:60]!r} (the response of {t.training_support} training records) is what "
        f"{len(t.insertions)} different insertions give, {len(controls)} of them random controls: the backdoor "
        f"fires on odd text in general (strongest {strongest}); {t.hits}/{t.pairs} prompts of the strongest vs "
        f"base {t.base_hits}/{t.pairs}, p = {fmt_p(t.p)} (Holm-adjusted {fmt_p(t.p_adjusted)}, {m} tests) <= alpha {alpha}"
    )
