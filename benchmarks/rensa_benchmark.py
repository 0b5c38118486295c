"""MinHash signatures: ours (numpy, `minhash.code_signatures`) beside rensa's R-MinHash, same shingles, same texts.

    pip install rensa   # not a dependency: this script decides whether it should be one
    python benchmarks/rensa_benchmark.py [--n 100000] [--num-perm 128]

The texts are the curation benchmark's records (`curate_benchmark.generate`: Chinese and English, 10% exact
and 10% near duplicates whose true 5-shingle Jaccard with their original is >= 0.8 on prompt and
response). Both start from the texts' code points and the same shingle hashes (`minhash.shingle_hash_runs`, also timed
alone): ours is `minhash.code_signatures`, as the dedup stage runs it, which permutes them in numpy; rensa
takes the flat hash buffer (`RMinHash.digest_matrix_from_flat_token_hashes`, its bulk path without a Python
object per text) and its rows come back as a numpy matrix. It prints CPU seconds per method, and on the
near-duplicate pairs the error of each estimate against the true Jaccard and the share whose estimate
reaches the threshold (the recall the dedup stage's verification step could have; LSH banding is the same
for both).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune.data.char_windows import code_points  # noqa: E402
from finetune.data.minhash import code_signatures, shingle_hash_runs  # noqa: E402

K = 5


def ours(codes: np.ndarray, lengths: np.ndarray, num_perm: int) -> np.ndarray:
    """What the dedup stage runs: shingle hashes, then their permutations in numpy."""
    return code_signatures(codes, lengths, num_perm, K)


def rensa_digests(hashes: np.ndarray, counts: np.ndarray, num_perm: int):
    """rensa's digest matrix of texts given as their shingle hashes, concatenated, and counts per text."""
    from rensa import RMinHash

    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
    return RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, 42)


def theirs(codes: np.ndarray, lengths: np.ndarray, num_perm: int) -> np.ndarray:
    """The same shingle hashes, permuted by rensa, as a numpy matrix like ours."""
    return np.asarray(rensa_digests(*shingle_hash_runs(codes, lengths, K), num_perm).to_rows())


def _cpu(fn, *args):
    started = time.process_time()
    result = fn(*args)
    return result, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--num-perm", type=int, default=128, help="per half: dedup.num_perm 256 is 128 each")
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    from curate_benchmark import generate

    rows, truth = generate(args.n, 0.1, 0.1, args.threshold)
    texts = [r["output"] for r in rows]
    codes, lengths = code_points(texts)
    (hashes, counts), shingle_cpu = _cpu(shingle_hash_runs, codes, lengths, K)
    near = [
        (line - 1, orig - 1) for line, orig in truth.items() if rows[line - 1]["output"] != rows[orig - 1]["output"]
    ]
    near = [(i, j) for i, j in near if not rows[i]["output"].endswith("!")]  # exact-duplicate variants add "!"
    starts = np.cumsum(counts) - counts
    sets = {i: set(hashes[starts[i] : starts[i] + counts[i]].tolist()) for pair in near for i in pair}
    true = np.array([len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in near])
    print(
        f"{len(texts):,} responses, {len(near):,} near-duplicate pairs; shingle hashes alone: {shingle_cpu:.2f} CPU s"
    )
    print(f"{'method':22} {'CPU s':>7} {'mean |est-true|':>16} {'est >= thr':>11}")
    for name, fn in (("ours (numpy)", ours), ("rensa R-MinHash", theirs)):
        sig, cpu = _cpu(fn, codes, lengths, args.num_perm)
        i, j = np.array(near).T
        est = (sig[i] == sig[j]).mean(axis=1)
        print(
            f"{name:22} {cpu:>7.2f} {np.abs(est - true).mean():>16.4f} {(est >= args.threshold).mean():>11.3f}",
            flush=True,
        )
    _, cpu = _cpu(rensa_digests, hashes, counts, args.num_perm)
    print(f"{'rensa, digests only':22} {cpu:>7.2f}   (given the hashes; without `to_rows`, its one way out)")
    print(f"(true Jaccard >= {args.threshold} for {(true >= args.threshold).mean():.3f} of the pairs)")


if __name__ == "__main__":
    main()
