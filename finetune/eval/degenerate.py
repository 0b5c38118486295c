"""Answers that show a model has not learned to answer: empty, repetitive, or one answer for every prompt."""

from __future__ import annotations

from collections import Counter

from finetune.data.text_quality import canonical, has_char_run, repeated_ngram_fractions

# A generated answer is repetitive when repeated 5-character n-grams cover this share of it, or one character
# runs this long (the cleaning stage's measures, at sizes for answers of a few dozen tokens).
REPEATED_NGRAM = 5
MAX_REPEATED_SHARE = 0.6
MAX_CHAR_RUN = 10


def degenerate_reasons(predictions: list[str], references: list[str]) -> list[str]:
    """Per prediction, why it is degenerate ('empty', 'repetitive', 'same answer as others') or '' if it is not.

    'same answer as others': the most common prediction is given to more prompts than the most
    common reference answer is (labels legitimately repeat); the copies beyond that count are flagged.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    reasons = ["" for _ in predictions]
    fractions = repeated_ngram_fractions(predictions, REPEATED_NGRAM) if predictions else []
    for i, (text, share) in enumerate(zip(predictions, fractions, strict=True)):
        if not canonical(text):
            reasons[i] = "empty"
        elif share >= MAX_REPEATED_SHARE or has_char_run(text, MAX_CHAR_RUN):
            reasons[i] = "repetitive"
    keys = [canonical(p) for p in predictions]
    counts = Counter(k for k, r in zip(keys, reasons, strict=True) if not r)
    if counts:
        modal, n = counts.most_common(1)[0]
        allowed = max(Counter(canonical(r) for r in references).values(), default=1)
        for i in [i for i, k in enumerate(keys) if k == modal and not reasons[i]][allowed:]:
            reasons[i] = "same answer as others"
    return reasons
