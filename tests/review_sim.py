"""Test helpers for the expert review: a tiny evaluation's predictions, and simulated blind experts.

The experts never read the key: they know the right answer to each prompt (as a domain expert would) and
score what they see, with noise. Which arm gave the right answers decides whom they prefer.
"""

from __future__ import annotations

import random
from pathlib import Path

from finetune.data.records import make_record
from finetune.eval.predictions import write_predictions
from finetune.review.criteria import CRITERIA, LETTERS, score_field
from finetune.review.judgements import Judgement
from finetune.review.label_config import COMMENT, PROMPT_FIELD, RANKING, RANKING_LIST, answer_field

SENTIMENT = [("这部电影太好看了", "正面"), ("服务太差了", "负面"), ("今天心情很好", "正面"), ("饭菜难吃", "负面")]
FORBIDDEN = ("tuned", "base+prompt", "base_prompted", "embedded-tiny", "adapter")  # never in what raters see


def tiny_evaluation(out_dir: Path, n: int = 36, good: str = "tuned") -> tuple[Path, list[str], dict[str, str]]:
    """Predictions for n test records (sentiment labels, zh and en questions); `good` answers right.

    Returns (predictions file, labels, right answer by prompt text).
    """
    records, right = [], {}
    for i in range(n):
        if i % 3 == 0:
            text, label = SENTIMENT[i % len(SENTIMENT)]
            user, answer = f"判断情感倾向（正面或负面）：{text}（第{i}条）", label
        elif i % 3 == 1:
            user, answer = f"{i}加{i + 1}等于多少？", f"{i}加{i + 1}等于{2 * i + 1}。"
        else:
            user, answer = f"What is {i} plus {i + 2}?", f"{i} plus {i + 2} equals {2 * i + 2}."
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        records.append(make_record(messages, "sample.jsonl", i + 1))
        right[user] = answer
    wrong = {"tuned": "我不确定。", "base": "This is a question.", "base+prompt": "你好！有什么可以帮你？"}
    predictions = {
        arm: [
            right[r["messages"][0]["content"]] if arm == good else f"{wrong[arm]} #{i}" for i, r in enumerate(records)
        ]
        for arm in ("tuned", "base", "base+prompt")
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_predictions(out_dir, records, predictions), ["正面", "负面"], right


def judge(prompt: str, answers: dict[str, str], right: dict[str, str], rng: random.Random, noise: float = 0.15):
    """One simulated expert: (scores by score_field, ranking best first, comment)."""
    fields, totals = {}, {}
    for letter in LETTERS:
        correct = answers[letter] == right[prompt]
        for c in CRITERIA:
            base_score = 5 if correct else 2
            if rng.random() < noise:
                base_score = rng.randint(1, 5)
            fields[score_field(letter, c.key)] = base_score
        totals[letter] = sum(fields[score_field(letter, c.key)] for c in CRITERIA) + rng.random()
    ranking = tuple(sorted(LETTERS, key=lambda x: -totals[x]))
    return fields, ranking, f"{ranking[0]} 最好"


def simulated_judgements(items, right: dict[str, str], raters: list[str], seed: int) -> list[Judgement]:
    """Every rater judges every item of a packet."""
    rng = random.Random(seed)
    out = []
    for rater in raters:
        for item in items:
            fields, ranking, comment = judge(item.prompt, item.answers, right, rng)
            scores = {letter: {c.key: fields[score_field(letter, c.key)] for c in CRITERIA} for letter in LETTERS}
            out.append(Judgement(item.item_id, rater, scores, ranking, comment, "simulated"))
    return out


def label_studio_result(fields: dict[str, int], ranking: tuple[str, ...], comment: str) -> list[dict]:
    """The annotation result Label Studio's editor saves for this labelling config."""
    result = [
        {"from_name": name, "to_name": answer_field(name.split("_", 1)[0]), "type": "rating",
         "value": {"rating": score}}
        for name, score in fields.items()
    ]  # fmt: skip
    result.append({"from_name": RANKING, "to_name": RANKING_LIST, "type": "ranker",
                   "value": {"ranker": {RANKING: list(ranking)}}})  # fmt: skip
    result.append({"from_name": COMMENT, "to_name": PROMPT_FIELD, "type": "textarea", "value": {"text": [comment]}})
    return result
