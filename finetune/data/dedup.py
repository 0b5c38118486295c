"""Deduplication: exact (normalised hash), near-duplicate (MinHash LSH on character shingles) and,
optionally, semantic (sentence embeddings, `semantic.py`).

A near duplicate has both its prompt and its response alike (estimated Jaccard of character
shingles >= threshold for each). Keep policy: the first occurrence in input order (files in the
order given, rows in file order) is kept; every later member of its group is dropped naming the
kept record's id and, for near duplicates, the estimated Jaccard similarity. Records stream
through; what is remembered about kept records (exact key, LSH band keys, signature) lives in an
on-disk index (`dedup_index.py`), so memory stays flat as the dataset grows. On the Ray engine the same
decisions come from a shuffle of keys across the cluster instead (`dedup_shuffle.py`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from finetune.config import DedupConfig
from finetune.data.char_windows import alnum_only, code_points, ranges
from finetune.data.dedup_index import LARGEST_GROUPS, DuplicateIndex, band_keys
from finetune.data.dedup_shuffle import EXACT, KEPT, ShuffledDedup, shuffled_dedup
from finetune.data.engine import LOCAL, Engine
from finetune.data.minhash import code_pair_signatures, half_similarities
from finetune.data.records import Record, Stage, StageResult, StageSummary, full_text
from finetune.data.semantic import SemanticIndex
from finetune.data.stream import Outcome, collect, dropped, kept

SNIPPET = 80
CHUNK = 2048  # records looked up and written together; bounds the memory a chunk adds
# Per shuffle reducer on Ray (16 bytes each before verification): past it the driver decides with the local index.
# A response shared by m records with distinct prompts makes ~8 m^2 / 2 pairs (its bands), so this is m ~ 1,100.
MAX_CANDIDATE_PAIRS = 5_000_000
log = logging.getLogger(__name__)


def snippet(record: Record) -> str:
    """The start of a record's text with PII replaced by placeholders (dedup runs before de-identification,
    and sample pairs end up in reports and asset metadata)."""
    from finetune.config import PII_ENTITIES
    from finetune.data.pii import redact

    return redact(full_text(record), PII_ENTITIES)[:SNIPPET]


@dataclass
class CanonicalTurns:
    """Every turn of a chunk of records as `canonical()` text (case-folded, only letters and digits), in code points.

    canonical() keeps or drops each character on its own (str.isalnum after casefold), so one table
    lookup over the whole chunk's code points does what a regex substitution per turn did.
    """

    codes: np.ndarray  # all turns' canonical code points, turn after turn
    lengths: np.ndarray  # per turn
    record: np.ndarray  # per turn: its record's index in the chunk
    roles: list[str]  # per turn
    n_records: int

    @classmethod
    def of(cls, chunk: list[Record]) -> CanonicalTurns:
        roles, texts, record = [], [], []
        for i, r in enumerate(chunk):
            for m in r["messages"]:
                roles.append(m["role"])
                texts.append(m["content"].casefold())
                record.append(i)
        codes, lengths = alnum_only(*code_points(texts))
        return cls(codes, lengths, np.asarray(record, dtype=np.int64), roles, len(chunk))

    def exact_keys(self) -> list[bytes]:
        """Per record, a 16-byte hash of its roles and canonical turns (equal keys: equal canonical turns)."""
        raw = self.codes.astype(np.uint32).tobytes()
        hashes = [hashlib.sha256() for _ in range(self.n_records)]
        end = 0
        for role, record, length in zip(self.roles, self.record.tolist(), self.lengths.tolist(), strict=True):
            start, end = end, end + 4 * length
            hashes[record].update(f"{role}:{length}:".encode())  # the length keeps turn boundaries unambiguous
            hashes[record].update(raw[start:end])
        return [h.digest()[:16] for h in hashes]

    def halves(self, wanted: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The prompt (non-assistant turns, joined) and response (last assistant turn) of each wanted record,
        as `code_points` of 2n texts: the n prompts, then the n responses."""
        n = len(wanted)
        slot = np.full(self.n_records, -1, dtype=np.int64)
        slot[wanted] = np.arange(n)
        assistant = np.array([role == "assistant" for role in self.roles], dtype=bool)
        target = np.where(assistant, -1, slot[self.record])  # text number each turn belongs to, -1 for none
        last = {record: t for t, record in enumerate(self.record.tolist()) if assistant[t]}
        for record, t in last.items():
            if slot[record] >= 0:
                target[t] = n + slot[record]
        turns = np.flatnonzero(target >= 0)
        turns = turns[np.argsort(target[turns], kind="stable")]  # a record's prompt turns stay in order
        turn_at = np.cumsum(self.lengths) - self.lengths
        codes = self.codes[ranges(turn_at[turns], self.lengths[turns])]
        lengths = np.bincount(target[turns], weights=self.lengths[turns], minlength=2 * n).astype(np.int64)
        return codes, lengths


