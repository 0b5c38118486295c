"""MinHash signatures of character shingles, for near-duplicate search with datasketch's LSH.

datasketch hashes each shingle with SHA-1 in a Python loop, which costs more than the rest of
deduplication together; here all shingles of a text are hashed in one vectorised numpy pass
(a polynomial hash over Unicode code points, so Chinese needs no word splitter) and datasketch
applies its permutations to the resulting 32-bit values.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from datasketch import MinHash

from finetune.data.text_quality import canonical

_BASE = np.uint64(1_000_003)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """Distinct 32-bit hashes of the canonical text's character k-grams (the whole text if shorter)."""
    codes = np.frombuffer(canonical(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if codes.size == 0:
        return np.zeros(0, dtype=np.uint64)
    k = min(k, codes.size)
    n = codes.size - k + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(k):  # uint64 arithmetic wraps, which is what a rolling hash wants
        h = h * _BASE + codes[j : j + n]
    h = h * _MIX
    return np.unique(h >> np.uint64(32))


@lru_cache(maxsize=8)
def _sketch(num_perm: int) -> MinHash:
    # One MinHash per size, cleared and refilled for every text: building one (parsing its permutations)
    # costs as much as filling it. Not for concurrent use from threads; dedup runs in one thread.
    # hashfunc=int: the values are hashes already, and C-level int() keeps datasketch's per-item loop cheap.
    return MinHash(num_perm=num_perm, seed=1, hashfunc=int)


def signature(text: str, num_perm: int = 128, k: int = 5) -> np.ndarray:
    """MinHash values of a text's character shingles (datasketch's permutations, seed 1)."""
    sketch = _sketch(num_perm)
    sketch.clear()
    hashes = shingle_hashes(text, k)
    if hashes.size:
        sketch.update_batch(hashes.tolist())
    return sketch.hashvalues.copy()


def pair_signature(first: str, second: str, num_perm: int = 128, k: int = 5) -> np.ndarray:
    """MinHash values of two texts: the first half of the permutations hashes `first`, the second `second`.

    LSH over them finds pairs alike in either text; `half_similarities` then tells them apart.
    """
    half = num_perm // 2
    return np.concatenate([signature(first, half, k), signature(second, num_perm - half, k)])


def half_similarities(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Estimated Jaccard similarity of each half of two `pair_signature` value arrays."""
    half = len(a) // 2
    equal = a == b
    return float(equal[:half].mean()), float(equal[half:].mean())
