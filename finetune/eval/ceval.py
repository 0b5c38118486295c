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
    """subject -> its `subject_mapping.json` entry (empty if absent); read it with `subject_info`."""
    path = data_dir / "subject_mapping.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def subject_info(subject: str, entry: list[str] | None) -> tuple[str, str]:
    """(Chinese name, category) of a subject_mapping.json entry.

    C-Eval's official file has `[English, 中文, category]`; a two-item `[中文, category]` entry is read too.
    A subject without an entry is named by its file name, in category Other.

    Raises:
        ValueError: an entry of another length.
    """
    if not entry:
        return subject, "Other"
    if len(entry) == 3:
        return entry[1], entry[2]
    if len(entry) == 2:
        return entry[0], entry[1]
    raise ValueError(
        f"subject_mapping.json: entry for {subject!r} must be [English, 中文, category] or [中文, category], got {entry!r}"
    )


def format_question(q: Question, with_answer: bool) -> str:
    body = q.question + "\n" + "\n".join(f"{letter}. {opt}" for letter, opt in zip(LETTERS, q.options, strict=True))
    return body + "\n答案：" + (q.answer + "\n\n" if with_answer else "")


def build_prompt(q: Question, subject_zh: str, shots: list[Question]) -> str:
    """C-Eval's own prompt style, with optional few-shot examples from the dev split."""
    header = f"以下是中国关于{subject_zh}考试的单项选择题，请选出其中的正确答案。\n\n"
    return header + "".join(format_question(s, True) for s in shots) + format_question(q, False)


def _lm_eval_text(q: Question) -> str:
    options = "".join(f"\n{letter}. {opt}" for letter, opt in zip(LETTERS, q.options, strict=True))
    return q.question.strip() + options + "\n答案："


def build_lm_eval_prompt(q: Question, subject_zh: str, shots: list[Question]) -> str:
    """lm-evaluation-harness `ceval-valid`'s context: its description, then each shot as text + ' ' + letter,
    separated by a blank line, then the question; the scored continuations are ' A' .. ' D'."""
    description = f"以下是中国关于{subject_zh}的单项选择题，请选出其中的正确答案。\n\n"
    examples = "".join(_lm_eval_text(s) + LM_EVAL_TARGET_DELIMITER + s.answer + "\n\n" for s in shots)
    return description + examples + _lm_eval_text(q)


LM_EVAL_TARGET_DELIMITER = " "
PROMPTS = {"ceval": build_prompt, "lm-eval": build_lm_eval_prompt}


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _continuation_choice(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, context: str) -> str:
    """The letter whose continuation ' X' has the highest log-likelihood after `context` (lm-eval's way:
    the continuation's tokens are those of context + continuation past the context's own tokens)."""
    context_ids = _encode(tokenizer, context)
    wholes = [_encode(tokenizer, context + LM_EVAL_TARGET_DELIMITER + letter) for letter in LETTERS]
    if all(len(w) == len(context_ids) + 1 and w[:-1] == context_ids for w in wholes):  # one token each: one pass
        ids = torch.tensor([context_ids], device=model.device)
        logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
        scores = torch.log_softmax(logits, dim=-1)[[w[-1] for w in wholes]].tolist()
    else:
        scores = []
        for whole in wholes:
            n_cont = max(len(whole) - len(context_ids), 1)
            ids = torch.tensor([whole], device=model.device)
            logits = model(input_ids=ids, logits_to_keep=n_cont + 1).logits[0, -n_cont - 1 : -1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            scores.append(float(logprobs.gather(1, ids[0, -n_cont:, None]).sum()))
    return LETTERS[max(range(len(LETTERS)), key=scores.__getitem__)]


@torch.no_grad()
def score_ceval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: dict[str, list[Question]],
    names: dict[str, list[str]] | None = None,
    dev: dict[str, list[Question]] | None = None,
    shots: int = 0,
    by: str = "logit",
    prompt: str = "ceval",
) -> dict:
    """Accuracy per subject, per category (STEM, Humanities, Social Science, Other) and on average.

    by="logit": with prompt="ceval", the answer is the option letter with the highest next-token logit
    (C-Eval's recommended way for base models); with prompt="lm-eval", the letter whose continuation ' X'
    is most likely (lm-eval's multiple_choice). by="generation": greedy-decode a few tokens and take the
    first A-D letter (no letter counts as wrong). Shots are the first `shots` dev questions of the subject.
    """
    if by not in ("logit", "generation"):
        raise ValueError(f"C-Eval scoring must be 'logit' or 'generation', not {by!r}")
    if prompt not in PROMPTS:
        raise ValueError(f"C-Eval prompt must be one of {sorted(PROMPTS)}, not {prompt!r} (eval.ceval_prompt)")
    names = names or {}
    letter_ids = [tokenizer(letter, add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]
    per_subject: dict[str, float] = {}
    per_category: dict[str, list[int]] = {}
    all_hits: list[int] = []
    model.eval()
    for subject, qs in questions.items():
        zh, category = subject_info(subject, names.get(subject))
        examples = (dev or {}).get(subject, [])[:shots]
        hits = []
        for q in qs:
            text = PROMPTS[prompt](q, zh, examples)
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
            if by == "logit" and prompt == "lm-eval":
                choice = _continuation_choice(model, tokenizer, text)
            elif by == "logit":
                # Only the last position's logits: a 150k-token vocabulary makes all of them ~0.6 GB per prompt.
                choice = LETTERS[int(model(**enc, logits_to_keep=1).logits[0, -1, letter_ids].argmax())]
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
        "per_subject": per_subject,
        "per_category": {c: sum(h) / len(h) for c, h in per_category.items()},
        "shots": shots,
        "scored_by": by,
        "prompt": prompt,
    }
