"""What the experts said, in numbers: per-criterion means with bootstrap intervals, win/tie/loss of tuned
against each other arm, agreement between raters, and items per rater.

Items are the independent unit: several raters judging one item are not independent draws, so every
interval and test resamples or counts items, after averaging (scores) or voting (preferences) over raters.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from finetune.eval.predictions import ARMS
from finetune.review.criteria import CRITERION_KEYS
from finetune.review.judgements import ArmJudgement

TUNED = ARMS[0]
OPPONENTS = ARMS[1:]  # base, base+prompt


@dataclass(frozen=True)
class ScoreInterval:
    """Mean of the item-level means and its percentile bootstrap interval (None with fewer than 2 items)."""

    mean: float
    low: float | None
    high: float | None
    n_items: int


@dataclass(frozen=True)
class Preference:
    """Tuned vs one other arm, item by item: a win when more raters ranked tuned above it than below."""

    wins: int
    ties: int
    losses: int
    p_value: float  # one-sided exact sign test of wins vs losses (ties dropped)

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def rates(self) -> dict[str, float]:
        n = self.n or 1
        return {"win": self.wins / n, "tie": self.ties / n, "loss": self.losses / n}


@dataclass
class ReviewSummary:
    """The expert review of one packet; empty numbers while nobody has judged it yet."""

    packet_id: str
    n_items: int
    items_judged: int = 0
    judgements: int = 0
    items_per_rater: dict[str, int] = field(default_factory=dict)
    criteria: dict[str, dict[str, ScoreInterval]] = field(default_factory=dict)  # arm -> criterion -> interval
    preferences: dict[str, Preference] = field(default_factory=dict)  # opponent arm -> tuned vs it
    agreement: dict[str, float | None] = field(default_factory=dict)  # criterion / "ranking" -> alpha
    confidence: float = 0.95
    key_sha256: str = ""  # which key unblinded the judgements (the key itself stays private)
    notes: list[str] = field(default_factory=list)  # where judgements came from, what was unreachable
    problems: list[str] = field(default_factory=list)  # annotations that could not be used, and why
    chart_png: str = ""

    @property
    def raters(self) -> int:
        return len(self.items_per_rater)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["preferences"] = {arm: asdict(p) | {"rates": p.rates()} for arm, p in self.preferences.items()}
        return out

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> ReviewSummary:
        """The summary an asset stored as JSON (`to_dict`'s output; asset values are never pickles)."""
        criteria = {
            arm: {name: ScoreInterval(**interval) for name, interval in by_criterion.items()}
            for arm, by_criterion in value.get("criteria", {}).items()
        }
        preferences = {
            arm: Preference(**{k: v for k, v in p.items() if k != "rates"})
            for arm, p in value.get("preferences", {}).items()
        }
        return cls(**(value | {"criteria": criteria, "preferences": preferences}))


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact binomial sign test: P(at least `wins` of wins+losses under p = 0.5). It is the release
    gates' exact McNemar test (finetune.stats), with items' wins and losses as the discordant pairs."""
    from finetune.stats import mcnemar_greater

    return mcnemar_greater(wins, losses)


def score_interval(values: list[float], confidence: float, resamples: int, seed: int) -> ScoreInterval:
    """Mean and percentile bootstrap interval (scipy.stats.bootstrap) of item-level means."""
    from scipy.stats import bootstrap

    mean = float(np.mean(values))
    if len(values) < 2:
        return ScoreInterval(mean, None, None, len(values))
    if len(set(values)) == 1:  # every resample has the same mean; scipy warns and returns the point
        return ScoreInterval(mean, mean, mean, len(values))
    ci = bootstrap(
        (np.asarray(values),),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return ScoreInterval(mean, float(ci.low), float(ci.high), len(values))


def preference(judged: list[ArmJudgement], opponent: str) -> Preference:
    """Item-level votes of tuned vs `opponent` from the rankings, and the sign test p-value."""
    votes: Counter[str] = Counter()
    for j in judged:
        votes[j.item_id] += (j.rank[opponent] > j.rank[TUNED]) - (j.rank[opponent] < j.rank[TUNED])
    wins, losses = sum(v > 0 for v in votes.values()), sum(v < 0 for v in votes.values())
    return Preference(wins, sum(v == 0 for v in votes.values()), losses, sign_test(wins, losses))


def krippendorff_alpha(judged: list[ArmJudgement], value) -> float | None:
    """Ordinal Krippendorff's alpha over (item, arm) units; None when it is undefined (one rater, no pairs,
    or a single value used throughout)."""
    import krippendorff

    raters = sorted({j.rater for j in judged})
    units = sorted({(j.item_id, arm) for j in judged for arm in ARMS})
    if len(raters) < 2:
        return None
    data = np.full((len(raters), len(units)), np.nan)
    col = {u: i for i, u in enumerate(units)}
    for j in judged:
        for arm in ARMS:
            data[raters.index(j.rater), col[(j.item_id, arm)]] = value(j, arm)
    pairable = (~np.isnan(data)).sum(axis=0) >= 2
    if not pairable.any() or len(np.unique(data[:, pairable][~np.isnan(data[:, pairable])])) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def summarize(
    packet_id: str, n_items: int, judged: list[ArmJudgement], confidence: float, resamples: int, seed: int
) -> ReviewSummary:
    """Every number of the expert review of one packet."""
    summary = ReviewSummary(packet_id, n_items, confidence=confidence)
    if not judged:
        return summary
    summary.judgements = len(judged)
    summary.items_judged = len({j.item_id for j in judged})
    summary.items_per_rater = dict(sorted(Counter(j.rater for j in judged).items()))
    for arm in ARMS:
        summary.criteria[arm] = {}
        for criterion in CRITERION_KEYS:
            per_item: dict[str, list[int]] = defaultdict(list)
            for j in judged:
                per_item[j.item_id].append(j.scores[arm][criterion])
            means = [float(np.mean(v)) for _, v in sorted(per_item.items())]
            summary.criteria[arm][criterion] = score_interval(means, confidence, resamples, seed)
    summary.preferences = {arm: preference(judged, arm) for arm in OPPONENTS}
    summary.agreement = {c: krippendorff_alpha(judged, lambda j, arm, c=c: j.scores[arm][c]) for c in CRITERION_KEYS}
    summary.agreement["ranking"] = krippendorff_alpha(judged, lambda j, arm: j.rank[arm])
    return summary