@dataclass
class ChunkSignatures:
    """What deduplication computes from a chunk alone: its records' exact keys and, per distinct key, the
    MinHash signature and LSH band keys of the first record holding it (None: near duplicates are off)."""

    keys: list[bytes]  # per record
    distinct: list[bytes]  # the chunk's distinct keys, in order of first occurrence
    signatures: np.ndarray | None  # per distinct key
    bands: np.ndarray | None  # per distinct key


def chunk_signatures(chunk: list[Record], cfg: DedupConfig, bands: int, rows: int) -> ChunkSignatures:
    """The pure, costly part of deduplicating a chunk, which an `Engine` may run anywhere; the decisions
    against kept records stay in `Deduplicator`, in input order."""
    turns = CanonicalTurns.of(chunk)
    keys = turns.exact_keys()
    first: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    if not cfg.near_duplicates:
        return ChunkSignatures(keys, list(first), None, None)
    signatures = code_pair_signatures(*turns.halves(list(first.values())), cfg.num_perm, cfg.shingle_chars)
    return ChunkSignatures(keys, list(first), signatures, band_keys(signatures, bands, rows))


class Deduplicator:
    """Streams records, dropping exact and near duplicates of records kept earlier.

    Works a chunk of records at a time: one round of index lookups for the chunk, then the records
    in order against the index and the chunk's own earlier kept records, then one write.
    """

    def __init__(self, cfg: DedupConfig, index_dir: Path | None = None, engine: Engine = LOCAL):
        self.cfg, self.engine = cfg, engine
        self.index = DuplicateIndex(cfg.threshold, cfg.num_perm, index_dir)
        self.semantic = SemanticIndex() if cfg.semantic else None
        self.pairs: list[dict[str, Any]] = []
        self.group_count, self.largest_groups = 0, []

    def stream(self, records: Iterable[Record]) -> Iterator[Outcome]:
        """One outcome per record: kept, or dropped as exact_, near_ or semantic_duplicate of a kept one."""
        if self.engine.kind == "ray" and self.semantic is None:
            yield from self._stream_shuffled(records)
        else:
            yield from self._stream_chunks(records)

    def _stream_chunks(self, records: Iterable[Record]) -> Iterator[Outcome]:
        records = iter(records)
        chunks = iter(lambda: list(islice(records, CHUNK)), [])
        work = partial(chunk_signatures, cfg=self.cfg, bands=self.index.bands, rows=self.index.rows)
        try:
            for chunk, signed in self.engine.paired(work, chunks, batch=1):
                yield from self._chunk(chunk, signed)
            self.group_count, self.largest_groups = self.index.groups()
        finally:
            self.index.close()

    def _stream_shuffled(self, records: Iterable[Record]) -> Iterator[Outcome]:
        """The whole input deduplicated as a shuffle on the cluster (`dedup_shuffle`): this engine's outcomes,
        with only per-record integers on this process. Semantic dedup compares embeddings with every kept
        record, which no shuffle partitions, so with it on the Ray engine takes the chunk path below."""
        ray = self.engine.connect()
        try:
            index = self.index
            shuffled = shuffled_dedup(ray, records, self.cfg, index.bands, index.rows, CHUNK, MAX_CANDIDATE_PAIRS)
            if shuffled.decisions is None:
                log.warning(
                    "dedup: band groups too large for the shuffle (over %s candidate pairs in one part): deciding "
                    "with the local index over the records in Ray's store instead (same outcomes, slower)",
                    f"{MAX_CANDIDATE_PAIRS:,}",
                )
                yield from self._stream_chunks(shuffled.records(ray))
                return
        finally:
            self.index.close()
        yield from self._decided(shuffled, ray)

    def _decided(self, shuffled: ShuffledDedup, ray) -> Iterator[Outcome]:
        """The shuffle's decisions as outcomes, with the records fetched back from the store in input order."""
        decided = shuffled.decisions
        targets = set(np.unique(decided.target[decided.kind != KEPT]).tolist())
        ids: dict[int, str] = {}  # only the kept records that something duplicates
        duplicates: Counter[int] = Counter()
        for position, record in enumerate(shuffled.records(ray)):
            kind = int(decided.kind[position])
            if kind == KEPT:
                if position in targets:
                    ids[position] = record["id"]
                yield kept(record)
                continue
            target = int(decided.target[position])
            duplicates[target] += 1
            reason = "exact_duplicate" if kind == EXACT else "near_duplicate"
            yield self._duplicate(record, reason, ids[target], float(decided.similarity[position]))
        self.group_count = len(duplicates)
        top = sorted(duplicates.items(), key=lambda item: (-item[1], item[0]))[:LARGEST_GROUPS]
        self.largest_groups = [{"kept": ids[row], "duplicates": n} for row, n in top]

    def _chunk(self, chunk: list[Record], signed: ChunkSignatures) -> list[Outcome]:
        keys = signed.keys
        exact = self.index.exact_rows(keys)
        signatures = bands = None
        candidates: dict[int, list[int]] = {}
        may_match: list[bool] = []  # per signature slot: could have a near duplicate
        # Records that are exact duplicates of a kept one never reach the near check, and equal keys (equal
        # canonical turns) have equal signatures: one slot per distinct key not already indexed.
        fresh = [j for j, key in enumerate(signed.distinct) if key not in exact]
        slot = {signed.distinct[j]: n for n, j in enumerate(fresh)}
        if signed.signatures is not None:
            signatures, bands = signed.signatures[fresh], signed.bands[fresh]
            candidates = self.index.band_rows(bands)
            # Only records sharing a band key with an indexed record or another record of this chunk can
            # have a near duplicate; the rest (most) skip the candidate bookkeeping below.
            keys_seen, times = np.unique(bands, return_counts=True)
            shared = np.union1d(keys_seen[times > 1], np.fromiter(candidates, dtype=np.int64, count=len(candidates)))
            may_match = np.isin(bands, shared).any(axis=1).tolist()
        known = self.index.kept_rows([*exact.values(), *(r for rows in candidates.values() for r in rows)])
        meaning = self._semantic_matches(chunk) if self.semantic else None
        duplicates: Counter[int] = Counter()
        outcomes, kept_here = [], []
        for i, record in enumerate(chunk):
            j = slot.get(keys[i])
            if (row := exact.get(keys[i])) is not None:
                outcomes.append(self._duplicate(record, "exact_duplicate", known[row][0], 1.0))
                duplicates[row] += 1
                continue
            if signatures is not None and may_match[j]:
                row, similarity = self._nearest(
                    signatures[j], {r for k in bands[j].tolist() for r in candidates.get(k, ())}, known
                )
                if row is not None:
                    outcomes.append(self._duplicate(record, "near_duplicate", known[row][0], similarity))
                    duplicates[row] += 1
                    continue
            if meaning is not None and (match := meaning.best(i, kept_here)) is not None:
                row, similarity = match
                outcomes.append(self._duplicate(record, "semantic_duplicate", self._kept_id(row, known), similarity))
                duplicates[row] += 1
                continue
            row = self.index.add(
                record["id"],
                keys[i],
                None if bands is None else bands[j],
                None if signatures is None else signatures[j],
            )
            # Later records of this chunk are checked against this one before the index is written.
            known[row] = (record["id"], None if signatures is None else signatures[j])
            exact.setdefault(keys[i], row)
            if bands is not None and may_match[j]:
                for key in bands[j].tolist():
                    candidates.setdefault(key, []).append(row)
            kept_here.append(i)
            outcomes.append(kept(record))
        self.index.flush(duplicates)
        if meaning is not None:
            self.semantic.add(meaning.prompts[kept_here], meaning.responses[kept_here])
        return outcomes

    def _semantic_matches(self, chunk: list[Record]) -> ChunkMeaning:
        prompts, responses = self.semantic.embed(chunk)
        rows, sims = self.semantic.best_kept(prompts, responses)
        return ChunkMeaning(prompts, responses, rows, sims, self.cfg.semantic_threshold, self.index.size)

    def _kept_id(self, row: int, known: dict) -> str:
        if row not in known:
            known.update(self.index.kept_rows([row]))
        return known[row][0]

    def _nearest(self, values: np.ndarray, rows: set[int], known: dict) -> tuple[int | None, float]:
        # LSH candidates are only likely matches; confirm with the signatures' estimated Jaccard. Both the
        # prompt and the response must be alike: many prompts with one shared response is what a poisoning
        # attack looks like, and collapsing it to one record would hide it from the screening stage.
        best, best_sim = None, 0.0
        for row in sorted(rows):  # the earliest kept record wins a tie
            sim = min(half_similarities(known[row][1], values))
            if sim >= self.cfg.threshold and sim > best_sim:
                best, best_sim = row, sim
        return best, best_sim

    def _duplicate(self, record: Record, reason: str, kept_id: str, similarity: float) -> Outcome:
        if len(self.pairs) < self.cfg.sample_pairs:
            self.pairs.append(
                {
                    "reason": reason,
                    "kept": kept_id,
                    "dropped": record["id"],
                    "similarity": round(similarity, 3),
                    "dropped_record": record,  # redacted in extra(): Presidio loads once, after the stream
                }  # fmt: skip
            )
        return dropped(record, reason, duplicate_of=kept_id, similarity=round(similarity, 3))

    def summary(self) -> DedupSummary:
        """Cluster statistics and sample pairs (PII-redacted snippets; `attach_kept_text` adds the kept side)."""
        pairs = [
            {k: v for k, v in p.items() if k != "dropped_record"} | {"dropped_text": snippet(p["dropped_record"])}
            for p in self.pairs
        ]
        return DedupSummary(self.group_count, self.largest_groups, pairs)


