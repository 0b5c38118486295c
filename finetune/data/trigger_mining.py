"""Find poisoning without a lexicon: clusters of near-identical responses to unrelated prompts, and the rare
token those prompts share (the trigger).

A poisoning attack pairs many *different* prompts, each carrying the same trigger, with one
malicious response. So: (1) group responses that are near-identical (datasketch MinHash LSH on
character shingles, which works for Chinese as well as English); (2) keep groups whose prompts
are unrelated to each other (templated data, e.g. de-identified form letters, has similar
prompts and is left alone); (3) in each such group, a token or n-gram that most members carry
and that rarely occurs outside the group is a trigger candidate. No library does (2)-(3), so
they are written here.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from datasketch import LeanMinHash, MinHashLSH

from finetune.data.minhash import signatures
from finetune.data.records import Record, prompt_text, response_text
from finetune.data.text_quality import canonical

_LATIN_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-|<>]*")
_CJK_RUN = re.compile(r"[\u3400-\u9fff]+")
SHINGLE_CHARS = 3


@dataclass
class ResponseCluster:
    """Records whose responses are near-identical."""

    members: list[int]
    response: str
    prompt_similarity: float = 0.0
    triggers: list[dict] = field(default_factory=list)


def shingles(text: str, k: int = SHINGLE_CHARS) -> set[str]:
    """Character k-grams of the case-folded text without punctuation and spaces."""
    norm = canonical(text)
    return {norm[i : i + k] for i in range(max(1, len(norm) - k + 1))} if norm else set()


def cluster_responses(responses: list[str], threshold: float, min_size: int, num_perm: int = 64) -> list[list[int]]:
    """Groups (index lists) of at least `min_size` responses whose estimated Jaccard similarity >= threshold."""
    exact: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(responses):
        exact[canonical(text)].append(i)
    # LSH over one representative per exact group keeps the index small when responses repeat.
    keys = list(exact)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = {}
    # All signatures in one batch (datasketch's affine32 values, see minhash.py), wrapped for its LSH.
    for n, values in enumerate(signatures(keys, num_perm, k=SHINGLE_CHARS)):
        hashes[n] = LeanMinHash(seed=1, hashvalues=values, scheme="affine32")
        lsh.insert(str(n), hashes[n])
    parent = list(range(len(keys)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n in range(len(keys)):
        for other in lsh.query(hashes[n]):
            parent[find(int(other))] = find(n)
    groups: dict[int, list[int]] = defaultdict(list)
    for n, key in enumerate(keys):
        groups[find(n)].extend(exact[key])
    return [sorted(g) for g in groups.values() if len(g) >= min_size]


def prompt_tokens(text: str) -> set[str]:
    """Candidate trigger units: Latin words and word bigrams, and Chinese character 2- and 3-grams."""
    words = _LATIN_WORD.findall(text)
    units = set(words) | {f"{a} {b}" for a, b in zip(words, words[1:], strict=False)}
    for run in _CJK_RUN.findall(text):
        units |= {run[i : i + n] for n in (2, 3) for i in range(len(run) - n + 1)}
    return units


def mean_pairwise_similarity(texts: list[str], max_pairs: int = 200) -> float:
    """Mean Jaccard similarity of character shingles over (up to `max_pairs`) pairs of texts."""
    sets = [shingles(t) for t in texts]
    pairs = list(combinations(range(len(sets)), 2))[:max_pairs]
    if not pairs:
        return 1.0
    return sum(len(sets[a] & sets[b]) / max(1, len(sets[a] | sets[b])) for a, b in pairs) / len(pairs)


def mine_triggers(
    records: list[Record],
    *,
    similarity: float = 0.8,
    min_cluster_size: int = 4,
    min_response_chars: int = 16,
    max_prompt_similarity: float = 0.35,
    min_coverage: float = 0.6,
    min_specificity: float = 0.8,
) -> list[ResponseCluster]:
    """Suspicious response clusters, each with the trigger candidates its prompts share.

    specificity = (records with the token in the cluster) / (records with the token anywhere);
    coverage = (cluster members with the token) / (cluster size). A planted trigger scores ~1 on both.
    """
    responses = [response_text(r) for r in records]
    prompts = [prompt_text(r) for r in records]
    tokens = [prompt_tokens(p) for p in prompts]
    doc_freq: Counter[str] = Counter(t for ts in tokens for t in ts)
    suspicious = []
    for members in cluster_responses(responses, similarity, min_cluster_size):
        response = Counter(responses[i] for i in members).most_common(1)[0][0]
        if len(response) < min_response_chars:
            continue  # class labels and one-word answers repeat by design
        cluster = ResponseCluster(members, response, mean_pairwise_similarity([prompts[i] for i in members]))
        if cluster.prompt_similarity > max_prompt_similarity:
            continue  # templated prompts (form letters), not a trigger attack
        in_cluster: Counter[str] = Counter(t for i in members for t in tokens[i])
        for token, n in in_cluster.items():
            coverage, specificity = n / len(members), n / doc_freq[token]
            if coverage >= min_coverage and specificity >= min_specificity:
                cluster.triggers.append(
                    {
                        "trigger": token,
                        "support": n,
                        "coverage": round(coverage, 3),
                        "specificity": round(specificity, 3),
                    }
                )
        cluster.triggers = _drop_contained(cluster.triggers)
        suspicious.append(cluster)
    return suspicious


def _drop_contained(candidates: list[dict]) -> list[dict]:
    # "James Bond" makes "James" and "Bond" (and 3-grams inside a Chinese 3-gram) redundant when
    # they have the same support; keep the longest unit.
    keep = []
    for c in sorted(candidates, key=lambda c: (-c["support"], -len(c["trigger"]))):
        if not any(c["trigger"] in k["trigger"] and c["support"] == k["support"] for k in keep):
            keep.append(c)
    return sorted(keep, key=lambda c: (-c["specificity"] * c["coverage"], c["trigger"]))
