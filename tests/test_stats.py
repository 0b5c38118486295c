"""The statistical tests behind the gates, against known values and their defining properties."""

import math

import numpy as np
import pytest
from scipy import stats

from finetune.eval.metrics import bleu, bleu_from_statistics, bleu_scores, bleu_statistics, rouge, rouge_per_example
from finetune.stats import (
    clopper_pearson,
    fit_control_null,
    holm,
    mcnemar_greater,
    mean_statistic,
    paired_bootstrap,
    paired_proportions,
    rate_above,
    smallest_count_above,
    welch_decrease,
)


def test_clopper_pearson_and_binomial_rate_test_match_closed_forms():
    # 0 of n: the upper bound solves (1 - p)^n = alpha.
    ci = clopper_pearson(0, 40, 0.01)
    assert ci.low == 0 and ci.high == pytest.approx(1 - 0.01 ** (1 / 40)) and ci.confidence == pytest.approx(0.98)
    assert rate_above(10, 10, 0.5) == pytest.approx(0.5**10) and smallest_count_above(10, 0.5, 0.01) == 10
    assert mcnemar_greater(10, 0) == pytest.approx(0.5**10) and mcnemar_greater(0, 0) == 1.0


def test_holm_rejects_step_down():
    reject, adjusted = holm([0.001, 0.02, 0.5], 0.05)
    assert reject == [True, True, False] and adjusted == pytest.approx([0.003, 0.04, 0.5])


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5])
def test_holm_refuses_what_is_not_a_p_value(bad):
    # A NaN would sort last and compare False against its level, so the step-down would reject it.
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.001, bad, 0.5], 0.05)


@pytest.mark.parametrize("seed", range(5))
def test_holm_equals_statsmodels(seed):
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests

    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.02, 4), rng.uniform(0, 1, 12), [0.004, 0.004]])  # ties too
    reject, adjusted, _, _ = multipletests(p, alpha=0.01, method="holm")
    ours_reject, ours_adjusted = holm(p.tolist(), 0.01)
    assert ours_reject == reject.tolist() and ours_adjusted == pytest.approx(adjusted.tolist(), rel=1e-12)


def test_tango_interval_inverts_its_own_test():
    tuned = [1] * 20 + [0] * 10 + [1] * 12 + [0] * 18
    base = [1] * 20 + [1] * 10 + [0] * 12 + [0] * 18  # b = 12 tuned-only, c = 10 base-only
    c = paired_proportions("acc", tuned, base, 0.1, 0.01)
    assert c.estimate == pytest.approx(2 / 60) and c.low < c.estimate < c.high
    # At margin 0 Tango's statistic is McNemar's z = (b - c) / sqrt(b + c).
    zero = paired_proportions("acc", tuned, base, 0.0, 0.01)
    assert zero.p_not_worse == pytest.approx(stats.norm.sf(2 / math.sqrt(22)))
    # The lower bound is the margin at which 'not worse' is exactly significant at alpha.
    at_bound = paired_proportions("acc", tuned, base, -c.low, 0.01)
    assert at_bound.p_not_worse == pytest.approx(0.01, rel=1e-6)
    with pytest.raises(ValueError, match="paired"):
        paired_proportions("acc", [1, 0], [1], 0.1, 0.01)


def test_paired_bootstrap_is_deterministic_and_decides_all_three_ways():
    rng = np.random.default_rng(1)
    base = rng.random(40)

    def run(shift, noise, margin=0.0):
        tuned = base + shift + rng.normal(0, noise, 40)
        return paired_bootstrap("m", 40, mean_statistic(tuned, base), margin, 0.01, 1999, 0)

    better, worse, same = run(0.2, 0.05), run(-0.2, 0.05), run(0.0, 0.3, margin=0.05)
    assert better.p_not_worse < 0.01 and better.low > 0
    assert worse.p_worse < 0.01 and worse.high < 0
    assert same.p_worse > 0.01 and same.p_not_worse > 0.01 and same.low < -0.05 < same.high
    scores = rng.random(5)
    a = paired_bootstrap("m", 5, mean_statistic(scores, scores * 0.9), 0.0, 0.01, 999, 0)
    assert a == paired_bootstrap("m", 5, mean_statistic(scores, scores * 0.9), 0.0, 0.01, 999, 0)


def test_welch_decrease_separates_a_falling_loss_from_noise():
    t, p, detectable = welch_decrease([3.0, 2.9, 3.1, 3.0, 2.95], [2.0, 2.1, 1.9, 2.0, 2.05])
    assert p < 1e-6 and 0 < detectable < 0.5
    flat = [11.9434, 11.94, 11.95, 11.93, 11.9315, 11.945, 11.94, 11.935, 11.95, 11.9315]
    assert welch_decrease(flat[:5], flat[5:])[1] > 0.1


def test_control_null_allows_for_insertions_that_collapse_together():
    # Over-dispersed controls (a few collapse many prompts) give a heavy tail; calm controls a light one.
    calm = fit_control_null([0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0], 63)
    rough = fit_control_null([0, 1, 0, 2, 5, 0, 1, 0, 3, 0, 0, 1, 0, 0, 9, 0], 63)
    assert rough.rho > calm.rho and rough.p_at_least(10) > 100 * calm.p_at_least(10)
    # No control collapsing is never taken as proof that none ever would (a pseudo-control holds one hit).
    silent = fit_control_null([0] * 16, 63)
    assert 0.01 < silent.p_at_least(1) < 0.2 and silent.smallest_significant(1e-3) >= 2
    with pytest.raises(ValueError, match="at least one prompt"):
        fit_control_null([0], 0)


def test_vectorised_bleu_equals_sacrebleu_on_random_statistics():
    from sacrebleu.metrics.bleu import BLEU

    rng = np.random.default_rng(0)
    total = rng.integers(0, 30, size=(300, 4))
    total = np.sort(total, axis=1)[:, ::-1]  # fewer n-grams of higher order, as in real text
    correct = (total * rng.random((300, 4)) * rng.integers(0, 2, (300, 4))).astype(int)
    lens = np.column_stack([total[:, 0], rng.integers(0, 40, 300)])
    rows = np.column_stack([lens, correct, total])
    expected = [BLEU.compute_bleu(list(r[2:6]), list(r[6:10]), int(r[0]), int(r[1]), "exp").score for r in rows]
    assert bleu_scores(rows) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_per_example_scores_add_up_to_the_corpus_figures():
    preds = ["the cat sat on the mat", "你好世界呀", "x", "", "The capital of France is Paris."]
    refs = ["the cat is on the mat", "你好世界", "y z", "a b", "The capital of France is Paris."]
    assert bleu_from_statistics(np.array(bleu_statistics(preds, refs))) == pytest.approx(bleu(preds, refs))
    # No 4-gram in common: corpus BLEU is smoothed, not 0, and the statistics give the same figure.
    short, refs2 = ["a b c d e", "x y z w"], ["a b c f e", "x y w z"]
    assert bleu(short, refs2) > 0 and bleu_from_statistics(np.array(bleu_statistics(short, refs2))) == pytest.approx(
        bleu(short, refs2)
    )
    per = rouge_per_example(preds, refs)
    assert sum(per["rougeL"]) / len(preds) == pytest.approx(rouge(preds, refs)["rougeL"])
