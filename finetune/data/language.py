"""Language identification with py3langid (langid.py's model, offline, ~30k texts/s on one core)."""

from __future__ import annotations

import re
from functools import lru_cache

from finetune.data.text_quality import without_code

_NOT_LETTERS = re.compile(r"[\W\d_]+", re.UNICODE)  # counting what is left after sub() beats findall()
# langid.py scores 97 languages; on short text it confuses neighbours (zh/yue/wuu/ja, en/fr), so
# the candidate set is the languages instruction data mostly comes in, and Chinese varieties count as zh.
CANDIDATES = ["zh", "en", "ja", "ko", "fr", "de", "es", "pt", "it", "ru", "ar", "vi", "th", "id", "tr", "nl", "pl"]
ALIASES = {"yue": "zh", "wuu": "zh"}
MIN_LETTERS = 20  # below this langid.py guesses; such texts are not filtered
# langid.py was built for tweet-length text and its cost grows with the length: the first 400
# characters tell the language of a record as well as the whole of it would.
SAMPLE_CHARS = 400
# Script decides Chinese without the classifier (which costs ~0.2 ms a record): letters mostly Han
# ideographs and no kana or hangul can only be Chinese among the candidates (Japanese writes kana).
_NOT_HAN = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af\u1100-\u11ff]")
HAN_SHARE = 0.5


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(CANDIDATES)
    return identifier


def detect_language(text: str) -> tuple[str, float]:
    """ISO 639-1 code and probability of a text's language, code blocks ignored; ('', 0.0) if too short to tell."""
    prose = without_code(text, " ")
    letters = len(_NOT_LETTERS.sub("", prose))
    if letters < MIN_LETTERS:
        return "", 0.0
    sample = prose[:SAMPLE_CHARS]
    if len(_NOT_HAN.sub("", prose)) >= HAN_SHARE * letters and not _KANA_HANGUL.search(sample):
        return "zh", 1.0
    code, prob = _identifier().classify(sample)
    return ALIASES.get(code, code), float(prob)
