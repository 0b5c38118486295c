"""C-Eval-layout multiple-choice evaluation by the log-likelihood of the answer letter."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

LETTERS = "ABCD"
FIELDS = ("id", "question", "A", "B", "C", "D", "answer")


@dataclass
class Question:
    subject: str
    question: str
    options: tuple[str, str, str, str]
    answer: str


def load_ceval(data_dir: Path, split: str = "val", subjects: list[str] | None = None) -> dict[str, list[Question]]:
    """Read `<data_dir>/<split>/<subject>_<split>.csv` files in C-Eval's official layout.

    Raises:
        FileNotFoundError: the split folder or a requested subject's file does not exist.
        ValueError: a CSV lacks a column or has an answer outside A-D (file and line named).
    """
    split_dir = data_dir / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"C-Eval split folder not found: {split_dir} (paths.ceval_dir)")
    available = sorted(p.name[: -len(f"_{split}.csv")] for p in split_dir.glob(f"*_{split}.csv"))
    chosen = subjects or available
    result: dict[str, list[Question]] = {}
    for subject in chosen:
        path = split_dir / f"{subject}_{split}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"C-Eval subject file not found: {path}; available subjects: {available}")
        with path.open(encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [f for f in FIELDS if f not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing columns {missing}; C-Eval CSVs have {list(FIELDS)}")
            rows = []
            for line, row in enumerate(reader, start=2):
                answer = row["answer"].strip().upper()
                if answer not in LETTERS:
                    raise ValueError(f"{path}:{line}: field 'answer' must be one of A-D, got {row['answer']!r}")
                options = (row["A"], row["B"], row["C"], row["D"])
                rows.append(Question(subject, row["question"], options, answer))
        result[subject] = rows
    return result


def subject_names(data_dir: Path) -> dict[str, list[str]]:
    """subject -> [Chinese name, category] from `subject_mapping.json` (empty if absent)."""
    path = data_dir / "subject_mapping.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def format_question(q: Question, with_answer: bool) -> str:
    body = q.question + "\n" + "\n".join(f"{letter}. {opt}" for letter, opt in zip(LETTERS, q.options, strict=True))
    return body + "\n答案：" + (q.answer + "\n\n" if with_answer else "")


def build_prompt(q: Question, subject_zh: str, shots: list[Question]) -> str:
    """C-Eval's own prompt style, with optional few-shot examples from the dev split."""
    header = f"以下是中国关于{subject_zh}考试的单项选择题，请选出其中的正确答案。\n\n"
    return header + "".join(format_question(s, True) for s in shots) + format_question(q, False)


@torch.no_grad()
def score_ceval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: dict[str, list[Question]],
    names: dict[str, list[str]] | None = None,
    dev: dict[str, list[Question]] | None = None,
    shots: int = 0,
    by: str = "logit",
) -> dict:
    """Accuracy per subject, per category and on average.

    by="logit": the answer is the option letter with the highest next-token logit (C-Eval's
    recommended way for base models); by="generation": greedy-decode a few tokens and take the
    first A-D letter (no letter counts as wrong).
    """
    if by not in ("logit", "generation"):
        raise ValueError(f"C-Eval scoring must be 'logit' or 'generation', not {by!r}")
    names = names or {}
    letter_ids = [tokenizer(letter, add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]
    per_subject: dict[str, float] = {}
    per_category: dict[str, list[int]] = {}
    all_hits: list[int] = []
    model.eval()
    for subject, qs in questions.items():
        zh, category = (names.get(subject) or [subject, "Other"])[:2]
        examples = (dev or {}).get(subject, [])[:shots]
        hits = []
        for q in qs:
            enc = tokenizer(build_prompt(q, zh, examples), return_tensors="pt", add_special_tokens=False).to(
                model.device
            )
            if by == "logit":
                choice = LETTERS[int(model(**enc).logits[0, -1, letter_ids].argmax())]
            else:
                out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
                text = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                choice = next((ch for ch in text if ch in LETTERS), "")
            hits.append(int(choice == q.answer))
        per_subject[subject] = sum(hits) / max(len(hits), 1)
        per_category.setdefault(category, []).extend(hits)
        all_hits += hits
    return {
        "accuracy": sum(all_hits) / max(len(all_hits), 1),
        "n_questions": len(all_hits),
        "correct": all_hits,  # per question, in load order: what the paired test compares tuned and base on
        "per_subject": per_subject,
        "per_category": {c: sum(h) / len(h) for c, h in per_category.items()},
        "shots": shots,
        "scored_by": by,
    }
