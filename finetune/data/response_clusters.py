"""Response-first mining: clusters of near-identical responses, the prompt features that cover them, and
what each cluster is (a backdoor target, a legitimate refusal or template, or unexplained repetition).

A cluster is covered by a small set of prompt features (single features, or combinations of two or
three for triggers made of common words, like SOS) that are specific to it (most of their carriers
are in it) and whose carriers land in it far more often than their comparable records do (one-sided
Fisher exact test). Several triggers may share one target. A cluster they cover is a backdoor target
as a whole; features that pass but cover only part of a big legitimate cluster (a label of a label task)
quarantine their own carriers and leave the rest. Clusters are found with MinHash LSH (datasketch's banding)
on character 3-grams, which works for Chinese as well as English.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from datasketch.lsh import _optimal_param
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.stats import fisher_exact

from finetune.config import ScreenConfig
from finetune.data.minhash import signatures
from finetune.data.text_quality import canonical
from finetune.data.trigger_features import FeatureTable, combination
from finetune.data.trigger_tests import FeatureTest, mann_whitney, plainest, refusal_test

SHINGLE_CHARS = 3
_COMBINATION_PARTS = 10  # most frequent in-cluster features combined into pairs and triples
# A cluster without a trigger is a templated answer when the records comparable to its members answer
# like it significantly more often than the rest do (one-sided Mann-Whitney p at most this).
_TYPICAL_ANSWER_P = 0.01
VERDICTS = {
    "backdoor_target": "mined triggers explain it: every member is quarantined",
    "unexplained": "one response to unrelated prompts whose comparable records answer otherwise: quarantined",
    "refusal": "a refusal (screen.cluster_allow) without a trigger: legitimate",
    "short_answer": "shorter than screen.min_response_chars (labels): legitimate",
    "templated_prompts": "its prompts are alike (screen.max_prompt_similarity): legitimate",
    "typical_answer": "comparable prompts get answers like it (greetings, identity, thanks): legitimate",
}


@dataclass
class ResponseCluster:
    """Records whose responses are near-identical, and what explains them."""

    id: int
    members: list[int]
    response: str
    prompt_similarity: float
    allowed: bool  # matches screen.cluster_allow (a refusal): never quarantined without a trigger
    cover: list[str] = field(default_factory=list)
    coverage: float = 0.0
    # Mined triggers carried by part of the cluster that do not explain the rest (a label task of which a
    # trigger forces one label): their carriers are quarantined, the cluster's other members are not.
    partial: list[str] = field(default_factory=list)
    typical_p: float | None = None  # see typical_answer; None when not tested
    verdict: str = ""  # one of VERDICTS

    @property
    def triggered(self) -> bool:
        return bool(self.cover)

    @property
    def quarantined(self) -> bool:
        return self.verdict in ("backdoor_target", "unexplained")


def cluster_responses(responses: list[str], threshold: float, min_size: int, num_perm: int = 64) -> list[list[int]]:
    """Groups (index lists) of at least `min_size` responses whose estimated Jaccard similarity >= threshold:
    the connected components of "shares an LSH band" (datasketch's banding for the threshold), in order of
    their first member, each sorted.

    The bands are grouped with numpy and joined with scipy's connected components rather than through
    datasketch's MinHashLSH, which builds a Python dict entry and set per response and band and is queried
    once per response, about half of this function's time (benchmarks/cluster_benchmark.py, which also
    checks that the components are MinHashLSH's, as tests/test_poisoning.py does). One difference: from a
    threshold of ~0.96 up datasketch's banding has a single band, which MinHashLSH refuses; here it means what
    it says, responses whose whole signatures are equal.
    """
    exact: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(responses):
        exact[canonical(text)].append(i)
    # Bands over one representative per exact group keep the work small when responses repeat.
    keys = list(exact)
    if not keys:
        return []
    values = signatures(keys, num_perm, k=SHINGLE_CHARS)
    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    heads, tails = [], []
    for band in range(bands):
        _, bucket = np.unique(values[:, band * rows : (band + 1) * rows], axis=0, return_inverse=True)
        first = np.full(bucket.max() + 1, len(keys), dtype=np.int64)
        np.minimum.at(first, bucket.ravel(), np.arange(len(keys)))
        heads.append(first[bucket.ravel()])  # every key joined to its bucket's first key
        tails.append(np.arange(len(keys)))
    graph = sparse.coo_matrix(
        (np.ones(bands * len(keys), dtype=np.int8), (np.concatenate(heads), np.concatenate(tails))),
        shape=(len(keys), len(keys)),
    )
    _, label = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = defaultdict(list)
    for n, key in enumerate(keys):  # components in order of their first key, as the input orders them
        groups[int(label[n])].extend(exact[key])
    return [sorted(g) for g in groups.values() if len(g) >= min_size]


def _cluster_candidates(table: FeatureTable, members: list[int], cfg, postings) -> dict[str, np.ndarray]:
    """In-cluster features with enough support, and combinations of the most frequent unspecific ones."""
    counts = Counter(u for i in members for u in table.feats[i].units if u in postings)
    # Most frequent first, ties by name: counting follows the feature sets' hash order, which differs from
    # process to process, and the cut below must not.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    single = {u: postings[u] for u, c in ranked if c >= cfg.min_trigger_support}
    inside = np.asarray(members)
    frequent = [u for u, c in ranked if c >= len(members) / 2 and c / len(postings[u]) < cfg.min_trigger_specificity][
        :_COMBINATION_PARTS
    ]
    found = dict(single)
    for size in (2, 3):
        for parts in combinations(frequent, size):
            carriers = postings[parts[0]]
            for p in parts[1:]:
                carriers = np.intersect1d(carriers, postings[p], assume_unique=True)
            if np.isin(carriers, inside, assume_unique=True).sum() >= cfg.min_trigger_support:
                found[combination(list(parts))] = carriers
    return found


def cover_tests(
    table: FeatureTable,
    cfg: ScreenConfig,
    cluster: ResponseCluster,
    postings: dict[str, np.ndarray],
    refused: np.ndarray,
) -> tuple[list[FeatureTest], int]:
    """Candidate features of one cluster tested against their comparable records (Fisher exact test);
    returns the tests and how many candidates there were. In a refusal cluster the test is whether the
    carriers are refused where comparable records are answered (refusals to one harmful topic are alike)."""
    members = np.asarray(cluster.members)
    if len(members) < cfg.min_trigger_support:
        return [], 0  # no feature can have enough support inside it
    same_carriers: dict[bytes, list[str]] = defaultdict(list)
    candidates = _cluster_candidates(table, cluster.members, cfg, postings)
    for key, ix in candidates.items():
        same_carriers[ix.tobytes()].append(key)
    tests = []
    for keys in same_carriers.values():
        key = plainest(keys)
        carriers = candidates[key]
        hit = carriers[np.isin(carriers, members, assume_unique=True)]
        specificity = len(hit) / len(carriers)
        if specificity < cfg.min_trigger_specificity:
            continue
        if cluster.allowed:
            if (test := refusal_test(table, key, carriers, cfg, refused, "refusal_induction")) is not None:
                test.cluster = cluster.id
                tests.append(test)
            continue
        controls = table.controls(hit, cfg.control_neighbours)
        controls_in = int(np.isin(controls, members).sum())
        table_2x2 = [[len(hit), len(carriers) - len(hit)], [controls_in, len(controls) - controls_in]]
        p = float(fisher_exact(table_2x2, alternative="greater").pvalue) if len(controls) else 1.0
        tests.append(
            FeatureTest(
                key=key,
                evidence="cluster_cover",
                carriers=carriers,
                controls=len(controls),
                on_target=len(hit),
                specificity=specificity,
                effect=specificity - controls_in / max(1, len(controls)),
                template_similarity=table.residual_similarity(hit, key),
                p_value=p,
                cluster=cluster.id,
            )
        )
    return tests, len(same_carriers)


def cover_cluster(cluster: ResponseCluster, tests: list[FeatureTest], cfg: ScreenConfig) -> list[FeatureTest]:
    """Greedy set cover of the cluster by its accepted features (at most `max_cover_features`).

    Returns the chosen features whether or not they cover `min_trigger_coverage` of the cluster: each passed
    its own test (specific to the cluster, rare elsewhere, far more often in it than comparable records), so
    its carriers are quarantined either way. Only a covered cluster is a backdoor target as a whole; a big
    legitimate cluster (a label, a template) keeps the members that carry none of them."""
    inside, covered, chosen = set(cluster.members), set(), []
    pool = [t for t in tests if t.accepted]
    while pool and len(chosen) < cfg.max_cover_features:
        best = max(pool, key=lambda t: (len(inside.intersection(t.carriers.tolist()) - covered), t.specificity))
        gain = inside.intersection(best.carriers.tolist()) - covered
        if len(gain) < cfg.min_trigger_support:
            break
        chosen.append(best)
        covered |= gain
        pool.remove(best)
    cluster.coverage = len(covered) / len(cluster.members)
    covered_enough = cluster.coverage >= cfg.min_trigger_coverage
    cluster.cover = [t.key for t in chosen] if covered_enough else []
    cluster.partial = [] if covered_enough else [t.key for t in chosen]
    return chosen


def typical_answer(table: FeatureTable, cluster: ResponseCluster, cfg: ScreenConfig) -> float:
    """p-value of "the members' comparable records answer more like the cluster than all other records do"
    (their response similarity to the cluster's, one-sided Mann-Whitney U)."""
    members = np.asarray(cluster.members)
    centroid = np.asarray(table.responses[members].sum(axis=0)).ravel()
    centroid /= max(1e-9, float(np.linalg.norm(centroid)))
    controls = table.controls(members, cfg.control_neighbours)
    rest = np.setdiff1d(np.arange(table.n), np.concatenate([members, controls]))
    if len(controls) == 0 or len(rest) == 0:
        return 1.0
    scores = table.responses @ centroid
    return mann_whitney(scores[controls], scores[rest])[1]


def verdict(table: FeatureTable, cluster: ResponseCluster, cfg: ScreenConfig) -> str:
    if cluster.triggered:
        return "backdoor_target"
    if cluster.allowed:
        return "refusal"
    if len(cluster.response) < cfg.min_response_chars:
        return "short_answer"
    if cluster.prompt_similarity > cfg.max_prompt_similarity:
        return "templated_prompts"
    cluster.typical_p = typical_answer(table, cluster, cfg)
    return "typical_answer" if cluster.typical_p <= _TYPICAL_ANSWER_P else "unexplained"
