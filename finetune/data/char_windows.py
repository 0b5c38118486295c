"""Hashes of every k-character window of many texts at once, in numpy.

Near-duplicate shingles and the repeated n-gram rule both look at every k characters of every
text. A Python loop slicing substrings costs ~0.1 µs a window; here a batch of texts becomes one
array of code points and each window's polynomial hash is k vectorised passes over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_BASE = np.uint64(1_000_003)


def code_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The texts' code points concatenated (uint64, ready for hashing) and each text's length."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return codes, lengths


def rolling_hashes(codes: np.ndarray, k: int) -> np.ndarray:
    """64-bit hash of the k code points starting at each position (codes.size - k + 1 of them)."""
    n = codes.size - k + 1
    h = np.zeros(max(n, 0), dtype=np.uint64)
    for j in range(k):  # uint64 arithmetic wraps, which is what a polynomial hash wants
        h *= _BASE  # in place: a new multi-MB array per pass costs page faults, not arithmetic
        h += codes[j : j + n]
    return h


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions start, start + 1, ... of each (start, length) range, one range after the other."""
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))


def window_starts(lengths: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions in the concatenation of the first counts[i] windows of each text i (texts laid end to end).

    Windows that would cross into the next text are simply not listed, which is cheaper than masking them.
    """
    return ranges(np.cumsum(lengths) - lengths, counts)


@lru_cache(maxsize=1)
def _bmp_alnum() -> np.ndarray:
    return np.array([chr(c).isalnum() for c in range(0x10000)], dtype=bool)


def alnum_only(codes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The code points that are letters or digits (str.isalnum, what the regex [^\\W_] keeps), and the new lengths.

    One table lookup for the whole batch instead of a regex substitution per text.
    """
    keep = np.zeros(codes.size, dtype=bool)
    bmp = codes < 0x10000
    keep[bmp] = _bmp_alnum()[codes[bmp]]
    if not bmp.all():  # emoji, rare CJK: look the few distinct ones up one by one
        astral = codes[~bmp]
        distinct = np.unique(astral)
        alnum = np.array([chr(int(c)).isalnum() for c in distinct], dtype=bool)
        keep[~bmp] = alnum[np.searchsorted(distinct, astral)]
    owner = np.repeat(np.arange(lengths.size), lengths)
    return codes[keep], np.bincount(owner[keep], minlength=lengths.size).astype(np.int64)


GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / the golden ratio: the odd multiplier of Fibonacci hashing


def word_gram_buckets(texts: Sequence[str], sizes: Sequence[int], bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Every character n-gram (n in `sizes`) inside the space-padded, lower-cased words of each text, as
    (text index, bucket in [0, 2**bits)) pairs: the n-grams of scikit-learn's `char_wb` analyzer, hashed.

    scikit-learn builds one Python string per n-gram and hashes each with murmurhash, most of trigger mining's
    vectorising time; here the padded words of all texts are one array and each size is one vectorised pass.
    An n-gram's bucket is its polynomial hash (with n mixed in) scaled into `bits` bits: a different hash from
    murmurhash, so the buckets that collide differ, nothing else.
    """
    # " w1 " + " w2 " = " w1  w2 ": two spaces in a row occur only between two padded words (or texts).
    padded = [" " + "  ".join(words) + " " if (words := t.lower().split()) else "" for t in texts]
    codes, lengths = code_points(padded)
    owner = np.repeat(np.arange(lengths.size), lengths)
    gaps = np.concatenate([[0], np.cumsum((codes[:-1] == 32) & (codes[1:] == 32))]) if codes.size else codes
    rows, buckets = [], []
    for n in sizes:
        if codes.size < n:
            continue
        starts = np.flatnonzero(gaps[n - 1 :] == gaps[: codes.size - n + 1])  # no word boundary inside
        h = rolling_hashes(codes, n)[starts]
        h += np.uint64(n * GOLDEN % 2**64)
        h *= np.uint64(GOLDEN)
        rows.append(owner[starts])
        buckets.append((h >> np.uint64(64 - bits)).astype(np.int64))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(buckets)
