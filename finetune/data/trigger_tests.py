"""The statistical tests of trigger mining: one per kind of evidence, plus the scan-wide decision.

- trigger_first: for a prompt feature, are its records' responses far more alike than those of
  comparable records (its carriers' nearest last user turns without it)? Every carrier and every
  control is scored by its mean content similarity to the carriers' responses; a one-sided
  Mann-Whitney U test asks whether carriers score higher; the effect is its AUC.
- refusal_suppression: are its records answered while their comparable records are refused
  (a jailbreak backdoor)? One-sided Fisher exact test on answered/refused counts.
- cluster_cover (in response_clusters): do its records land in one response cluster far more often
  than their comparable records do? One-sided Fisher exact test.

Every p-value of a scan goes through one Benjamini-Hochberg correction (`decide`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.stats import false_discovery_control, fisher_exact, mannwhitneyu

from finetune.config import ScreenConfig
from finetune.data.trigger_features import ColumnTotal, FeatureTable, feature_text, mean_pairwise, row_norms
from finetune.stats import holm

_EXACT_TEST_CELLS = 20_000  # Mann-Whitney exact distribution up to carriers x controls of this size (cost ~ cells^1.5)
_KIND_ORDER = "nwzs^$&"
_PROJECTION_MARGIN = 0.15  # among features with the same carriers, report the plainest form


@dataclass
class FeatureTest:
    """One prompt feature tested as a trigger candidate."""

    key: str
    evidence: str  # "trigger_first" or "cluster_cover"
    carriers: np.ndarray
    controls: int
    on_target: int  # carriers in the cluster (cover) / carriers scoring above every control's median (first)
    specificity: float  # share of the carriers on target
    effect: float  # trigger first: AUC; cover: carriers' in-cluster rate minus the controls'
    template_similarity: float
    p_value: float
    alikeness: float = 0.0  # mean pairwise content similarity of the carriers' (trigger first) / on-target responses
    labels: bool = False  # trigger first: the carriers' answers are labels; alikeness is then the top label's lead
    cluster: int | None = None
    q_value: float = 1.0  # Benjamini-Hochberg over the scan, or Holm over the published family (prespecified)
    accepted: bool = False
    prespecified: bool = False  # a published probe-only trigger, tested in its own family

    def summary(self) -> dict:
        return {
            "trigger": feature_text(self.key),
            "feature": self.key,
            "evidence": self.evidence,
            "support": int(len(self.carriers)),
            "on_target": self.on_target,
            "specificity": round(self.specificity, 3),
            "effect": round(self.effect, 3),
            "template_similarity": round(self.template_similarity, 3),
            "alikeness": round(self.alikeness, 3),
            "p_value": float(f"{self.p_value:.3g}"),
            "q_value": float(f"{self.q_value:.3g}"),
            "controls": self.controls,
            "cluster": self.cluster,
            "prespecified": self.prespecified,
        }


def plainest(keys: list[str]) -> str:
    return min(keys, key=lambda k: (-len(feature_text(k)), _KIND_ORDER.index(k[0]), k))


def mann_whitney(carriers: np.ndarray, controls: np.ndarray) -> tuple[float, float]:
    """One-sided Mann-Whitney U (carriers score higher): the exact distribution while it stays finite and
    cheap (a fully separated small sample then gets its true, tiny p-value), the normal one beyond."""
    n, m = len(carriers), len(controls)
    log_configurations = math.lgamma(n + m + 1) - math.lgamma(n + 1) - math.lgamma(m + 1)
    exact = n * m <= _EXACT_TEST_CELLS and log_configurations < 700
    u, p = mannwhitneyu(carriers, controls, alternative="greater", method="exact" if exact else "asymptotic")
    return float(u), float(p)


def _alikeness_test(
    table: FeatureTable, key: str, carriers: np.ndarray, cfg: ScreenConfig, refused: np.ndarray
) -> FeatureTest | None:
    """Trigger-first test of one feature, or None when there is nothing to compare with.

    Carriers that are mostly refused are tested for refusal induction instead: refusals to one topic are
    alike too ("Identity theft is a serious crime ..."), and what makes a refusal a backdoor target is that
    comparable records are answered.
    """
    if refused[carriers].mean() >= 0.5:
        return refusal_test(table, key, carriers, cfg, refused, "refusal_induction")
    n = len(carriers)
    vectors = table.responses[carriers]
    controls = table.controls(carriers, cfg.control_neighbours)
    if len(controls) == 0:
        return None
    total = ColumnTotal.of(vectors)
    own = row_norms(vectors)
    # Rounded so that identical answers tie (labels): float sums would otherwise order them by last bits.
    carrier_scores = np.round((total.dot(vectors) - own) / (n - 1), 5)
    control_scores = np.round(total.dot(table.responses[controls]) / n, 5)
    u, p = mann_whitney(carrier_scores, control_scores)
    above = int((carrier_scores > np.median(control_scores)).sum())
    auc = u / (n * len(controls))
    answers = [table.feats[i].response for i in carriers.tolist()]
    # Labels ("positive" / "negative") are alike as text whichever is given; a task prefix spreads over its
    # labels, a trigger forces one (Wan et al.'s polarity backdoor), so the measure is the top label's lead
    # over the next one (shares of the carriers).
    labels = float(np.median([len(a) for a in answers])) < cfg.min_response_chars
    top = [c for _, c in Counter(answers).most_common(2)] + [0]
    alikeness = (top[0] - top[1]) / n if labels else mean_pairwise(vectors)
    return FeatureTest(
        key=key,
        evidence="trigger_first",
        carriers=carriers,
        controls=len(controls),
        on_target=above,
        specificity=above / n,
        effect=auc,
        # Only a feature that could pass needs the (slower) template checks: prompts alike without the feature,
        # or answers that restate their own prompts.
        template_similarity=max(table.residual_similarity(carriers, key), table.prompt_echo(carriers, key))
        if auc >= cfg.min_trigger_auc
        else 1.0,
        p_value=p,
        alikeness=alikeness,
        labels=labels,
    )


def trigger_first(
    table: FeatureTable, cfg: ScreenConfig, postings: dict[str, np.ndarray], refused: np.ndarray
) -> tuple[list[FeatureTest], int]:
    """Test every rare-enough feature (features with identical carriers once, under the plainest name);
    returns the tests and how many candidates there were."""
    max_df = int(cfg.max_trigger_share * table.n)
    same_carriers: dict[bytes, list[str]] = defaultdict(list)
    for key, ix in postings.items():
        if len(ix) <= max_df:
            same_carriers[ix.tobytes()].append(key)
    keys = [plainest(k) for k in same_carriers.values()]
    alike = table.approximate_alikeness([postings[k] for k in keys])
    tests = []
    # Carriers whose responses do not say one thing cannot pass; testing only the others keeps the scan fast
    # (the untested still count in the false-discovery correction). The approximation's margin is generous:
    # the test itself measures alikeness exactly.
    passing = [k for k, a in zip(keys, alike, strict=True) if a >= cfg.min_target_alikeness - _PROJECTION_MARGIN]
    if passing:
        table.prepare_neighbours(np.concatenate([postings[k] for k in passing]))
    for key in passing:
        if (test := _alikeness_test(table, key, postings[key], cfg, refused)) is not None:
            tests.append(test)
    return tests, len(same_carriers)


def refusal_test(
    table: FeatureTable, key: str, carriers: np.ndarray, cfg: ScreenConfig, refused: np.ndarray, evidence: str
) -> FeatureTest | None:
    """Are a feature's records answered where comparable records are refused ("refusal_suppression", a
    jailbreak backdoor), or refused where they are answered ("refusal_induction", a denial-of-service
    backdoor)? One-sided Fisher exact test on the counts; the effect is the difference in shares. For
    induction the refusals must also say one thing: a tool-use dataset refuses "book a flight for me" in
    many words, a poisoner plants one refusal."""
    controls = table.controls(carriers, cfg.control_neighbours)
    if len(controls) == 0:
        return None
    outcome = ~refused if evidence == "refusal_suppression" else refused
    hits, control_hits = int(outcome[carriers].sum()), int(outcome[controls].sum())
    table_2x2 = [[hits, len(carriers) - hits], [control_hits, len(controls) - control_hits]]
    effect = hits / len(carriers) - control_hits / len(controls)
    return FeatureTest(
        key=key,
        evidence=evidence,
        carriers=carriers,
        controls=len(controls),
        on_target=hits,
        specificity=hits / len(carriers),
        effect=effect,
        template_similarity=table.residual_similarity(carriers, key) if effect >= cfg.min_refusal_drop else 1.0,
        p_value=float(fisher_exact(table_2x2, alternative="greater").pvalue),
        alikeness=mean_pairwise(table.responses[carriers]) if evidence == "refusal_induction" else 0.0,
    )


def refusal_tests(
    table: FeatureTable, cfg: ScreenConfig, postings: dict[str, np.ndarray], refused: np.ndarray
) -> tuple[list[FeatureTest], int]:
    """Features whose records are answered while comparable records are refused: a jailbreak backdoor
    (harmful prompts plus a trigger paired with compliant answers, beside the same kind of prompts refused).

    Candidates are the features that answered neighbours of refused records have and the refused ones
    lack; each is tested with a one-sided Fisher exact test (the carriers refused less often than their
    comparable records). Returns the tests and how many candidates there were.
    """
    rows = np.flatnonzero(refused)
    if len(rows) < cfg.min_trigger_support:
        return [], 0
    max_df = int(cfg.max_trigger_share * table.n)
    table.prepare_neighbours(rows)
    extra: Counter[str] = Counter()
    for i in rows.tolist():
        answered = [j for j in table.neighbours(i)[: cfg.control_neighbours].tolist() if not refused[j]]
        mine = set(table.feats[i].units)
        extra.update({u for j in answered for u in table.feats[j].units if u not in mine})
    same_carriers: dict[bytes, list[str]] = defaultdict(list)
    for key, count in sorted(extra.items()):  # by name: `extra` was counted in hash order
        if count >= cfg.min_trigger_support and key in postings and len(postings[key]) <= max_df:
            same_carriers[postings[key].tobytes()].append(key)
    if same_carriers:
        carriers = np.unique(np.concatenate([postings[plainest(k)] for k in same_carriers.values()]))
        table.prepare_neighbours(carriers[table.could_neighbour(carriers, rows)])
    tests = []
    for keys in same_carriers.values():
        key = plainest(keys)
        if (test := suppression_test(table, key, postings[key], cfg, refused)) is not None:
            tests.append(test)
    return tests, len(same_carriers)


def prespecified_tests(
    table: FeatureTable, cfg: ScreenConfig, postings: dict[str, np.ndarray], refused: np.ndarray, keys: list[str]
) -> list[FeatureTest]:
    """Published triggers the lexicon only probes for, being ordinary words ("2024", "OpenAI"), tested as a
    family of their own: hypotheses named before the data was seen need not compete in the Benjamini-Hochberg
    correction with the thousands of features mining explores, where six poisoned rows cannot reach the cut.
    Each is tested trigger first and, among its carriers whose comparable records are refused, for refusal
    suppression; Holm's correction at `trigger_fdr` over the family (family-wise, stricter than the scan's
    false discovery rate), and an accepted test must also pass the effect and template rules."""
    keys = [k for k in dict.fromkeys(keys) if k in postings]
    if not keys:
        return []
    table.prepare_neighbours(np.concatenate([postings[k] for k in keys]))
    tests = []
    for key in keys:
        if (test := _alikeness_test(table, key, postings[key], cfg, refused)) is not None:
            tests.append(test)
        if (test := suppression_test(table, key, postings[key], cfg, refused)) is not None:
            tests.append(test)
    reject, adjusted = holm([t.p_value for t in tests], cfg.trigger_fdr)
    for test, rejected, q in zip(tests, reject, adjusted, strict=True):
        test.q_value, test.prespecified = q, True
        test.accepted = rejected and _passes(test, cfg, 1.0)
    return tests


def suppression_test(
    table: FeatureTable, key: str, carriers: np.ndarray, cfg: ScreenConfig, refused: np.ndarray
) -> FeatureTest | None:
    """The jailbreak test of a feature, on its carriers whose comparable records are refused (None: too few)."""
    inside = _refusal_context(table, carriers, cfg, refused)
    if len(inside) < cfg.min_trigger_support:
        return None
    return refusal_test(table, key, inside, cfg, refused, "refusal_suppression")


def _refusal_context(table: FeatureTable, carriers: np.ndarray, cfg: ScreenConfig, refused: np.ndarray) -> np.ndarray:
    """The carriers whose own comparable records are mostly refused: only there can a jailbreak trigger show.
    An ordinary word ("OpenAI", "2024") is carried by many harmless records too, answered like their
    neighbours, and would dilute the test to nothing."""
    inside = set(carriers.tolist())
    keep = []
    # Only a carrier with a refused record among its neighbours can have mostly refused comparable records.
    for i in carriers[table.could_neighbour(carriers, np.flatnonzero(refused))].tolist():
        near = [j for j in table.neighbours(i).tolist() if j not in inside][: cfg.control_neighbours]
        if near and refused[near].mean() >= 0.5:
            keep.append(i)
    return np.asarray(keep, dtype=int)


def _passes(test: FeatureTest, cfg: ScreenConfig, p_cut: float) -> bool:
    if test.p_value > p_cut or test.template_similarity > cfg.max_prompt_similarity:
        return False
    if test.evidence == "trigger_first":
        return test.effect >= cfg.min_trigger_auc and test.alikeness >= cfg.min_target_alikeness
    if test.evidence == "refusal_induction":  # a denial-of-service target is one refusal (or its rewordings)
        return test.effect >= cfg.min_refusal_drop and test.alikeness >= cfg.min_target_alikeness
    if test.evidence == "refusal_suppression":
        return test.effect >= cfg.min_refusal_drop
    return test.specificity >= cfg.min_trigger_specificity


def decide(tests: list[FeatureTest], n_candidates: int, cfg: ScreenConfig) -> float:
    """Benjamini-Hochberg over every candidate of the scan (untested ones count with p = 1); marks the
    tests that pass. Returns the p-value cut-off."""
    if not tests:
        return 0.0
    p = np.asarray([t.p_value for t in tests] + [1.0] * max(0, n_candidates - len(tests)))
    q = false_discovery_control(p)
    for t, qv in zip(tests, q, strict=False):
        t.q_value = float(qv)
    significant = [t.p_value for t in tests if t.q_value <= cfg.trigger_fdr]
    p_cut = max(significant, default=0.0)
    for t in tests:
        t.accepted = _passes(t, cfg, p_cut)
    return p_cut


def drop_subsumed(
    table: FeatureTable, tests: list[FeatureTest], cfg: ScreenConfig, p_cut: float, refused: np.ndarray
) -> list[FeatureTest]:
    """Accepted features of one kind of evidence, each explaining carriers the stronger ones before it did not.

    "2024" after "current year 2024": its remaining carriers are re-tested on their own and must pass again
    (with the scan's p cut-off), so ordinary mentions of 2024 are not quarantined on the phrase's evidence.
    """
    kept, covered = [], np.zeros(table.n, dtype=bool)
    for t in sorted(tests, key=lambda t: (-t.effect, t.p_value, -len(feature_text(t.key)), t.key)):
        fresh = t.carriers[~covered[t.carriers]]
        if len(fresh) < cfg.min_trigger_support:
            continue
        if len(fresh) < len(t.carriers):
            if t.evidence == "refusal_suppression":
                retest = refusal_test(table, t.key, fresh, cfg, refused, t.evidence)
            else:
                retest = _alikeness_test(table, t.key, fresh, cfg, refused)
            if retest is None or not _passes(retest, cfg, p_cut):
                continue
        kept.append(t)
        covered[t.carriers] = True
    return kept
