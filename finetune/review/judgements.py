"""Expert judgements: validated from any source, stored per packet, and unblinded with the key.

A judgement is one rater's verdict on one item: five 1-5 scores for each lettered answer, a best-to-worst
ranking of the letters and an optional comment. Sources (Label Studio, CSV/XLSX sheets) are upserted into
`judgements.jsonl` in the packet folder, keyed by (item, rater), so a re-import replaces a rater's earlier
verdict instead of counting it twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.data.records import write_jsonl
from finetune.review.criteria import CRITERION_KEYS, LETTERS, MAX_SCORE, MIN_SCORE, score_field
from finetune.review.packet import Packet, ReviewError

JUDGEMENTS_FILE = "judgements.jsonl"
RATER_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")


@dataclass(frozen=True)
class Judgement:
    """One rater's blinded verdict on one item."""

    item_id: str
    rater: str
    scores: dict[str, dict[str, int]]  # letter -> criterion -> 1..5
    ranking: tuple[str, ...]  # letters, best first
    comment: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ranking": list(self.ranking)}


@dataclass(frozen=True)
class ArmJudgement:
    """A judgement after unblinding: scores and rank (1 = best) per arm."""

    item_id: str
    rater: str
    scores: dict[str, dict[str, int]]  # arm -> criterion -> 1..5
    rank: dict[str, int]  # arm -> 1..3


@dataclass
class Collected:
    """Judgements read from one source, and the rows that could not be used (with where and why)."""

    judgements: list[Judgement] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unanswered: int = 0  # rows or tasks nobody has filled in yet


def parse_score(value: Any, where: str) -> int:
    """A 1-5 integer score, or ReviewError naming where it came from."""
    text = str(value).strip() if value is not None else ""
    if not re.fullmatch(r"\d+(\.0+)?", text) or not MIN_SCORE <= int(float(text)) <= MAX_SCORE:
        raise ReviewError(f"{where}: a score must be an integer {MIN_SCORE}-{MAX_SCORE}, got {text or 'nothing'!r}")
    return int(float(text))


def parse_ranking(value: Any, where: str) -> tuple[str, ...]:
    """'B>A>C', 'B A C', 'BAC' or a list: each letter once, best first."""
    letters = value if isinstance(value, list | tuple) else re.findall(r"[A-Za-z]", str(value or ""))
    ranking = tuple(str(x).strip().upper() for x in letters)
    if sorted(ranking) != sorted(LETTERS):
        raise ReviewError(
            f"{where}: the ranking must name each of {', '.join(LETTERS)} once, best first (e.g. B>A>C), got {value!r}"
        )
    return ranking


def make_judgement(
    item_id: str, rater: str, fields: dict[str, Any], ranking: Any, comment: str, source: str, where: str
) -> Judgement:
    """Validate one verdict; `fields` maps `score_field(letter, criterion)` to the raw score.

    Raises:
        ReviewError: a score or the ranking is missing or out of range, or the rater is not a plain code.
    """
    if not RATER_CODE.match(rater or ""):
        raise ReviewError(
            f"{where}: rater must be a short code (letters, digits, . _ - :), not a name or e-mail; got {rater!r}"
        )
    scores = {
        letter: {c: parse_score(fields.get(score_field(letter, c)), f"{where} {score_field(letter, c)}")
                 for c in CRITERION_KEYS}
        for letter in LETTERS
    }  # fmt: skip
    return Judgement(item_id, rater, scores, parse_ranking(ranking, f"{where} ranking"), comment or "", source)


def read_judgements(packet: Packet) -> list[Judgement]:
    """Every stored judgement of the packet (empty before the first import)."""
    path = Path(packet.dir) / JUDGEMENTS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Judgement(**(r | {"ranking": tuple(r["ranking"])})) for r in rows]


def store_judgements(packet: Packet, new: list[Judgement]) -> list[Judgement]:
    """Upsert by (item, rater); returns everything now stored.

    Raises:
        ReviewError: a judgement names an item that is not in this packet.
    """
    known = {item.item_id for item in packet.items()}
    unknown = sorted({j.item_id for j in new} - known)
    if unknown:
        raise ReviewError(f"items {unknown[:5]} are not in packet {packet.packet_id}; was the sheet made for another?")
    merged = {(j.item_id, j.rater): j for j in read_judgements(packet)}
    merged |= {(j.item_id, j.rater): j for j in new}
    ordered = [merged[k] for k in sorted(merged)]
    write_jsonl(Path(packet.dir) / JUDGEMENTS_FILE, [j.to_dict() for j in ordered])
    return ordered


def unblind(judgements: list[Judgement], key: dict[str, dict[str, str]]) -> list[ArmJudgement]:
    """Replace letters by arms using the packet key."""
    out = []
    for j in judgements:
        letters = key[j.item_id]
        out.append(
            ArmJudgement(
                j.item_id,
                j.rater,
                {letters[letter]: scores for letter, scores in j.scores.items()},
                {letters[letter]: position for position, letter in enumerate(j.ranking, start=1)},
            )
        )
    return out
