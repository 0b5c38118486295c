"""The dedup index of kept records (exact keys, MinHash LSH bands, signatures) in a SQLite file.

datasketch's MinHashLSH keeps its buckets in Python dicts (~5 KB per indexed record at 256
permutations, 3-4 GB for a million) or in a Redis/Cassandra server; neither keeps one local
process flat. Here the tables live in a temporary SQLite file with a fixed page cache, queried
and filled a chunk of records at a time, so memory does not grow with the dataset. The banding
(b bands of r rows) is datasketch's own optimum for the threshold, as MinHashLSH would choose.

Band keys are random, so each one SQLite inserts or looks up lands on a random page, which stops
being cached once the table outgrows the page cache (~17 keys per kept record). Two things keep
that cost from growing with the dataset: new band rows wait in memory (sorted numpy arrays, a few
MB) and go to SQLite every PENDING_CHUNKS chunks in one sorted pass, which touches each page
once; and a fixed-size Bloom filter of every indexed key skips the lookups that cannot find anything.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from datasketch.lsh import _optimal_param

from finetune.data.bloom import BloomFilter
from finetune.data.char_windows import GOLDEN

_BASE = np.uint64(0x100000001B3)
_MIX = np.uint64(GOLDEN)
_PARAMS = 900  # bound parameters per IN (...) query, under SQLite's limit
SIGNATURE_DTYPE = np.uint32  # datasketch's hash values are < 2**32
PENDING_CHUNKS = 16  # chunks of band rows held back (~35k rows, 0.5 MB each) before one sorted write
LARGEST_GROUPS = 5  # duplicate groups a report names
_WRITE_ROWS = 1 << 16  # band rows per executemany: bounds the Python ints a write makes at once


def _in_batches(values: Sequence, size: int = _PARAMS) -> Iterable[Sequence]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band of each signature row: shape (n, bands), signed for SQLite.

    A key collision only adds a candidate, and candidates are verified against their signature.
    """
    n = signatures.shape[0]
    values = signatures[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    keys = np.zeros((n, bands), dtype=np.uint64)
    for j in range(rows):  # uint64 arithmetic wraps, as a hash wants
        keys = keys * _BASE + values[:, :, j]
    keys ^= (np.arange(bands, dtype=np.uint64) + np.uint64(1)) * _MIX  # band 3's key is not band 4's
    keys *= _MIX
    return keys.view(np.int64)


class DuplicateIndex:
    """What deduplication remembers about kept records, on disk; rows are numbered in keep order."""

    def __init__(self, threshold: float, num_perm: int, folder: Path | None = None, cache_mib: int = 64):
        self.bands, self.rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
        self._tmp = tempfile.TemporaryDirectory(prefix="finetune-dedup-", dir=folder)
        self.db = sqlite3.connect(Path(self._tmp.name) / "index.sqlite")
        # A scratch index rebuilt by every run: durability would only cost time.
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", f"cache_size=-{cache_mib * 1024}"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(
            """
            CREATE TABLE kept (row INTEGER PRIMARY KEY, id TEXT NOT NULL, signature BLOB, duplicates INTEGER DEFAULT 0);
            CREATE TABLE exact (key BLOB PRIMARY KEY, row INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE band (key INTEGER NOT NULL, row INTEGER NOT NULL, PRIMARY KEY (key, row)) WITHOUT ROWID;
            """
        )
        self.size = 0
        self._kept: list[tuple] = []
        self._exact: list[tuple] = []
        self._band_rows: list[int] = []
        self._band_keys: list[np.ndarray] = []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, their rows) per chunk
        self._seen_bands = BloomFilter()

    def exact_rows(self, keys: Sequence[bytes]) -> dict[bytes, int]:
        """Kept rows by exact-duplicate key, for the keys already indexed."""
        found: dict[bytes, int] = {}
        for part in _in_batches(list(set(keys))):
            marks = ",".join("?" * len(part))
            found.update(self.db.execute(f"SELECT key, row FROM exact WHERE key IN ({marks})", part))
        return found

    def band_rows(self, keys: np.ndarray) -> dict[int, list[int]]:
        """Kept rows sharing a band key, for the keys already indexed (flushed, written or pending)."""
        wanted = np.unique(keys)
        wanted = wanted[self._seen_bands.might_contain(wanted)]
        found: dict[int, list[int]] = {}
        for part in _in_batches(wanted.tolist()):
            marks = ",".join("?" * len(part))
            for key, row in self.db.execute(f"SELECT key, row FROM band WHERE key IN ({marks})", part):
                found.setdefault(key, []).append(row)
        for pending_keys, pending_rows in self._pending:
            lo, hi = np.searchsorted(pending_keys, wanted, "left"), np.searchsorted(pending_keys, wanted, "right")
            for i in np.flatnonzero(hi > lo):
                found.setdefault(int(wanted[i]), []).extend(pending_rows[lo[i] : hi[i]].tolist())
        return found  # rows unordered: the caller breaks ties by row

    def kept_rows(self, rows: Iterable[int]) -> dict[int, tuple[str, np.ndarray | None]]:
        """Record id and signature of kept rows."""
        found: dict[int, tuple[str, np.ndarray | None]] = {}
        for part in _in_batches(sorted(set(rows))):
            marks = ",".join("?" * len(part))
            for row, record_id, blob in self.db.execute(
                f"SELECT row, id, signature FROM kept WHERE row IN ({marks})", part
            ):
                found[row] = (record_id, None if blob is None else np.frombuffer(blob, dtype=SIGNATURE_DTYPE))
        return found

    def add(self, record_id: str, exact_key: bytes, band_keys: np.ndarray | None, signature: np.ndarray | None) -> int:
        """Index one kept record (written at the next `flush`; look up a chunk's own rows before that)."""
        row = self.size
        self.size += 1
        blob = None if signature is None else signature.astype(SIGNATURE_DTYPE).tobytes()
        self._kept.append((row, record_id, blob))
        self._exact.append((exact_key, row))
        if band_keys is not None:
            self._band_rows.append(row)
            self._band_keys.append(band_keys)
        return row

    def flush(self, duplicates: dict[int, int]) -> None:
        """Write the rows added since the last flush and add to the duplicate count of each kept row."""
        self.db.executemany("INSERT INTO kept (row, id, signature) VALUES (?, ?, ?)", self._kept)
        self.db.executemany("INSERT OR IGNORE INTO exact VALUES (?, ?)", self._exact)
        if self._band_rows:
            keys = np.concatenate(self._band_keys)
            rows = np.repeat(np.asarray(self._band_rows, dtype=np.int64), self.bands)
            order = np.argsort(keys, kind="stable")
            self._pending.append((keys[order], rows[order]))
            self._seen_bands.add(keys)
        if len(self._pending) >= PENDING_CHUNKS:
            self._write_pending()
        self.db.executemany(
            "UPDATE kept SET duplicates = duplicates + ? WHERE row = ?", [(n, r) for r, n in duplicates.items()]
        )
        self._kept, self._exact, self._band_rows, self._band_keys = [], [], [], []

    def _write_pending(self) -> None:
        keys = np.concatenate([k for k, _ in self._pending])
        rows = np.concatenate([r for _, r in self._pending])
        order = np.lexsort((rows, keys))  # in key order, the inserts touch each B-tree page once
        keys, rows = keys[order], rows[order]
        for start in range(0, keys.size, _WRITE_ROWS):
            end = start + _WRITE_ROWS
            self.db.executemany(
                "INSERT OR IGNORE INTO band VALUES (?, ?)",
                zip(keys[start:end].tolist(), rows[start:end].tolist(), strict=True),
            )
        self._pending = []
        self.db.commit()  # one transaction per write of the pending rows: a commit per chunk cost as much again

    def groups(self, largest: int = LARGEST_GROUPS) -> tuple[int, list[dict]]:
        """How many kept records had duplicates, and the `largest` groups."""
        (count,) = self.db.execute("SELECT COUNT(*) FROM kept WHERE duplicates > 0").fetchone()
        top = self.db.execute(
            "SELECT id, duplicates FROM kept WHERE duplicates > 0 ORDER BY duplicates DESC, row LIMIT ?", (largest,)
        )
        return count, [{"kept": record_id, "duplicates": n} for record_id, n in top]

    def close(self) -> None:
        self.db.close()
        self._tmp.cleanup()
