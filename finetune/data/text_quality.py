"""Text normalisation and the named quality rules of the cleaning stage (CJK-aware, no word splitting).

Normalisation: Unicode NFC with full-width letters and digits folded (default), NFKC or NFC, control,
zero-width and bidirectional-override characters removed, mojibake repaired with ftfy, optional
Traditional to Simplified Chinese with OpenCC, whitespace collapsed. Rules (each a drop reason):
mojibake left after repair, markup residue, degenerate repetition (letter runs, repeated lines,
repeated n-grams) and a response that echoes its prompt. The repetition measures follow Gopher's
quality filters (Rae et al. 2021) but count characters, so they work for Chinese; no library ships
them for CJK text. The cleaning stage applies the markup and repetition measures to the prose of a
record's responses (outside code blocks), not to its prompts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import ftfy
import numpy as np

from finetune.data.char_windows import GOLDEN, alnum_only, code_points, rolling_hashes, window_starts

_SPACES = re.compile(r"[ \t\u3000\xa0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# Whatever the spacing rules below would change: a carriage return, a run _SPACES would rewrite, or
# white space at a line's edge (\s is str.isspace, what strip() removes; "\n\n" matches too). Text
# without any needs only strip(), and most text has none.
_SPACING_TO_FIX = re.compile(r"[\r\t\u3000\xa0]|  |\s\n|\n\s")
# C0/C1 controls except tab and newline, zero-width characters and the BOM: invisible and never meant.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
# Bidirectional embeddings, overrides and isolates (U+202A-202E, U+2066-2069): they make text display in
# another order than the model reads it ("Trojan Source"), so a reviewer and the model see different
# things. Counted apart from the other invisible characters. LRM/RLM (U+200E/F) stay: Arabic and Hebrew
# text uses them legitimately.
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
BIDI_FIX = "bidi_controls_removed"
# What GBK/UTF-8 round trips leave behind and ftfy cannot undo: the replacement character and the
# classic Chinese mojibake strings (锟斤拷 from U+FFFD pairs read as GBK; 烫/屯 from MSVC fill bytes).
_UNREPAIRABLE = re.compile(r"\ufffd|锟斤拷|烫烫烫|屯屯屯")
CODE_FENCE = re.compile(r"```.*?(?:```|$)", re.S)  # a fenced code block, or one left open
_MARKUP = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>|&(?:nbsp|amp|lt|gt|quot|#\d{2,5}|#x[0-9a-fA-F]{2,4});")
# A prompt that asks for markup (or hands some over to convert or explain) makes tags in the answer the
# requested output, not residue of a scraped page.
_MARKUP_REQUEST = re.compile(
    r"(?i:\b(?:x?html\d?|xml|svg|jsx|vue|css|markup|web ?pages?|websites?|landing pages?|tags?|rss|"
    r"atom feed|sitemap|email template|react|angular|svelte)\b)|网页|网站|页面|标签|超文本|前端|组件"
)
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)
_OWNER_MIX = np.uint64(GOLDEN)
MOJIBAKE_LEFT = "mojibake_left"
# ftfy's mojibake patterns all need a character outside ASCII, CJK punctuation, the CJK ideographs and
# the full-width forms (checked against ftfy.badness.MOJIBAKE_CATEGORIES in a test); text made only of
# those - most Chinese and English data - skips ftfy's scan, the most expensive part of normalising.
_OUTSIDE_PLAIN_ZH_EN = re.compile(r"[^\x00-\x7f\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
# Full-width digits and Latin letters only: NFKC would also turn Chinese punctuation (，：？！（）) into
# ASCII, which changes how a model tuned on the data punctuates Chinese.
_FULLWIDTH_ALNUM_CHAR = re.compile(r"[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]")
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
        if _FULLWIDTH_ALNUM_CHAR.search(text):  # translate() costs ~10x a search on text without any
            text = text.translate(_FULLWIDTH_ALNUM)
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
    unbidi = _BIDI.sub("", text)
    if unbidi != text:
        text = unbidi
        fixes.append(BIDI_FIX)
    if to_simplified:
        simplified = _t2s().convert(text)
        if simplified != text:
            text = simplified
            fixes.append("traditional_to_simplified")
    if not _SPACING_TO_FIX.search(text):
        return text.strip(), fixes
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


def markup_requested(prompt: str) -> bool:
    """The prompt asks for markup (HTML, XML, SVG, a web page) or contains some to convert or explain."""
    return bool(_MARKUP_REQUEST.search(prompt) or _MARKUP.search(prompt))


def without_code(text: str, placeholder: str = "") -> str:
    """The text with fenced code blocks replaced (the regex only runs when a fence is there)."""
    return CODE_FENCE.sub(placeholder, text) if "```" in text else text


def has_char_run(text: str, longest: int) -> int:
    """Length of the first run of one letter longer than `longest` ('啊啊啊…', 'aaaa…'); 0 if none.

    Letters only: runs of punctuation and symbols are separators and rules ('-----', '=====', '*****'
    in receipts, tables and ASCII art), and digit runs are numbers; neither is degenerate text.
    """
    match = _char_run(longest).search(text)
    return len(match.group(0)) if match else 0


@lru_cache(maxsize=8)
def _char_run(longest: int) -> re.Pattern:
    return re.compile(r"([^\W\d_])\1{" + str(longest) + ",}")


def duplicate_line_fraction(text: str) -> float:
    """Share of the characters of non-empty lines that sit in lines repeating an earlier line.

    Gopher's character-weighted measure rather than its line count: short lines that repeat by design
    (a screenplay's speaker names, a song's chorus markers, list separators) weigh little, while a
    response looping over whole sentences weighs fully.
    """
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 3:
        return 0.0
    seen: set[str] = set()
    repeated = 0
    for line in lines:
        if line in seen:
            repeated += len(line)
        seen.add(line)
    return repeated / sum(map(len, lines))


def repeated_ngram_fractions(texts: Sequence[str], n: int = 10) -> np.ndarray:
    """Per text, the share of characters covered by character n-grams that occur more than once in it
    (Gopher's measure, counted in characters; punctuation and spaces ignored).

    One vectorised pass over a batch: a Python set of every n-gram of every turn cost more than all
    other cleaning rules together.
    """
    codes, lengths = alnum_only(*code_points(texts))  # punctuation and spaces do not count
    fractions = np.zeros(len(texts))
    counts = np.where(lengths >= 2 * n, lengths - n + 1, 0)  # shorter texts count as not repetitive
    if not counts.any():
        return fractions
    starts = window_starts(lengths, counts)
    owner = np.repeat(np.arange(len(texts), dtype=np.uint64), counts)
    keys = rolling_hashes(codes, n)[starts] ^ (owner * _OWNER_MIX)  # equal n-grams of different texts differ
    import pandas as pd  # here, not at module level: most importers of this module never need it

    repeated = pd.Series(keys).duplicated(keep=False).to_numpy()  # a hash table, no sort
    if not repeated.any():
        return fractions
    # A character is covered when a repeated n-gram starts at most n - 1 characters before it. Such an
    # n-gram lies inside one text, so coverage never leaks into the next text.
    latest = np.full(codes.size, -n, dtype=np.int64)
    latest[starts[repeated]] = starts[repeated]
    covered = (np.arange(codes.size) - np.maximum.accumulate(latest)) < n
    measured = np.flatnonzero(counts)
    text_at = (np.cumsum(lengths) - lengths)[measured]
    # Segments run to the next measured text; characters of shorter texts between them are never covered.
    fractions[measured] = np.add.reduceat(covered, text_at) / lengths[measured]
    return fractions


def canonical(text: str) -> str:
    """Case-folded text without whitespace or punctuation: what duplicate and echo checks compare."""
    return _NOT_WORD.sub("", text.casefold())


def echoes_prompt(prompt: str, response: str) -> bool:
    """The response only repeats the prompt (same words, ignoring case, spaces and punctuation)."""
    r = canonical(response)
    if not r or len(r) > len(prompt):  # canonical(prompt) is never longer than the prompt: no need to make it
        return False
    p = canonical(prompt)
    return len(r) >= 0.8 * len(p) and (r == p or (len(r) <= len(p) and r in p))
