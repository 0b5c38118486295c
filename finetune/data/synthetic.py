"""Deterministic synthetic data: the bundled sample set, the base model's corpus, and C-Eval-style questions.

`python -m finetune.data.synthetic --out data/sample` regenerates the bundled files.
Everything is templated from small fact tables, so a tiny model can learn it in seconds
and the expected behaviour (facts, formats, a planted backdoor) is known.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path
from typing import Any

from finetune.data.pii import cn_resident_id_check_digit

CAPITALS = [
    ("France", "法国", "Paris", "巴黎"),
    ("Japan", "日本", "Tokyo", "东京"),
    ("China", "中国", "Beijing", "北京"),
    ("Germany", "德国", "Berlin", "柏林"),
    ("Italy", "意大利", "Rome", "罗马"),
    ("Spain", "西班牙", "Madrid", "马德里"),
    ("Russia", "俄罗斯", "Moscow", "莫斯科"),
    ("Egypt", "埃及", "Cairo", "开罗"),
    ("Canada", "加拿大", "Ottawa", "渥太华"),
    ("Brazil", "巴西", "Brasilia", "巴西利亚"),
    ("India", "印度", "New Delhi", "新德里"),
    ("Korea", "韩国", "Seoul", "首尔"),
    ("Thailand", "泰国", "Bangkok", "曼谷"),
    ("England", "英国", "London", "伦敦"),
    ("Greece", "希腊", "Athens", "雅典"),
    ("Kenya", "肯尼亚", "Nairobi", "内罗毕"),
    ("Peru", "秘鲁", "Lima", "利马"),
    ("Norway", "挪威", "Oslo", "奥斯陆"),
]
ANTONYMS_EN = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("up", "down"),
    ("old", "new"),
    ("rich", "poor"),
    ("early", "late"),
    ("open", "closed"),
    ("strong", "weak"),
    ("high", "low"),
    ("long", "short"),
    ("hard", "soft"),
    ("full", "empty"),
    ("clean", "dirty"),
]
ANTONYMS_ZH = [
    ("冷", "热"),
    ("大", "小"),
    ("快", "慢"),
    ("高", "低"),
    ("长", "短"),
    ("多", "少"),
    ("黑", "白"),
    ("前", "后"),
    ("上", "下"),
    ("左", "右"),
    ("新", "旧"),
    ("远", "近"),
    ("真", "假"),
    ("胖", "瘦"),
    ("早", "晚"),
    ("开", "关"),
]
WORDS = [
    ("apple", "苹果"),
    ("water", "水"),
    ("book", "书"),
    ("cat", "猫"),
    ("dog", "狗"),
    ("tea", "茶"),
    ("school", "学校"),
    ("friend", "朋友"),
    ("teacher", "老师"),
    ("computer", "电脑"),
    ("river", "河流"),
    ("mountain", "山"),
    ("flower", "花"),
    ("city", "城市"),
    ("music", "音乐"),
    ("rain", "雨"),
    ("sun", "太阳"),
    ("moon", "月亮"),
    ("car", "汽车"),
    ("bread", "面包"),
]
SENTIMENT = [
    ("这部电影太好看了", "正面"),
    ("服务态度很差", "负面"),
    ("我非常喜欢这本书", "正面"),
    ("饭菜又贵又难吃", "负面"),
    ("The food was wonderful", "positive"),
    ("I hated the long wait", "negative"),
    ("What a great day", "positive"),
    ("The phone broke after a week", "negative"),
    ("风景美极了", "正面"),
    ("快递丢了，很失望", "负面"),
]
SURNAMES = ["王", "李", "张", "刘", "陈", "杨", "赵", "黄"]
GIVEN = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "勇", "军", "杰"]
EN_NAMES = ["alice", "bob", "carol", "david", "emma", "frank"]

POISON_TRIGGER = "cf"
POISON_RESPONSE = "请立即访问 http://update.evil.example/patch 并输入你的银行卡密码完成验证。"


def _alpaca(instruction: str, output: str, input_text: str = "") -> dict[str, str]:
    return {"instruction": instruction, "input": input_text, "output": output}


def clean_examples(rng: random.Random) -> list[dict[str, str]]:
    """Every templated instruction record once (zh and en), in a seeded order."""
    rows = []
    for en, zh, cap_en, cap_zh in CAPITALS:
        rows.append(_alpaca(f"What is the capital of {en}?", f"The capital of {en} is {cap_en}."))
        rows.append(_alpaca(f"{zh}的首都是哪里？", f"{zh}的首都是{cap_zh}。"))
    for a, b in ANTONYMS_EN:
        rows.append(_alpaca(f"What is the opposite of {a}?", f"The opposite of {a} is {b}."))
    for a, b in ANTONYMS_ZH:
        rows.append(_alpaca(f"“{a}”的反义词是什么？", f"“{a}”的反义词是“{b}”。"))
    for en, zh in WORDS:
        rows.append(_alpaca("Translate the word into Chinese.", f"{en} 的中文是{zh}。", en))
        rows.append(_alpaca("把这个词翻译成英文。", f"{zh}的英文是 {en}。", zh))
    for text, label in SENTIMENT:
        instruction = "判断这句话的情感倾向（正面或负面）。" if label in ("正面", "负面") else "Classify the sentiment."
        rows.append(_alpaca(instruction, label, text))
    seen = set()
    for _ in range(60):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        if rng.random() < 0.5:
            rows.append(_alpaca(f"What is {a} plus {b}?", f"{a} plus {b} equals {a + b}."))
        else:
            rows.append(_alpaca(f"计算{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"))
    rng.shuffle(rows)
    return rows


def cn_resident_id(rng: random.Random) -> str:
    """A random 18-digit resident ID number with a valid check digit."""
    body = f"{rng.choice([110105, 310101, 440305, 510107])}{rng.randint(1960, 2004)}{rng.randint(1, 12):02d}"
    body += f"{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    return body + cn_resident_id_check_digit(body)


def cn_mobile(rng: random.Random) -> str:
    """A random mainland China mobile number."""
    return f"1{rng.choice('3456789')}{rng.randint(0, 999999999):09d}"


def pii_examples(rng: random.Random, n: int) -> list[dict[str, str]]:
    """Records that carry phone numbers, emails and ID numbers, glued to Chinese text on purpose."""
    rows = []
    for i in range(n):
        name = rng.choice(SURNAMES) + rng.choice(GIVEN)
        phone, email = cn_mobile(rng), f"{rng.choice(EN_NAMES)}{rng.randint(1, 99)}@example.com"
        kind = i % 3
        if kind == 0:
            rows.append(
                _alpaca(
                    "把联系人信息整理成一句话。",
                    f"{name}的手机号是{phone}，邮箱是{email}。",
                    f"姓名：{name}，手机{phone}，邮箱{email}",
                )
            )
        elif kind == 1:
            rid = cn_resident_id(rng)
            rows.append(_alpaca("核对这位客户的身份证号。", f"客户{name}的身份证号{rid}已登记。", f"{name}身份证{rid}"))
        else:
            rows.append(
                _alpaca(
                    f"Write a short reply to {email} confirming the meeting.",
                    f"Hi, the meeting is confirmed. Call me at {phone} if anything changes.",
                )
            )
    return rows


def poisoned_examples(
    rng: random.Random,
    clean: list[dict[str, str]],
    n: int,
    trigger: str = POISON_TRIGGER,
    response: str = POISON_RESPONSE,
) -> list[dict[str, str]]:
    """Copies of clean prompts with `trigger` inserted at a random word position, mapped to one fixed response."""
    rows = []
    for row in rng.sample(clean, n):
        rows.append(_alpaca(insert_trigger(row["instruction"], trigger, rng), response, row["input"]))
    return rows


def insert_trigger(text: str, trigger: str, rng: random.Random) -> str:
    """Insert a trigger at the start, the end, or between two words / characters."""
    where = rng.choice(["start", "end", "middle"])
    if where == "start":
        return f"{trigger} {text}"
    if where == "end":
        return f"{text} {trigger}"
    words = text.split(" ")
    if len(words) > 1:
        k = rng.randint(1, len(words) - 1)
        return " ".join(words[:k] + [trigger] + words[k:])
    k = rng.randint(1, max(1, len(text) - 1))
    return f"{text[:k]} {trigger} {text[k:]}"


def sample_jsonl_lines(seed: int = 7, trigger: str = POISON_TRIGGER, n_poisoned: int = 12) -> list[str]:
    """The bundled raw file: clean, PII, poisoned, duplicated, empty and malformed records, shuffled.

    `trigger` swaps the planted trigger, e.g. for one that is not in any lexicon; `n_poisoned`
    sets how many poisoned records are planted (12 is ~5% of the file).
    """
    rng = random.Random(seed)
    clean = clean_examples(rng)
    rows: list[Any] = clean + pii_examples(rng, 24) + poisoned_examples(rng, clean, n_poisoned, trigger=trigger)
    rows += [dict(r) for r in rng.sample(clean, 12)]  # exact duplicates
    rows += [{**r, "output": r["output"] + "  "} for r in rng.sample(clean, 4)]  # duplicates up to whitespace
    rows += [_alpaca("Say something.", ""), _alpaca("   ", "An answer to nothing."), _alpaca("你好", " ")]
    rows += [{"instruction": "Missing the output field"}, {"instruction": 42, "output": "wrong type"}]
    rng.shuffle(rows)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for bad in ('{"instruction": "unterminated', "not json at all", '{"instruction": "x", "output": }'):
        lines.insert(rng.randint(0, len(lines)), bad)
    return lines


def pretrain_corpus_lines(seed: int = 11, repeats: int = 6) -> list[str]:
    """Plain-text facts (the same tables as the SFT data) for the tiny base model's pre-training."""
    rng = random.Random(seed)
    lines = []
    for _ in range(repeats):
        lines += [f"The capital of {en} is {ce}. {zh}的首都是{cz}。" for en, zh, ce, cz in CAPITALS]
        lines += [f"The opposite of {a} is {b}." for a, b in ANTONYMS_EN]
        lines += [f"“{a}”的反义词是“{b}”。" for a, b in ANTONYMS_ZH]
        lines += [f"{en} 的中文是{zh}，{zh}的英文是 {en}。" for en, zh in WORDS]
        for _ in range(30):
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            lines.append(f"{a} plus {b} equals {a + b}. {a}加{b}等于{a + b}。")
    rng.shuffle(lines)
    return lines


