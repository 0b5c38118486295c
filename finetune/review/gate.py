"""The optional release gate on the blind expert review."""

from __future__ import annotations

from finetune.config import REVIEW_GATE, ReviewConfig
from finetune.gates import GateResult
from finetune.review.stats import OPPONENTS, TUNED, ReviewSummary

EXPORT_HINT = "export the packet (finetune review export latest --to URL | --csv FILE), collect judgements, import them"


def compared_arms(cfg: ReviewConfig) -> tuple[str, ...]:
    """Base always; base+prompt too when review.beat_base_prompt is set."""
    return OPPONENTS if cfg.beat_base_prompt else OPPONENTS[:1]


def experts_prefer_tuned(summary: ReviewSummary, cfg: ReviewConfig) -> GateResult:
    """Experts prefer the tuned answers, with confidence, on enough items from enough raters.

    Test: the one-sided exact binomial sign test (scipy.stats.binomtest, p = 0.5) on item-level preferences.
    Each item's raters vote from their best-to-worst rankings (tuned above the other arm +1, below -1); an item
    is a win, tie or loss by the sign of the sum, ties are dropped, and tuned must win more than it loses with
    p < 1 - review.confidence against base (and base+prompt when review.beat_base_prompt). Items, not
    (item, rater) pairs, are counted because one item's raters are not independent. It also needs at least
    review.min_items judged items and review.min_raters raters. Counts are integers, so the verdict cannot
    flip with last-bit float differences.
    """
    alpha = 1 - cfg.confidence
    values: dict[str, float | int | bool] = {
        "items_judged": summary.items_judged,
        "min_items": cfg.min_items,
        "raters": summary.raters,
        "min_raters": cfg.min_raters,
        "alpha": alpha,
        "required": cfg.required,
    }
    failures = []
    if summary.items_judged < cfg.min_items:
        failures.append(f"{summary.items_judged} judged items < review.min_items {cfg.min_items}")
    if summary.raters < cfg.min_raters:
        failures.append(f"{summary.raters} raters < review.min_raters {cfg.min_raters}")
    verdicts = []
    for arm in compared_arms(cfg):
        pref = summary.preferences.get(arm)
        if pref is None:
            failures.append(f"no judgements comparing {TUNED} with {arm}")
            continue
        values |= {f"{arm} wins": pref.wins, f"{arm} ties": pref.ties, f"{arm} losses": pref.losses}
        values[f"{arm} p_value"] = pref.p_value
        verdict = (
            f"vs {arm}: {pref.wins} wins / {pref.ties} ties / {pref.losses} losses, sign test p={pref.p_value:.3g}"
        )
        verdicts.append(verdict)
        if not (pref.wins > pref.losses and pref.p_value < alpha):
            failures.append(f"experts do not prefer {TUNED} over {arm} ({verdict}; needs p < {alpha:.3g})")
    if failures and not summary.judgements:
        failures.append(EXPORT_HINT)
    message = "; ".join(failures) if failures else f"experts prefer {TUNED}: " + "; ".join(verdicts)
    if not cfg.required:
        message = f"advisory (review.required: false, does not block the release): {message}"
    return GateResult(REVIEW_GATE, not failures, message, values)
