"""Deduplication: exact (normalised hash) then near-duplicate (MinHash LSH on character shingles).

A near duplicate has both its prompt and its response alike (estimated Jaccard of character
shingles >= threshold for each). Keep policy: the first occurrence in input order (files in the order given, rows in file order)
is kept; every later member of its group is dropped naming the kept record's id and, for near
duplicates, the estimated Jaccard similarity. Records stream through; only the index stays in
memory (a 16-byte digest per kept record for exact dedup, LSH buckets and a 32-bit signature per
kept record for near dedup).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from datasketch import MinHashLSH

from finetune.config import DedupConfig
from finetune.data.minhash import half_similarities, pair_signature
from finetune.data.records import Record, StageResult, full_text, prompt_text, response_text
from finetune.data.stream import Outcome, collect, dropped, kept
from finetune.data.text_quality import canonical

SNIPPET = 80


def snippet(record: Record) -> str:
    """The start of a record's text with PII replaced by placeholders (dedup runs before de-identification,
    and sample pairs end up in reports and asset metadata)."""
    from finetune.config import PII_ENTITIES
    from finetune.data.pii import redact

    return redact(full_text(record), PII_ENTITIES)[:SNIPPET]


def _band_key(band: bytes) -> bytes:
    # An 8-byte digest instead of the band's raw r x 8 bytes keeps the index ~30% smaller; a rare
    # collision only adds a candidate, and every candidate is verified against its signature.
    return hashlib.blake2b(band, digest_size=8).digest()


def dedup_key(record: Record) -> str:
    """Hash of the record's turns, case-folded with punctuation and whitespace removed."""
    parts = [m["role"] + ":" + canonical(m["content"]) for m in record["messages"]]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


class Deduplicator:
    """Streams records, dropping exact and near duplicates of records kept earlier."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.exact: dict[bytes, str] = {}
        self.lsh = (
            MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, hashfunc=_band_key)
            if cfg.near_duplicates
            else None
        )
        self.signatures: list[np.ndarray] = []  # per near-indexed kept record, by LSH key
        self.ids: list[str] = []
        self.groups: Counter[str] = Counter()
        self.pairs: list[dict[str, Any]] = []

    def stream(self, records: Iterable[Record]) -> Iterator[Outcome]:
        """One outcome per record: kept, or dropped as exact_duplicate / near_duplicate of a kept one."""
        for record in records:
            key = bytes.fromhex(dedup_key(record))[:16]
            if key in self.exact:
                yield self._duplicate(record, "exact_duplicate", self.exact[key], 1.0)
                continue
            if self.lsh is not None:
                sig = pair_signature(
                    prompt_text(record), response_text(record), self.cfg.num_perm, self.cfg.shingle_chars
                )
                values = sig.hashvalues.astype(np.uint32)
                match, similarity = self._nearest(sig, values)
                if match is not None:
                    yield self._duplicate(record, "near_duplicate", self.ids[match], similarity)
                    continue
                self.lsh.insert(len(self.ids), sig, check_duplication=False)
                self.signatures.append(values)
            self.exact[key] = record["id"]
            self.ids.append(record["id"])
            yield kept(record)

    def _nearest(self, sig, values: np.ndarray) -> tuple[int | None, float]:
        # LSH candidates are only likely matches; confirm with the signatures' estimated Jaccard. Both the
        # prompt and the response must be alike: many prompts with one shared response is what a poisoning
        # attack looks like, and collapsing it to one record would hide it from the screening stage.
        best, best_sim = None, 0.0
        for candidate in self.lsh.query(sig):
            sim = min(half_similarities(self.signatures[candidate], values))
            if sim >= self.cfg.threshold and sim > best_sim:
                best, best_sim = candidate, sim
        return best, best_sim

    def _duplicate(self, record: Record, reason: str, kept_id: str, similarity: float) -> Outcome:
        self.groups[kept_id] += 1
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

    def extra(self) -> dict[str, Any]:
        """Cluster statistics and sample pairs (PII-redacted snippets) for the report and the asset metadata."""
        pairs = [
            {k: v for k, v in p.items() if k != "dropped_record"} | {"dropped_text": snippet(p["dropped_record"])}
            for p in self.pairs
        ]
        return {
            "duplicate_groups": len(self.groups),
            "largest_groups": [{"kept": k, "duplicates": n} for k, n in self.groups.most_common(5)],
            "sample_pairs": pairs,
            "keep_policy": "first occurrence in input order",
        }


def attach_kept_text(pairs: list[dict[str, Any]], kept_records: Iterable[Record]) -> None:
    """Add the kept record's text to each sample pair (one pass over the kept records, e.g. kept.jsonl)."""
    wanted = {p["kept"] for p in pairs}
    texts = {r["id"]: snippet(r) for r in kept_records if r["id"] in wanted}
    for pair in pairs:
        pair["kept_text"] = texts.get(pair["kept"], "")


def deduplicate_records(records: list[Record], cfg: DedupConfig | None = None) -> StageResult:
    """Drop exact and near duplicates, keeping the first of each group (in memory)."""
    dedup = Deduplicator(cfg or DedupConfig())
    result = collect("deduplicated_records", dedup.stream(records))
    result.extra.update(dedup.extra())
    attach_kept_text(result.extra["sample_pairs"], result.kept)
    return result
