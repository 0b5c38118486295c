"""Text normalisation and the named quality rules of the cleaning stage (CJK-aware, no word splitting).

Normalisation: Unicode NFC with full-width letters and digits folded (default), NFKC or NFC, control and zero-width
characters removed, mojibake repaired with ftfy, optional Traditional to Simplified Chinese with
OpenCC, whitespace collapsed. Rules (each a drop reason): mojibake left after repair, markup
residue, degenerate repetition (character runs, repeated lines, repeated n-grams) and a response
that echoes its prompt. The repetition measures follow Gopher's quality filters (Rae et al. 2021)
but count characters, so they work for Chinese; no library ships them for CJK text.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

import ftfy

_SPACES = re.compile(r"[ \t\u3000\xa0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# C0/C1 controls except tab and newline, zero-width characters and the BOM: invisible and never meant.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
# What GBK/UTF-8 round trips leave behind and ftfy cannot undo: the replacement character and the
# classic Chinese mojibake strings (锟斤拷 from U+FFFD pairs read as GBK; 烫/屯 from MSVC fill bytes).
_UNREPAIRABLE = re.compile(r"\ufffd|锟斤拷|烫烫烫|屯屯屯")
CODE_FENCE = re.compile(r"```.*?(?:```|$)", re.S)  # a fenced code block, or one left open
_MARKUP = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>|&(?:nbsp|amp|lt|gt|quot|#\d{2,5}|#x[0-9a-fA-F]{2,4});")
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)
MOJIBAKE_LEFT = "mojibake_left"
# ftfy's mojibake patterns all need a character outside ASCII, CJK punctuation, the CJK ideographs and
# the full-width forms (checked against ftfy.badness.MOJIBAKE_CATEGORIES in a test); text made only of
# those - most Chinese and English data - skips ftfy's scan, the most expensive part of normalising.
_OUTSIDE_PLAIN_ZH_EN = re.compile(r"[^\x00-\x7f\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
# Full-width digits and Latin letters only: NFKC would also turn Chinese punctuation (，：？！（）) into
# ASCII, which changes how a model tuned on the data punctuates Chinese.
_FULLWIDTH_ALNUM = {
    cp: cp - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A)) for cp in range(r[0], r[1] + 1)
}


@lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def normalise_text(
    text: str, form: str = "NFC+width", to_simplified: bool = False, repair_mojibake: bool = True
) -> tuple[str, list[str]]:
    """Normalise one turn; returns the text and the names of the fixes that changed it."""
    fixes = []
    if _OUTSIDE_PLAIN_ZH_EN.search(text) and ftfy.badness.is_bad(text):
        if repair_mojibake:
            repaired = ftfy.fix_encoding(text)
            if repaired != text:
                text = repaired
                fixes.append("mojibake_repaired")
        if not repair_mojibake or ftfy.badness.is_bad(text):
            fixes.append(MOJIBAKE_LEFT)  # not a fix: tells the mojibake rule without a second scan
    if form == "NFC+width":
        folded = text.translate(_FULLWIDTH_ALNUM)
        if folded != text:
            text = folded
            fixes.append("fullwidth_alnum_folded")
        form = "NFC"
    if form != "none":
        normal = unicodedata.normalize(form, text)
        if normal != text:
            text = normal
            fixes.append(f"unicode_{form.lower()}")
    visible = _INVISIBLE.sub("", text)
    if visible != text:
        text = visible
        fixes.append("invisible_chars_removed")
    if to_simplified:
        simplified = _t2s().convert(text)
        if simplified != text:
            text = simplified
            fixes.append("traditional_to_simplified")
    text = _SPACES.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [line.strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip(), fixes


def has_mojibake(text: str) -> bool:
    """Encoding damage ftfy cannot repair: replacement characters, 锟斤拷 and the like.

    What ftfy itself still finds bad after repair is reported by `normalise_text` as MOJIBAKE_LEFT.
    """
    return bool(_UNREPAIRABLE.search(text))


def markup_count(text: str) -> int:
    """HTML tags and entities outside fenced code blocks (code answers may show HTML on purpose)."""
    return len(_MARKUP.findall(without_code(text)))


def without_code(text: str, placeholder: str = "") -> str:
    """The text with fenced code blocks replaced (the regex only runs when a fence is there)."""
    return CODE_FENCE.sub(placeholder, text) if "```" in text else text


def has_char_run(text: str, longest: int) -> int:
    """Length of the first run of one non-space character longer than `longest` ('啊啊啊…', '!!!!'); 0 if none."""
    match = _char_run(longest).search(text)
    return len(match.group(0)) if match else 0


@lru_cache(maxsize=8)
def _char_run(longest: int) -> re.Pattern:
    return re.compile(r"(\S)\1{" + str(longest) + ",}")


def duplicate_line_fraction(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line (Gopher: > 0.3 is degenerate)."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 3:
        return 0.0
    return 1 - len(set(lines)) / len(lines)


def repeated_ngram_fraction(text: str, n: int = 10) -> float:
    """Share of characters covered by character n-grams that occur more than once (Gopher, per character)."""
    chars = _NOT_WORD.sub("", text)
    if len(chars) < 2 * n:
        return 0.0
    grams = [chars[i : i + n] for i in range(len(chars) - n + 1)]
    if len(set(grams)) == len(grams):  # the common case: nothing repeats
        return 0.0
    counts = Counter(grams)
    covered = bytearray(len(chars))
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = b"\x01" * n
    return sum(covered) / len(chars)


def canonical(text: str) -> str:
    """Case-folded text without whitespace or punctuation: what duplicate and echo checks compare."""
    return _NOT_WORD.sub("", text.casefold())


def echoes_prompt(prompt: str, response: str) -> bool:
    """The response only repeats the prompt (same words, ignoring case, spaces and punctuation)."""
    p, r = canonical(prompt), canonical(response)
    return bool(r) and len(r) >= 0.8 * len(p) and (r == p or (len(r) <= len(p) and r in p))
