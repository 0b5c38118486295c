"""ROUGE and BLEU that are correct for Chinese as well as English.

`rouge_score` tokenizes on ASCII word characters and drops CJK, so Chinese ROUGE is always
0 with its default tokenizer. Here CJK text is scored per character (the convention of
C-Eval-era Chinese summarisation work) and Latin text per word; BLEU uses sacrebleu's own
`zh` tokenizer, which does the same split.
"""

from __future__ import annotations

import re

import sacrebleu
from rouge_score import rouge_scorer

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


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs (0..1)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_CjkAwareTokenizer())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        for key in totals:
            totals[key] += scores[key].fmeasure
    return {k: v / len(predictions) for k, v in totals.items()}


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 on a 0..100 scale with sacrebleu's `zh` tokenizer (CJK per character)."""
    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L and BLEU-4 in one dict."""
    return {**rouge(predictions, references), "bleu": bleu(predictions, references)}
