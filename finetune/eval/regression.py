"""Is the tuned model worse than its base? Non-inferiority tests on paired per-example scores.

Tuned and base answer the same held-out examples and C-Eval questions, so every comparison is
paired: a per-example difference removes the variation between examples that an unpaired
comparison of two means would carry. Each metric gets a margin (the allowed drop, MLflow's
`min_absolute_change` with the sign of a drop) and three possible answers:

- worse with confidence: the difference is below -margin at level alpha, Holm-corrected over the
  metrics tested (so a model that is not worse is blocked with probability <= alpha);
- not worse: for every metric the difference is above -margin at level alpha (an
  intersection-union test: requiring all of them needs no correction, Berger 1982, Technometrics 24:295);
- cannot tell at this sample size: anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finetune.config import GatesConfig
from finetune.eval.metrics import bleu_scores
from finetune.stats import Comparison, holm, mean_statistic, paired_bootstrap, paired_proportions

WORSE, NOT_WORSE, CANNOT_TELL = "worse with confidence", "not worse", "cannot tell at this sample size"


@dataclass
class RegressionResult:
    """The verdict over all metrics, each metric's comparison and its Holm-adjusted p-value for 'worse'."""

    verdict: str
    comparisons: list[Comparison]
    p_worse_adjusted: list[float] = field(default_factory=list)
    worse: list[bool] = field(default_factory=list)


def _bleu_statistic(tuned: list[list[int]], base: list[list[int]]):
    # Corpus BLEU of each resample from its summed sentence statistics (Koehn 2004's paired bootstrap).
    t, b = np.asarray(tuned, dtype=np.int64), np.asarray(base, dtype=np.int64)

    return lambda idx: (bleu_scores(t[idx].sum(axis=-2)), bleu_scores(b[idx].sum(axis=-2)))


def comparisons(report: dict[str, Any], gates: GatesConfig) -> list[Comparison]:
    """One paired comparison per metric both arms measured (a metric with no examples is skipped)."""
    t, b = report["tuned"]["per_example"], report["base"]["per_example"]
    boot = {"alpha": gates.alpha, "resamples": gates.bootstrap_resamples, "seed": gates.bootstrap_seed}
    n = len(t["rougeL"])
    out = []
    if n:
        out.append(
            paired_bootstrap("ROUGE-L", n, mean_statistic(t["rougeL"], b["rougeL"]), gates.max_rouge_drop, **boot)
        )
        out.append(
            paired_bootstrap("BLEU", n, _bleu_statistic(t["bleu_stats"], b["bleu_stats"]), gates.max_bleu_drop, **boot)
        )
    losses = [(x, y) for x, y in zip(t.get("heldout_loss", []), b.get("heldout_loss", []), strict=True)
              if math.isfinite(x) and math.isfinite(y)]  # fmt: skip
    if losses:
        # Loss: lower is better, so the difference compared is base - tuned (a drop = a higher loss).
        statistic = mean_statistic([-x for x, _ in losses], [-y for _, y in losses])
        out.append(
            paired_bootstrap("held-out loss (base - tuned)", len(losses), statistic, gates.max_loss_increase, **boot)
        )
    ceval_t, ceval_b = report["tuned"]["ceval"].get("correct", []), report["base"]["ceval"].get("correct", [])
    if ceval_t:
        out.append(
            paired_proportions("C-Eval accuracy", ceval_t, ceval_b, gates.max_ceval_drop_points / 100, gates.alpha)
        )
    for key, name in (("label_correct", "label accuracy"), ("json_ok", "JSON format compliance")):
        if t.get(key):
            out.append(paired_proportions(name, t[key], b[key], gates.max_task_metric_drop, gates.alpha))
    return out


def compare_to_base(report: dict[str, Any], gates: GatesConfig) -> RegressionResult:
    """Run every comparison and combine them into one verdict at family-wise level `gates.alpha`."""
    found = comparisons(report, gates)
    if not found:
        return RegressionResult(CANNOT_TELL, [])
    worse, adjusted = holm([c.p_worse for c in found], gates.alpha)
    if any(worse):
        verdict = WORSE
    elif all(c.p_not_worse <= gates.alpha for c in found):
        verdict = NOT_WORSE
    else:
        verdict = CANNOT_TELL
    return RegressionResult(verdict, found, adjusted, worse)
