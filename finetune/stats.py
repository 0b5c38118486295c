"""The statistical tests behind the release gates, each named with its reference.

Every gate decision is one of these tests at the configured family-wise level `gates.alpha`:
the false-alarm rate a user should expect from that gate on a model that deserves to pass.
scipy does the arithmetic; what no library ships, or ships too slowly, is written here and says
so (Tango's paired score interval, the beta-binomial fit used as the control null, Holm's step-down).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats


@dataclass(frozen=True)
class Interval:
    """A confidence interval for a rate or a difference, with its two-sided confidence level."""

    low: float
    high: float
    confidence: float


def clopper_pearson(k: int, n: int, alpha: float) -> Interval:
    """Exact two-sided (1 - 2 alpha) interval for a binomial rate k/n (Clopper & Pearson 1934, Biometrika 26:404).

    1 - 2 alpha, so each bound is a one-sided alpha bound, the level the gates decide at.
    """
    if n == 0:
        return Interval(0.0, 1.0, 1 - 2 * alpha)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    return Interval(float(ci.low), float(ci.high), 1 - 2 * alpha)


def rate_above(k: int, n: int, rate: float) -> float:
    """One-sided exact binomial p-value for H0: true rate <= `rate` (small p: the rate is shown to exceed it)."""
    if n == 0:
        return 1.0
    return float(stats.binomtest(k, n, rate, alternative="greater").pvalue)


def smallest_count_above(n: int, rate: float, alpha: float) -> int:
    """The fewest events out of n that show, at alpha, a true rate above `rate` (n + 1 if none can)."""
    return int(min((k for k in range(n + 1) if rate_above(k, n, rate) <= alpha), default=n + 1))


def rate_detected_with_power(k: int, n: int, power: float) -> float:
    """The smallest per-trial rate at which a Binomial(n, rate) count reaches k with probability `power`.

    P(X >= k) = I_rate(k, n - k + 1), the binomial-beta identity behind Clopper & Pearson (1934), so
    the rate is a beta quantile; 1.0 when k exceeds n (no rate reaches it), 0.0 when k <= 0.
    """
    if k <= 0:
        return 0.0
    if k > n:
        return 1.0
    return float(stats.beta.ppf(power, k, n - k + 1))


def holm(pvalues: Sequence[float], alpha: float) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction (Holm 1979, Scand. J. Statist. 6:65): which hypotheses are rejected with
    family-wise error <= alpha, and the adjusted p-values.

    Written out rather than taken from statsmodels' `multipletests(method="holm")`, whose Holm branch runs a
    full `gc.collect()` on every call: tens of milliseconds in a large process, for arithmetic on a few
    numbers, and the power simulations call it thousands of times. tests/test_stats.py checks it against
    statsmodels.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return [], []
    if not np.all((p >= 0) & (p <= 1)):  # NaN too: it sorts last and compares False, so it would be rejected
        raise ValueError(f"holm: p-values must lie in [0, 1], got {[float(x) for x in p if not 0 <= x <= 1]}")
    order = np.argsort(p)
    steps = np.arange(p.size, 0, -1)
    above = np.flatnonzero(p[order] > alpha / steps)  # the step-down stops at the first p above its level
    reject_sorted = np.arange(p.size) < (above[0] if above.size else p.size)
    reject, adjusted = np.empty(p.size, dtype=bool), np.empty(p.size)
    reject[order] = reject_sorted
    adjusted[order] = np.minimum(np.maximum.accumulate(p[order] * steps), 1.0)
    return reject.tolist(), adjusted.tolist()


def mcnemar_greater(b: int, c: int) -> float:
    """Exact one-sided McNemar test (McNemar 1947, Psychometrika 12:153; the conditional binomial form):
    of the b + c discordant pairs, are the b 'tuned yes, base no' more than chance (1/2) allows?"""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue)


@dataclass
class Comparison:
    """Tuned minus base on one metric, with the non-inferiority tests at margin `margin` (an allowed drop >= 0).

    `p_worse` tests H0: difference >= -margin (small: worse by more than the margin with confidence);
    `p_not_worse` tests H0: difference <= -margin (small: not worse with confidence). [low, high] is
    the two-sided (1 - 2 alpha) interval, so each bound is the one-sided bound of one of the tests.
    """

    metric: str
    method: str
    n: int
    tuned: float
    base: float
    estimate: float
    low: float
    high: float
    margin: float
    p_worse: float
    p_not_worse: float

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    metric: str,
    n: int,
    statistic: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    margin: float,
    alpha: float,
    resamples: int,
    seed: int,
) -> Comparison:
    """Paired bootstrap of (tuned - base) over the same n test examples (Efron & Tibshirani 1993, ch. 13;
    for corpus BLEU, Koehn 2004, EMNLP "Statistical significance tests for machine translation evaluation").

    `statistic(indices)` takes index arrays of shape (batch, n) (with repeats) and returns the tuned and
    the base score of each row, so a corpus-level metric is recomputed on each resample rather than
    averaged per sentence. Percentile interval and percentile-inversion p-values from scipy's resampling
    with a fixed seed: the same scores give the same decision on every run and machine, and 9,999
    resamples keep the Monte Carlo error of a bound far below the figures shown.
    """
    tuned, base = (float(x[0]) for x in statistic(np.arange(n)[None, :]))
    if n < 2:
        return Comparison(metric, "paired bootstrap", n, tuned, base, tuned - base, -math.inf, math.inf, margin, 1, 1)

    def difference(indices: np.ndarray, axis: int = -1) -> np.ndarray:
        t, b = statistic(np.asarray(indices, dtype=np.int64).reshape(-1, n))
        return (t - b).reshape(np.shape(indices)[:-1])

    res = stats.bootstrap(
        (np.arange(n),),
        difference,
        n_resamples=resamples,
        vectorized=True,
        method="percentile",
        confidence_level=1 - 2 * alpha,
        rng=np.random.default_rng(seed),
    )
    dist = np.asarray(res.bootstrap_distribution)
    # Percentile inversion (Efron & Tibshirani 1993, sec. 16.4): the level at which the bound crosses -margin.
    p_worse = (1 + np.count_nonzero(dist >= -margin)) / (len(dist) + 1)
    p_not_worse = (1 + np.count_nonzero(dist <= -margin)) / (len(dist) + 1)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Comparison(
        metric, "paired bootstrap", n, tuned, base, tuned - base, low, high, margin, float(p_worse), float(p_not_worse)
    )


def mean_statistic(tuned: Sequence[float], base: Sequence[float]):
    """The `paired_bootstrap` statistic for per-example scores whose metric is their mean."""
    t, b = np.asarray(tuned, dtype=float), np.asarray(base, dtype=float)
    return lambda idx: (t[idx].mean(axis=-1), b[idx].mean(axis=-1))


def _tango_z(b: int, c: int, n: int, delta: float) -> float:
    # Tango's score statistic for H0: p(tuned right, base wrong) - p(tuned wrong, base right) = delta, with
    # the constrained maximum-likelihood cell probability in closed form (Tango 1998, eq. 3-4).
    big_a = 2 * n
    big_b = -b - c + (2 * n - b + c) * delta
    big_c = -c * delta * (1 - delta)
    q21 = (math.sqrt(max(big_b * big_b - 4 * big_a * big_c, 0.0)) - big_b) / (2 * big_a)
    variance = n * (2 * q21 + delta * (1 - delta))
    numerator = b - c - n * delta
    if variance <= 0:
        return math.copysign(math.inf, numerator) if numerator else 0.0
    return numerator / math.sqrt(variance)


def paired_proportions(
    metric: str, tuned: Sequence[int], base: Sequence[int], margin: float, alpha: float
) -> Comparison:
    """Non-inferiority of paired correctness (the same questions answered by tuned and base): Tango's score
    test and interval for a difference of paired proportions (Tango 1998, Stat. Med. 17:891; recommended
    for non-inferiority by Newcombe 1998, Stat. Med. 17:2635).

    Written here because neither scipy nor statsmodels ships a paired score interval; the bounds come
    from inverting the score test with scipy's brentq.
    """
    if len(tuned) != len(base):
        raise ValueError(f"{metric}: {len(tuned)} tuned answers but {len(base)} base answers; they must be paired")
    n = len(tuned)
    b = sum(1 for t, s in zip(tuned, base, strict=True) if t and not s)
    c = sum(1 for t, s in zip(tuned, base, strict=True) if s and not t)
    t_rate, b_rate = (sum(map(bool, tuned)) / n, sum(map(bool, base)) / n) if n else (0.0, 0.0)
    if n == 0:
        return Comparison(metric, "Tango score test (paired)", 0, 0.0, 0.0, 0.0, -1.0, 1.0, margin, 1.0, 1.0)
    z_crit = stats.norm.ppf(1 - alpha)
    eps = 1e-9

    def bound(target: float) -> float:
        # Z(delta) falls as delta rises; find where it equals `target` within (-1, 1).
        lo, hi = -1 + eps, 1 - eps
        if _tango_z(b, c, n, lo) < target:
            return -1.0
        if _tango_z(b, c, n, hi) > target:
            return 1.0
        return float(optimize.brentq(lambda d: _tango_z(b, c, n, d) - target, lo, hi, xtol=1e-12))

    z_margin = _tango_z(b, c, n, max(-margin, -1 + eps))
    return Comparison(
        metric,
        "Tango score test (paired)",
        n,
        t_rate,
        b_rate,
        (b - c) / n,
        bound(z_crit),
        bound(-z_crit),
        margin,
        float(stats.norm.cdf(z_margin)),
        float(stats.norm.sf(z_margin)),
    )


def welch_decrease(first: Sequence[float], last: Sequence[float], alpha: float = 0.01) -> tuple[float, float, float]:
    """One-sided Welch t-test (Welch 1947, Biometrika 34:28) that the mean of `last` is below the mean of
    `first`; returns (t statistic, p-value, the smallest decrease significant at alpha). Losses within a
    window vary by batch: that is the noise the decrease is measured against."""
    result = stats.ttest_ind(first, last, equal_var=False, alternative="greater")
    t, p = float(result.statistic), float(result.pvalue)
    if math.isnan(p):  # both windows constant: a decrease is certain if the means differ at all
        return ((math.inf, 0.0) if np.mean(first) > np.mean(last) else (0.0, 1.0)) + (0.0,)
    se = math.sqrt(np.var(first, ddof=1) / len(first) + np.var(last, ddof=1) / len(last))
    return t, p, float(stats.t.ppf(1 - alpha, result.df) * se)


@dataclass(frozen=True)
class BetaBinomialNull:
    """Per-insertion collapse counts of random controls, modelled as beta-binomial over `trials` prompts."""

    trials: int
    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    @property
    def rho(self) -> float:
        """Intra-class correlation: how much more alike one insertion's prompts are than independent draws."""
        return 1.0 / (self.a + self.b + 1.0)

    def p_at_least(self, k: int) -> float:
        """P(a random insertion collapses at least k prompts onto one target)."""
        if k <= 0:
            return 1.0
        return float(stats.betabinom.sf(k - 1, self.trials, self.a, self.b))

    def smallest_significant(self, level: float) -> int:
        """The smallest count whose tail probability is at most `level` (trials + 1 if none)."""
        for k in range(self.trials + 1):
            if self.p_at_least(k) <= level:
                return k
        return self.trials + 1


