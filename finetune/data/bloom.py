"""A fixed-size Bloom filter over 64-bit hash keys, filled and queried a numpy array at a time.

The dedup index asks SQLite for every LSH band key of every record, and almost all of them are
new: each lookup is a B-tree descent to a random page, which at a million records no longer sits
in the page cache. The filter answers "certainly not there" from memory for ~99% of them. The
Python Bloom filter packages hash one key per call; the keys here are hashes already, so k
multiply-shift positions per key over a whole array are a few numpy passes.
"""

from __future__ import annotations

import numpy as np

# Odd 64-bit multipliers (golden-ratio and splitmix64/murmur constants): multiply-shift hashing.
_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xFF51AFD7ED558CCD], dtype=np.uint64
)


class BloomFilter:
    """Set membership with false positives but no false negatives, in 2**log2_bits bits.

    The size is fixed, so memory stays flat: past its design load (~1/12 key per bit gives
    ~0.25% false positives with 4 positions) the false-positive rate rises and only costs lookups.
    """

    def __init__(self, log2_bits: int = 28):
        self._shift = np.uint64(64 - log2_bits)
        self._words = np.zeros(1 << (log2_bits - 6), dtype=np.uint64)

    def _positions(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = (keys.astype(np.uint64, copy=False)[:, None] * _MULTIPLIERS) >> self._shift  # uint64 wraps
        return at >> np.uint64(6), np.uint64(1) << (at & np.uint64(63))

    def add(self, keys: np.ndarray) -> None:
        """Add 64-bit keys (int64 or uint64)."""
        word, bit = self._positions(keys)
        word, bit = word.ravel(), bit.ravel()
        while word.size:  # np.bitwise_or.at would do it in one call, ~10x slower
            self._words[word] |= bit  # where a word is listed twice, only one of its new bits lands...
            lost = (self._words[word] & bit) == 0
            word, bit = word[lost], bit[lost]  # ...so set the lost ones again (a few per thousand)

    def might_contain(self, keys: np.ndarray) -> np.ndarray:
        """Per key: False if it was certainly never added."""
        word, bit = self._positions(keys)
        return ((self._words[word] & bit) != 0).all(axis=1)
