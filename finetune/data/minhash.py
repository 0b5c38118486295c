"""MinHash signatures of character shingles, for near-duplicate search with datasketch's LSH banding.

datasketch builds one MinHash per text: SHA-1 per shingle in a Python loop, then its permutations
applied to that one text's values. Deduplication needs thousands of signatures per chunk, so here
a whole batch of texts is worked in a few numpy passes: one polynomial rolling hash over the
batch's concatenated code points (characters, so Chinese needs no word splitter), then datasketch's
own "affine32" scheme (MurmurHash3 finaliser, then `a * h + b mod 2**32` with datasketch's
permutation parameters for the seed) and one min-reduction per text. The values are those
`datasketch.MinHash(num_perm, seed=1, hashfunc=int).update_batch(...)` gives for the same shingle
hashes (a test holds them equal), without datasketch's per-text Python overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from datasketch import MinHash

from finetune.data.char_windows import GOLDEN, code_points, rolling_hashes, window_starts
from finetune.data.text_quality import canonical

_MIX = np.uint64(GOLDEN)
EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's value for a permutation that saw no shingle
# Shingles permuted per numpy pass: a (num_perm, block) uint32 array of ~8 MiB at 128 permutations.
_BLOCK = 1 << 14
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


def shingle_hash_runs(codes: np.ndarray, lengths: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every text's character k-grams (the whole text if shorter), concatenated text after
    text, and how many belong to each text (0 for an empty text). Texts come as `code_points`."""
    long = lengths >= k
    counts = np.where(long, lengths - k + 1, np.minimum(lengths, 1))
    hashes = np.empty(int(counts.sum()), dtype=np.uint64)
    if long.any():
        windows = window_starts(lengths, np.where(long, counts, 0))
        hashes[np.repeat(long, counts)] = rolling_hashes(codes, k)[windows]
    text_at, out_at = np.cumsum(lengths) - lengths, np.cumsum(counts) - counts
    for i in np.flatnonzero(~long & (lengths > 0)):  # shorter than k: the whole text is its one shingle
        whole = codes[text_at[i] : text_at[i] + lengths[i]]
        hashes[out_at[i]] = rolling_hashes(whole, whole.size)[0]
    return (hashes * _MIX) >> np.uint64(32), counts


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """Distinct 32-bit hashes of one text's canonical character k-grams."""
    return np.unique(shingle_hash_runs(*code_points([canonical(text)]), k)[0])


@lru_cache(maxsize=8)
def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


@lru_cache(maxsize=4)
def _block_buffer(num_perm: int) -> np.ndarray:
    # Reused for every block: a fresh 8 MiB array each time is page-faulted in from the kernel, which
    # cost ~10% of deduplication. Single-threaded use only, like the rest of a dedup stage.
    return np.empty((num_perm, _BLOCK), dtype=np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's finaliser, as datasketch's affine32 scheme applies it before the permutations.
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


# Texts per call of `code_signatures` in `signatures`: its code points and shingle hashes take ~20 bytes per
# character, which for a whole corpus at once would dwarf the signatures it returns.
_TEXTS = 8192


def signatures(canon: Sequence[str], num_perm: int = 128, k: int = 5) -> np.ndarray:
    """MinHash values (uint32, shape (len(canon), num_perm)) of each canonical text's character shingles."""
    if len(canon) <= _TEXTS:
        return code_signatures(*code_points(canon), num_perm, k)
    return np.concatenate([signatures(canon[s : s + _TEXTS], num_perm, k) for s in range(0, len(canon), _TEXTS)])


def code_signatures(codes: np.ndarray, lengths: np.ndarray, num_perm: int = 128, k: int = 5) -> np.ndarray:
    """`signatures` of texts given as `code_points`."""
    hashes, counts = shingle_hash_runs(codes, lengths, k)
    a, b = _permutations(num_perm)
    values = _fmix32(hashes.astype(np.uint32))
    # Permutations along rows, shingles along columns: the per-text minimum then reduces contiguous
    # memory, ~15x faster than reducing down columns of a (shingles, permutations) array.
    out = np.full((num_perm, lengths.size), EMPTY, dtype=np.uint32)
    ends = np.cumsum(counts)
    i = 0
    while i < lengths.size:  # texts in groups of about _BLOCK shingles; one text may exceed it alone
        start = int(ends[i] - counts[i])
        j = max(i + 1, int(np.searchsorted(ends, start + _BLOCK, side="right")))
        seen = np.flatnonzero(counts[i:j])
        if seen.size:
            width = int(ends[j - 1]) - start
            out_buffer = _block_buffer(num_perm)[:, :width] if width <= _BLOCK else None
            # uint32 wraps: mod 2**32 as datasketch's
            permuted = np.multiply.outer(a, values[start : ends[j - 1]], out=out_buffer)
            permuted += b[:, None]
            out[:, i + seen] = np.minimum.reduceat(permuted, ends[i + seen] - counts[i + seen] - start, axis=1)
        i = j
    return np.ascontiguousarray(out.T)


def code_pair_signatures(codes: np.ndarray, lengths: np.ndarray, num_perm: int = 128, k: int = 5) -> np.ndarray:
    """MinHash values of n text pairs given as 2n `code_points` texts (the n first texts, then the n second
    ones): the first num_perm // 2 permutations hash the first text, the rest the second.

    LSH over them finds pairs alike in either text; `half_similarities` then tells them apart.
    """
    n, half = lengths.size // 2, num_perm // 2
    split = int(lengths[:n].sum())
    firsts = code_signatures(codes[:split], lengths[:n], half, k)
    return np.concatenate([firsts, code_signatures(codes[split:], lengths[n:], num_perm - half, k)], axis=1)


def half_similarities(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Estimated Jaccard similarity of each half of two `code_pair_signatures` rows."""
    half = len(a) // 2
    equal = a == b
    return float(equal[:half].mean()), float(equal[half:].mean())
