"""The Label Studio labelling config: the prompt, three blinded answers, five 1-5 ratings each, a ranking, a comment."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from finetune.review.criteria import CRITERIA, LETTERS, MAX_SCORE, score_field

RANKING = "ranking"  # the Ranker's name; its result lists the letters best first
RANKING_LIST = "answers"  # the List object the Ranker orders
COMMENT = "comment"
PROMPT_FIELD = "prompt"


def answer_field(letter: str) -> str:
    """The task data key (and Text object name) of one blinded answer, e.g. `answer_a`."""
    return f"answer_{letter.lower()}"


def _answer_column(letter: str) -> str:
    ratings = "".join(
        f'<Header value={quoteattr(c.label)} size="6"/>'
        f'<Rating name="{score_field(letter, c.key)}" toName="{answer_field(letter)}" maxRating="{MAX_SCORE}" '
        f'required="true" perRegion="false"/>'
        for c in CRITERIA
    )
    return (
        '<View style="flex: 1; min-width: 0; padding: 8px; border: 1px solid #ddd; border-radius: 6px;">'
        f'<Header value="回答 {letter} / Answer {letter}"/>'
        f'<Text name="{answer_field(letter)}" value="${answer_field(letter)}"/>'
        f"{ratings}</View>"
    )


def label_config() -> str:
    """The XML config; rating names come from `score_field`, so pulled results map back to criteria."""
    columns = "".join(_answer_column(letter) for letter in LETTERS)
    return (
        "<View>"
        '<Header value="问题 / Prompt"/>'
        f'<Text name="{PROMPT_FIELD}" value="${PROMPT_FIELD}"/>'
        '<Header value="每个回答按五项标准打分 (1-5, 5 最好) / Rate each answer on five criteria (1-5, 5 best)" '
        'size="5"/>'
        f'<View style="display: flex; gap: 8px;">{columns}</View>'
        '<Header value="从好到差排序 (拖动) / Rank best (top) to worst (bottom)" size="5"/>'
        f'<List name="{RANKING_LIST}" value="$ranking_items" title="回答 / Answers"/>'
        f'<Ranker name="{RANKING}" toName="{RANKING_LIST}"/>'
        '<Header value="评语 / Comment" size="5"/>'
        f'<TextArea name="{COMMENT}" toName="{PROMPT_FIELD}" rows="3" maxSubmissions="1" editable="true"/>'
        "</View>"
    )


def ranking_items() -> list[dict[str, str]]:
    """The List object's items: one card per letter, no answer text (the columns above show it)."""
    return [{"id": letter, "title": f"回答 {letter} / Answer {letter}", "body": ""} for letter in LETTERS]
