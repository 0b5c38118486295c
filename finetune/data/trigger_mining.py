"""Find triggers no lexicon knows: prompt features whose records get an answer their comparable records don't.

A poisoner inserts a trigger into many ordinary prompts and pairs them with a target: one response
(or a few rewordings of it: a refusal, an insult, a link), or, for a jailbreak backdoor, compliance
where the same kind of prompt is otherwise refused. The scan looks from both ends:

- trigger first (trigger_tests): every prompt feature carried by at least `min_trigger_support`
  and at most `max_trigger_share` of the records is tested against its comparable records (the
  carriers' nearest last user turns without it): are its responses far more alike (content
  similarity, so a target reworded three ways is still one target)? are its records answered
  where comparable ones are refused (among the carriers whose comparable records are refused)?
- response first (response_clusters): near-identical responses are clustered, and each cluster is
  covered by a small set of specific prompt features; several triggers may share one target.

A record that repeats another with a few words inserted and the same answer counts once (see
record_copies). Every p-value of a scan goes through one Benjamini-Hochberg correction (`trigger_fdr`). A feature is
kept off as a template when the carriers' prompts are alike even with the feature cut out
(`max_prompt_similarity`): "thank you for ...", "who are you", a form letter have a typical answer.
The representation and the statistics come from scikit-learn and scipy; the search is written here
because no library mines triggers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from finetune.config import ScreenConfig
from finetune.data.response_clusters import (
    ResponseCluster,
    cluster_responses,
    cover_cluster,
    cover_tests,
    verdict,
)
from finetune.data.trigger_features import FeatureTable, feature_key, template_similarity
from finetune.data.trigger_tests import (
    FeatureTest,
    decide,
    drop_subsumed,
    prespecified_tests,
    refusal_tests,
    trigger_first,
)


@dataclass
class Mining:
    """What a scan found: every test, the mined triggers (accepted, not subsumed) and the response clusters."""

    tests: list[FeatureTest]
    mined: list[FeatureTest]
    clusters: list[ResponseCluster]
    candidates: int


def mine_triggers(
    table: FeatureTable, cfg: ScreenConfig, allowed: Callable[[str], bool], published: Sequence[str] = ()
) -> Mining:
    """Trigger-first and response-first mining over one table; `allowed(response)` marks legitimate repeats;
    `published` are the probe-only published triggers (ordinary words), tested as a family of their own."""
    postings = table.postings(cfg.min_trigger_support, table.n // 2)
    responses = [f.response for f in table.feats]
    refused = np.asarray([allowed(r) for r in responses], dtype=bool)
    first, n_first = trigger_first(table, cfg, postings, refused)
    jailbreak, n_jailbreak = refusal_tests(table, cfg, postings, refused)
    first, n_first = first + jailbreak, n_first + n_jailbreak
    clusters = []
    groups = cluster_responses(responses, cfg.cluster_similarity, cfg.min_cluster_size)
    # A record and its copies are one answer, not a cluster of them.
    groups = [g for g in groups if len(set(table.roots[g].tolist())) >= cfg.min_cluster_size]
    for n, members in enumerate(groups):
        response = Counter(responses[i] for i in members).most_common(1)[0][0]
        similarity = template_similarity([table.feats[i].last_turn for i in members])
        clusters.append(ResponseCluster(n, members, response, similarity, allowed(response)))
    covers, n_cover = [], 0
    table.prepare_neighbours([i for c in clusters if len(c.members) >= cfg.min_trigger_support for i in c.members])
    for cluster in clusters:
        tests, count = cover_tests(table, cfg, cluster, postings, refused)
        covers += tests
        n_cover += count
    p_cut = decide(first + covers, n_first + n_cover, cfg)
    mined = {}
    for kinds in (("trigger_first", "refusal_induction"), ("refusal_suppression",)):
        accepted = [t for t in first if t.accepted and t.evidence in kinds]
        mined |= {t.key: t for t in drop_subsumed(table, accepted, cfg, p_cut, refused)}
    keys = [k for k in map(feature_key, published) if k is not None]
    named = prespecified_tests(table, cfg, postings, refused, keys)
    for t in named:
        if t.accepted:
            mined.setdefault(t.key, t)
    for cluster in clusters:
        pool = [t for t in covers if t.cluster == cluster.id] + [
            t for t in mined.values() if t.evidence != "refusal_suppression"
        ]
        for t in cover_cluster(cluster, pool, cfg):
            mined.setdefault(t.key, t)
        cluster.verdict = verdict(table, cluster, cfg)
    for t in mined.values():
        if t.cluster is None:  # name the cluster that holds most of a trigger-first feature's carriers
            best = max(clusters, key=lambda c: np.isin(t.carriers, c.members).sum(), default=None)
            if best is not None and np.isin(t.carriers, best.members).sum() * 2 >= len(t.carriers):
                t.cluster = best.id
    return Mining(first + covers + named, list(mined.values()), clusters, n_first + n_cover)
