"""What experts judge: the five criteria of the source articles and the three blinded letters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Criterion:
    """One 1-5 rating criterion; 5 is always best (for hallucinations: none seen)."""

    key: str
    zh: str
    en: str
    hint: str

    @property
    def label(self) -> str:
        return f"{self.zh} {self.en}"


CRITERIA = (
    Criterion("relevance", "相关性", "relevance", "回答是否切题 / answers the question asked"),
    Criterion("accuracy", "准确性", "accuracy", "事实与计算是否正确 / facts and numbers are right"),
    Criterion("professionalism", "专业性", "professionalism", "用语与深度是否专业 / expert wording and depth"),
    Criterion("style_fit", "风格符合度", "style fit", "是否符合要求的风格与格式 / the expected style and format"),
    Criterion("hallucination", "幻觉减少", "fewer hallucinations", "5 = 没有编造内容 / nothing made up"),
)
CRITERION_KEYS = tuple(c.key for c in CRITERIA)
LETTERS = ("A", "B", "C")
MIN_SCORE, MAX_SCORE = 1, 5


def score_field(letter: str, criterion: str) -> str:
    """The name of one rating, shared by the Label Studio config and the CSV/XLSX columns (e.g. `A_accuracy`)."""
    return f"{letter}_{criterion}"