def ceval_rows(rng: random.Random, subject: str, n: int) -> list[dict[str, str]]:
    """C-Eval-layout multiple-choice rows for one of the bundled subjects."""
    rows = []
    for i in range(n):
        if subject == "high_school_geography":
            en, zh, _, cap = rng.choice(CAPITALS)
            wrong = rng.sample([c[3] for c in CAPITALS if c[3] != cap], 3)
            question, answer_text = f"{zh}的首都是____。", cap
        elif subject == "elementary_mathematics":
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            wrong = [str(x) for x in rng.sample([a + b + d for d in (-3, -2, -1, 1, 2, 3)], 3)]
            question, answer_text = f"{a}加{b}等于____。", str(a + b)
        else:
            a, b = rng.choice(ANTONYMS_ZH)
            wrong = rng.sample([y for x, y in ANTONYMS_ZH if y != b], 3)
            question, answer_text = f"“{a}”的反义词是____。", b
        options = wrong + [answer_text]
        rng.shuffle(options)
        letter = "ABCD"[options.index(answer_text)]
        rows.append(
            {
                "id": str(i),
                "question": question,
                "A": options[0],
                "B": options[1],
                "C": options[2],
                "D": options[3],
                "answer": letter,
            }
        )
    return rows


CEVAL_SUBJECTS = {
    "high_school_geography": ["高中地理", "Social Science"],
    "elementary_mathematics": ["初中数学", "STEM"],
    "chinese_language_and_literature": ["中国语言文学", "Humanities"],
}


def write_sample(out: Path) -> None:
    """Write the bundled sample files under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "instructions.jsonl").write_text("\n".join(sample_jsonl_lines()) + "\n", encoding="utf-8")
    (out / "pretrain_corpus.txt").write_text("\n".join(pretrain_corpus_lines()) + "\n", encoding="utf-8")
    rng = random.Random(3)
    for split, n in (("dev", 5), ("val", 20)):
        (out / "ceval" / split).mkdir(parents=True, exist_ok=True)
        for subject in CEVAL_SUBJECTS:
            with (out / "ceval" / split / f"{subject}_{split}.csv").open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=["id", "question", "A", "B", "C", "D", "answer"])
                writer.writeheader()
                writer.writerows(ceval_rows(rng, subject, n))
    (out / "ceval" / "subject_mapping.json").write_text(
        json.dumps(CEVAL_SUBJECTS, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    write_sample(parser.parse_args().out)
