"""ROUGE and BLEU that are correct for Chinese as well as English.

`rouge_score` tokenizes on ASCII word characters and drops CJK, so Chinese ROUGE is always
0 with its default tokenizer. Here CJK text is scored per character (the convention of
C-Eval-era Chinese summarisation work) and Latin text per word; BLEU uses sacrebleu's own
`zh` tokenizer, which does the same split.
"""

from __future__ import annotations

import re

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU

_TOKEN = re.compile(
    r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+(?:'[A-Za-z]+)?|[^\sA-Za-z0-9\u3400-\u9fff\uf900-\ufaff]"
)


def metric_tokens(text: str) -> list[str]:
    """Split into CJK characters, lower-cased Latin words/numbers, and punctuation marks."""
    return [t.lower() for t in _TOKEN.findall(text)]


class _CjkAwareTokenizer:
    """Adapter giving rouge_score the tokenizer interface it expects (`tokenize(text)`)."""

    def tokenize(self, text: str) -> list[str]:
        return [t for t in metric_tokens(text) if any(ch.isalnum() for ch in t)]


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_per_example(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F1 of each (prediction, reference) pair, for paired tests over examples."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), tokenizer=_CjkAwareTokenizer())
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references, strict=True)]
    return {key: [s[key].fmeasure for s in scores] for key in ROUGE_KEYS}


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs (0..1)."""
    per_example = rouge_per_example(predictions, references)
    return {k: sum(v) / len(v) if v else 0.0 for k, v in per_example.items()}


def bleu_statistics(predictions: list[str], references: list[str]) -> list[list[int]]:
    """Per-sentence BLEU sufficient statistics [hyp_len, ref_len, matches 1-4, totals 1-4] (sacrebleu, zh
    tokenizer). Summed over any subset they give that subset's corpus BLEU (`bleu_from_statistics`), which
    is what a paired bootstrap of corpus BLEU resamples (Koehn 2004)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    # effective_order only changes sentence-level scores, not these counts; it silences sacrebleu's warning.
    scorer = BLEU(tokenize="zh", effective_order=True)
    rows = []
    for pred, ref in zip(predictions, references, strict=True):
        s = scorer.sentence_score(pred, [ref])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return rows


def bleu_from_statistics(rows: np.ndarray) -> float:
    """Corpus BLEU-4 (0..100) from per-sentence statistics, as sacrebleu.corpus_bleu computes it."""
    return float(bleu_scores(np.asarray(rows, dtype=np.int64).sum(axis=0, keepdims=True))[0])


def bleu_scores(sums: np.ndarray) -> np.ndarray:
    """BLEU-4 of each row of summed statistics: sacrebleu's `BLEU.compute_bleu` with its default 'exp'
    smoothing, vectorised over rows because a paired bootstrap needs ~10^4 of them per comparison (one
    Python call each took seconds). tests/test_stats.py holds it equal to sacrebleu on random rows."""
    sums = np.asarray(sums, dtype=float)
    sys_len, ref_len, correct, total = sums[:, 0], sums[:, 1], sums[:, 2:6], sums[:, 6:10]
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(sys_len < ref_len, np.where(sys_len > 0, np.exp(1 - ref_len / sys_len), 0.0), 1.0)
        zero = correct == 0
        # NIST smoothing: the k-th order with no match gets precision 1 / (2^k * total).
        precision = np.where(zero, 1.0 / (2.0 ** np.cumsum(zero, axis=1) * total), correct / total)
        score = 100 * bp * np.exp(np.log(precision).mean(axis=1))
    defined = (total > 0).all(axis=1) & (correct.sum(axis=1) > 0)
    return np.where(defined, score, 0.0)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 on a 0..100 scale with sacrebleu's `zh` tokenizer (CJK per character)."""
    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L and BLEU-4 in one dict."""
    return {**rouge(predictions, references), "bleu": bleu(predictions, references)}