def fit_control_null(counts: Sequence[int], trials: int) -> BetaBinomialNull:
    """Maximum-likelihood beta-binomial fit of control counts (Griffiths 1973, Biometrics 29:637; the model
    of Williams 1975, Biometrics 31:949 for litters, here for insertions: outcomes on the prompts of one
    inserted string are correlated, so counts are over-dispersed against a binomial).

    One pseudo-control with a single collapsed prompt is added: with a few dozen controls, "no random
    insertion ever collapses" cannot be concluded, and without it an all-zero pool would make any
    collapse look impossible. scipy has no beta-binomial fit; the likelihood is maximised with its L-BFGS-B.
    """
    if trials <= 0:
        raise ValueError(f"a control null needs at least one prompt per insertion, got {trials}")
    data = np.asarray([*counts, 1], dtype=float)

    def negative_log_likelihood(params: np.ndarray) -> float:
        mean, rho = 1 / (1 + math.exp(-params[0])), 1 / (1 + math.exp(-params[1]))
        scale = (1 - rho) / rho
        return -float(np.sum(stats.betabinom.logpmf(data, trials, mean * scale, (1 - mean) * scale)))

    mean0 = min(max(data.mean() / trials, 1e-4), 1 - 1e-4)
    start = np.array([math.log(mean0 / (1 - mean0)), math.log(0.05 / 0.95)])
    fit = optimize.minimize(negative_log_likelihood, start, method="L-BFGS-B", bounds=[(-12, 12), (-12, 6)])
    mean, rho = 1 / (1 + math.exp(-fit.x[0])), 1 / (1 + math.exp(-fit.x[1]))
    scale = (1 - rho) / rho
    return BetaBinomialNull(trials, mean * scale, (1 - mean) * scale)
