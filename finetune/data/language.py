"""Language identification with py3langid (langid.py's model, offline, ~30k texts/s on one core)."""

from __future__ import annotations

import re
from functools import lru_cache

from finetune.data.text_quality import CODE_FENCE

_LETTERS = re.compile(r"[^\W\d_]", re.UNICODE)
# langid.py scores 97 languages; on short text it confuses neighbours (zh/yue/wuu/ja, en/fr), so
# the candidate set is the languages instruction data mostly comes in, and Chinese varieties count as zh.
CANDIDATES = ["zh", "en", "ja", "ko", "fr", "de", "es", "pt", "it", "ru", "ar", "vi", "th", "id", "tr", "nl", "pl"]
ALIASES = {"yue": "zh", "wuu": "zh"}
MIN_LETTERS = 20  # below this langid.py guesses; such texts are not filtered
SAMPLE_CHARS = 1000  # the language of a record shows in its first thousand characters; the rest costs time


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(CANDIDATES)
    return identifier


def detect_language(text: str) -> tuple[str, float]:
    """ISO 639-1 code and probability of a text's language, code blocks ignored; ('', 0.0) if too short to tell."""
    prose = CODE_FENCE.sub(" ", text)
    if len(_LETTERS.findall(prose)) < MIN_LETTERS:
        return "", 0.0
    code, prob = _identifier().classify(prose[:SAMPLE_CHARS])
    return ALIASES.get(code, code), float(prob)
