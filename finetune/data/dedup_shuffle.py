"""Global deduplication on a Ray cluster: exact keys and LSH bands shuffled by key, decided in input order.

The local `Deduplicator` asks its on-disk index about each chunk in turn. On Ray the costly parts run as
tasks instead, and the driver keeps only per-record integers:

1. map, one task per chunk: exact keys, MinHash signatures and band keys (`dedup.chunk_signatures`), the
   keys split into one part per reducer by hash;
2. exact shuffle, one task per part: each record's first occurrence of its exact key (its *slot*);
3. band shuffle, one task per part: pairs of distinct slots that share a band key, verified with the
   signatures (fetched from the object store by the chunks they need) at similarity >= threshold;
4. on the driver, in input order: a record whose slot already has a kept record is its exact duplicate;
   else the kept record of the most similar neighbour slot (ties: the earliest) makes it a near duplicate;
   else it is kept.

Step 4 is the local rule (keep-first against *kept* records only), so the outcomes equal the local engine's
record for record. A union-find over the pairs, as in Data-Juicer's BTS deduplicator, would not: when B
is dropped as a near duplicate of A, a C that is near B but not A is kept locally, and union-find would
drop it with B's group. Hand-written because no library decides duplicates this way; Ray Data's groupby
would hold whole rows, where a shuffle of (key, position) arrays suffices. The records wait in Ray's object
store (which spills to disk) between the map and the written outcomes. Pairs grow with the square of a band
group's size (many near-identical records, all but one dropped, cost the local index one comparison
each): past a bound on one reducer's candidate pairs the driver decides with the local index instead,
over the records in the store, with the same outcomes. The stage streams no outcome until the whole input
is in the store, and each band reducer holds the signatures of the chunks its pairs touch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

from finetune.config import DedupConfig
from finetune.data.records import Record

KEPT, EXACT, NEAR = 0, 1, 2
VERIFY_BLOCK = 8192  # pairs compared at once: bounds the two signature blocks to ~17 MB each at 256 permutations
MAX_RECORDS = 1 << 31  # positions share an int64 in pairs (see _joined)


@dataclass(frozen=True)
class Decisions:
    """Per record, in input order: KEPT, EXACT or NEAR; the position of the kept record it duplicates (-1 when
    kept); and the similarity to it."""

    kind: np.ndarray
    target: np.ndarray
    similarity: np.ndarray


def _part_of(values: np.ndarray, parts: int) -> np.ndarray:
    return (values.view(np.uint64) % np.uint64(parts)).astype(np.int64)


def sign_chunk(chunk: list[Record], start: int, cfg: DedupConfig, bands: int, rows: int, parts: int) -> tuple:
    """The map task: `2 * parts + 1` values, the chunk's exact keys in `parts` parts ((m, 2) uint64 keys,
    positions), then its chunk-first records' (positions, signatures), then their band keys in `parts` parts
    ((keys, positions), one entry per band)."""
    from finetune.data.dedup import chunk_signatures

    signed = chunk_signatures(chunk, cfg, bands, rows)
    keys = np.frombuffer(b"".join(signed.keys), dtype=np.uint64).reshape(-1, 2)
    positions = np.arange(start, start + len(chunk), dtype=np.int64)
    part = _part_of(keys[:, :1].copy(), parts).ravel()
    exact = [(keys[part == p], positions[part == p]) for p in range(parts)]
    first_of_key = {key: i for i, key in reversed(list(enumerate(signed.keys)))}
    firsts = np.array([start + first_of_key[key] for key in signed.distinct], dtype=np.int64)
    if signed.signatures is None:
        return (*exact, (firsts, None), *[(np.empty(0, np.int64), np.empty(0, np.int64))] * parts)
    band_keys = signed.bands.ravel()
    band_positions = np.repeat(firsts, signed.bands.shape[1])
    part = _part_of(band_keys, parts)
    banded = [(band_keys[part == p], band_positions[part == p]) for p in range(parts)]
    return (*exact, (firsts, signed.signatures), *banded)


def exact_firsts(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The exact reducer: (positions, first positions) of the records whose key occurred earlier."""
    keys = np.concatenate([k for k, _ in parts])
    positions = np.concatenate([p for _, p in parts])
    if not len(positions):
        return positions, positions
    order = np.lexsort((positions, keys[:, 1], keys[:, 0]))  # each key's first occurrence leads its run
    keys, positions = keys[order], positions[order]
    starts = np.ones(len(positions), dtype=bool)
    starts[1:] = (keys[1:] != keys[:-1]).any(axis=1)
    first = positions[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
    later = first != positions
    return positions[later], first[later]


def verified_pairs(
    not_slots: np.ndarray,
    signature_refs: list,
    chunk: int,
    threshold: float,
    max_pairs: int,
    *parts: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The band reducer: (a, b, similarity) for each pair of slots a < b sharing a band key of this part,
    with similarity (the smaller of the prompt's and the response's) >= threshold; None when the part's
    band groups would make more than `max_pairs` candidate pairs."""
    keys = np.concatenate([k for k, _ in parts])
    positions = np.concatenate([p for _, p in parts])
    slot = ~np.isin(positions, not_slots)  # a chunk's first record of a key seen in an earlier chunk is no slot
    keys, positions = keys[slot], positions[slot]
    order = np.lexsort((positions, keys))
    keys, positions = keys[order], positions[order]
    starts, sizes = _runs(keys)
    if int((sizes * (sizes - 1) // 2).sum()) > max_pairs:
        return None
    a, b = _pairs_within_runs(positions, starts, sizes)
    if not len(a):
        return a, b, np.empty(0)
    a, b = _split(np.unique(_joined(a, b)))
    signatures = _signatures_of(np.union1d(a, b), signature_refs, chunk)
    similarity = np.concatenate(
        [
            _similarities(signatures(a[start : start + VERIFY_BLOCK]), signatures(b[start : start + VERIFY_BLOCK]))
            for start in range(0, len(a), VERIFY_BLOCK)
        ]
    )
    close = similarity >= threshold
    return a[close], b[close], similarity[close]


def _similarities(sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Per row, the smaller of the two halves' estimated Jaccard, each half's mean taken as
    `minhash.half_similarities` takes it, so a pair's figure is the local engine's to the last bit."""
    half = sa.shape[1] // 2
    equal = sa == sb
    return np.minimum(equal[:, :half].mean(axis=1), equal[:, half:].mean(axis=1))


def _joined(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # One int64 per pair, so np.unique sorts a flat array (axis=0 on pairs was seconds per million).
    return (a << 32) | b


def _split(joined: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return joined >> 32, joined & 0xFFFFFFFF


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal keys in sorted `keys` starts, and its length."""
    if not len(keys):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return starts, np.diff(np.r_[starts, len(keys)])


def _pairs_within_runs(positions: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (earlier, later) pair of positions within each run (`_runs`; positions ascending in a run)."""
    firsts, seconds = [], []
    for size in np.unique(sizes[sizes > 1]):
        i, j = np.triu_indices(int(size), k=1)
        run_starts = starts[sizes == size][:, None]
        firsts.append(positions[run_starts + i].ravel())
        seconds.append(positions[run_starts + j].ravel())
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    distinct = a != b  # a record's two bands under one key collide only with themselves
    return a[distinct], b[distinct]


def _signatures_of(wanted: np.ndarray, signature_refs: list, chunk: int):
    import ray

    chunks = np.unique(wanted // chunk)
    found = ray.get([signature_refs[c] for c in chunks.tolist()])
    positions = np.concatenate([p for p, _ in found])
    signatures = np.concatenate([s for _, s in found])
    order = np.argsort(positions)
    positions, signatures = positions[order], signatures[order]
    return lambda at: signatures[np.searchsorted(positions, at)]


def decide(n: int, later: np.ndarray, first: np.ndarray, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Decisions:
    """Step 4 of the module docstring: each record's outcome, in input order, from the shuffles' results."""
    slot = np.arange(n, dtype=np.int64)
    slot[later] = first
    kind = np.full(n, KEPT, dtype=np.int8)
    target = np.full(n, -1, dtype=np.int64)
    similarity = np.ones(n)
    a, b, sim = pairs
    linked = np.zeros(n, dtype=bool)
    linked[a], linked[b] = True, True
    # A slot with no neighbour keeps its first record and drops the rest as its exact duplicates.
    alone = ~linked[slot]
    repeat = alone & (slot != np.arange(n))
    kind[repeat], target[repeat] = EXACT, slot[repeat]
    source, neighbour, weight = np.r_[a, b], np.r_[b, a], np.r_[sim, sim]
    order = np.argsort(source, kind="stable")
    source, neighbour, weight = source[order], neighbour[order], weight[order]
    bounds = np.searchsorted(source, np.arange(n + 1))
    kept_of = np.full(n, -1, dtype=np.int64)
    for j in np.flatnonzero(~alone).tolist():
        s = int(slot[j])
        if kept_of[s] >= 0:
            kind[j], target[j] = EXACT, kept_of[s]
            continue
        lo, hi = bounds[s], bounds[s + 1]
        kept_there = kept_of[neighbour[lo:hi]]
        has = kept_there >= 0
        if has.any():
            kept_there, weights = kept_there[has], weight[lo:hi][has]
            best = np.lexsort((kept_there, -weights))[0]  # the most similar; the earliest kept among equals
            kind[j], target[j], similarity[j] = NEAR, kept_there[best], weights[best]
        else:
            kept_of[s] = j
    return Decisions(kind, target, similarity)


@dataclass
class ShuffledDedup:
    """What the cluster computed for one input: its records, chunk by chunk in the object store, and the
    decision for each."""

    chunk_refs: list
    decisions: Decisions | None  # None: too many candidate pairs (see `shuffled_dedup`)
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # (a, b, similarity) of verified slot pairs, a < b

    def records(self, ray) -> Iterator[Record]:
        for i in range(len(self.chunk_refs)):
            chunk, self.chunk_refs[i] = ray.get(self.chunk_refs[i]), None  # the store may free it now
            yield from chunk


def shuffled_dedup(
    ray, records: Iterable[Record], cfg: DedupConfig, bands: int, rows: int, chunk: int, max_pairs: int
) -> ShuffledDedup:
    """Steps 1-4 of the module docstring on the cluster `ray` is connected to. When a reducer's band groups
    would make more than `max_pairs` candidate pairs, the decisions are None: the records are still in the
    store, for the caller to decide another way."""
    parts = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    sign = ray.remote(num_returns=2 * parts + 1)(sign_chunk)
    cfg_ref = ray.put(cfg)
    records = iter(records)
    chunk_refs, exact_refs, signature_refs, band_refs, n = [], [], [], [], 0
    while part := list(islice(records, chunk)):
        chunk_refs.append(ray.put(part))
        refs = sign.remote(chunk_refs[-1], n, cfg_ref, bands, rows, parts)
        exact_refs.append(refs[:parts])
        signature_refs.append(refs[parts])
        band_refs.append(refs[parts + 1 :])
        n += len(part)
        if n > MAX_RECORDS:
            raise ValueError(f"dedup on Ray takes at most {MAX_RECORDS:,} records per stage; split the input")
    if not n:
        return ShuffledDedup([], decide(0, *_empty_pairs()[:2], _empty_pairs()), _empty_pairs())
    exact = ray.remote(exact_firsts)
    found = ray.get([exact.remote(*(refs[p] for refs in exact_refs)) for p in range(parts)])
    later = np.concatenate([positions for positions, _ in found])
    first = np.concatenate([firsts for _, firsts in found])
    pairs = _empty_pairs()
    if cfg.near_duplicates:
        not_slots = ray.put(np.sort(later))
        band = ray.remote(verified_pairs)
        found = ray.get(
            [
                band.remote(
                    not_slots, signature_refs, chunk, cfg.threshold, max_pairs, *(refs[p] for refs in band_refs)
                )
                for p in range(parts)
            ]
        )
        if any(part is None for part in found):
            return ShuffledDedup(chunk_refs, None, None)
        pairs = _merge_pairs(found)
    return ShuffledDedup(chunk_refs, decide(n, later, first, pairs), pairs)


def _empty_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)


def _merge_pairs(found: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One entry per pair: two slots sharing bands in several parts were verified in each."""
    if not any(len(a) for a, _, _ in found):
        return _empty_pairs()
    a, b, sim = (np.concatenate([f[i] for f in found]) for i in range(3))
    _, unique = np.unique(_joined(a, b), return_index=True)
    return a[unique], b[unique], sim[unique]