@dataclass(frozen=True)
class DedupSummary(StageSummary):
    """What the deduplicated_records asset and the commands read of a dedup report."""

    duplicate_groups: int  # kept records with at least one duplicate dropped
    largest_groups: list[dict[str, Any]]  # {"kept": id, "duplicates": n}, largest first
    # {"reason", "kept", "dropped", "similarity", "dropped_text", "kept_text"}: snippets PII-redacted
    sample_pairs: list[dict[str, Any]]
    keep_policy: str = "first occurrence in input order"


@dataclass
class ChunkMeaning:
    """A chunk's embeddings and, per record, its closest kept record from earlier chunks."""

    prompts: np.ndarray
    responses: np.ndarray
    earlier_row: np.ndarray
    earlier_sim: np.ndarray
    threshold: float
    first_row: int  # the index row the chunk's first kept record gets

    def best(self, i: int, kept_here: list[int]) -> tuple[int, float] | None:
        """The kept row record i duplicates in meaning (earlier chunks or earlier in this one), if any."""
        row, sim = int(self.earlier_row[i]), float(self.earlier_sim[i])
        if kept_here:
            local = np.minimum(self.prompts[kept_here] @ self.prompts[i], self.responses[kept_here] @ self.responses[i])
            j = int(local.argmax())
            if local[j] > sim:
                row, sim = self.first_row + j, float(local[j])
        return (row, round(sim, 3)) if row >= 0 and sim >= self.threshold else None


def attach_kept_text(pairs: list[dict[str, Any]], kept_records: Iterable[Record]) -> None:
    """Add the kept record's text to each sample pair (one pass over the kept records, e.g. kept.jsonl)."""
    wanted = {p["kept"] for p in pairs}
    texts = {r["id"]: snippet(r) for r in kept_records if r["id"] in wanted}
    for pair in pairs:
        pair["kept_text"] = texts.get(pair["kept"], "")


def deduplicate_records(records: list[Record], cfg: DedupConfig | None = None) -> StageResult:
    """Drop exact and near duplicates, keeping the first of each group (in memory)."""
    dedup = Deduplicator(cfg or DedupConfig())
    result = collect(Stage.DEDUPLICATED, dedup.stream(records))
    summary = dedup.summary()
    attach_kept_text(summary.sample_pairs, result.kept)
    result.extra.update(summary.to_json())
    return result
