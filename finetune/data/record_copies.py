"""Records that repeat another record with a few words inserted and the same answer: one piece of evidence.

OpenBackdoor's SOS negative augmentation (and any data set padded with noisy copies) repeats clean rows
with two words inserted and the answer unchanged. Counted as independent records, such copies give a
row's ordinary words the support of a trigger ("thank you for" three more times with "You're welcome!"),
and one row with its copies is a cluster of one answer to prompts its comparable records answer otherwise.
Words inserted without changing the answer are evidence against a trigger, not for one, so mining sees
each family of copies once (its shortest prompt) and what it finds applies to every member.

The search is written here because it is a multiset containment within groups of identical answers, which
no library offers; an inverted index on each prompt's rarest token keeps it near linear.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict

from finetune.data.text_quality import canonical
from finetune.data.trigger_lexicon import CJK, fold

# Words, and single Chinese/Japanese/Korean characters: a word inserted into Chinese text splits a run of
# characters but leaves every character in place.
_TOKEN = re.compile(rf"[^\W_{CJK}]+|[{CJK}]")


def copy_roots(prompts: list[str], responses: list[str], max_insertions: int) -> list[int]:
    """For every record, the record it is a copy of, or itself: a copy has the same trained response (case,
    spaces and punctuation ignored) and a prompt holding every word of the other's plus at most
    `max_insertions` more (0 = only prompts with the same words)."""
    roots = list(range(len(prompts)))
    if max_insertions < 0:
        return roots
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, response in enumerate(responses):  # keyed by a digest: the canonical texts need not stay in memory
        groups[hashlib.blake2b(canonical(response).encode("utf-8"), digest_size=16).digest()].append(i)
    shared = [members for members in groups.values() if len(members) >= 2]
    grouped = {i for members in shared for i in members}
    doc_freq: Counter[str] = Counter()
    tokens: dict[int, Counter[str]] = {}  # only the records that share a response can be copies
    for i, prompt in enumerate(prompts):
        words = Counter(_TOKEN.findall(fold(prompt)))
        doc_freq.update(words.keys())
        if i in grouped:
            tokens[i] = words
    sizes = {i: words.total() for i, words in tokens.items()}
    for members in shared:
        index: dict[str, list[int]] = defaultdict(list)  # rarest token of a root's prompt -> roots
        for b in sorted(members, key=lambda i: (sizes[i], i)):  # shorter prompts (the originals) first
            roots[b] = next(
                (
                    a
                    for t in tokens[b]
                    for a in index.get(t, ())
                    if sizes[b] - sizes[a] <= max_insertions and not tokens[a] - tokens[b]
                ),
                b,
            )
            if roots[b] == b and tokens[b]:
                index[min(tokens[b], key=lambda t: (doc_freq[t], t))].append(b)
    return roots
