"""Response clustering (the screen's response-first mining) beside datasketch's MinHashLSH, on the same responses.

    python benchmarks/cluster_benchmark.py [--n 20000] [--threshold 0.8]

The responses are the whole-chain benchmark's Faker answers (`chain_benchmark.write_input`, 10% exact and 10%
near duplicates, 10% with PII). `datasketch_clusters` is what `cluster_responses` computed before it grouped
the LSH bands itself: the same signatures inserted into a `MinHashLSH`, the union of every query's
candidates. The script prints each one's seconds and the peak of Python memory it allocates (tracemalloc),
the same for the MinHash signatures both start from, and checks the clusters are equal; tests/test_poisoning.py
checks the equality on generated inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune.data.minhash import signatures  # noqa: E402
from finetune.data.response_clusters import SHINGLE_CHARS, cluster_responses  # noqa: E402
from finetune.data.text_quality import canonical  # noqa: E402


def datasketch_clusters(responses: list[str], threshold: float, min_size: int, num_perm: int = 64) -> list[list[int]]:
    """Clusters as datasketch's MinHashLSH finds them, over one representative per exact response."""
    from datasketch import LeanMinHash, MinHashLSH

    exact: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(responses):
        exact[canonical(text)].append(i)
    keys = list(exact)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = [LeanMinHash(seed=1, hashvalues=v, scheme="affine32") for v in signatures(keys, num_perm, SHINGLE_CHARS)]
    for n, h in enumerate(hashes):
        lsh.insert(n, h)
    parent = list(range(len(keys)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for n, h in enumerate(hashes):
        for other in lsh.query(h):
            parent[find(other)] = find(n)
    groups: dict[int, list[int]] = defaultdict(list)
    for n, key in enumerate(keys):
        groups[find(n)].extend(exact[key])
    return [sorted(g) for g in groups.values() if len(g) >= min_size]


def _measure(fn, *args) -> tuple[list[list[int]], float, float]:
    """Result, seconds and peak MiB; timed in a run of its own, as tracing slows every allocation."""
    started = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--min-size", type=int, default=3)
    args = parser.parse_args()
    from chain_benchmark import write_input

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.jsonl"
        write_input(path, args.n, 0.1, 0)
        responses = [json.loads(line)["output"] for line in path.open(encoding="utf-8")]
    print(f"{'method':24} {'seconds':>8} {'peak MiB':>9} {'clusters':>9}")
    distinct = list(dict.fromkeys(map(canonical, responses)))
    _, seconds, peak = _measure(signatures, distinct, 64, SHINGLE_CHARS)
    print(f"{'(signatures, in both)':24} {seconds:>8.2f} {peak:>9.1f}", flush=True)
    results = []
    for name, fn in (("datasketch MinHashLSH", datasketch_clusters), ("cluster_responses", cluster_responses)):
        clusters, seconds, peak = _measure(fn, responses, args.threshold, args.min_size)
        results.append(clusters)
        print(f"{name:24} {seconds:>8.2f} {peak:>9.1f} {len(clusters):>9}", flush=True)
    print(f"\n{len(responses):,} responses; clusters equal: {results[0] == results[1]}")


if __name__ == "__main__":
    main()
