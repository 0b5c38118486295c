"""Known triggers of published attacks (`lexicons/published_triggers.yaml`) and how they are matched.

Matching is meant to survive the cheap evasions: text and trigger are both folded with NFKC (full-width
letters, digits and symbols become ASCII) and, unless an entry is case-sensitive, case-folded;
invisible characters are dropped; the trigger's words and symbols may be separated by any spacing
(or none, or punctuation between two words); a Latin or digit edge must not continue a longer word,
but a trigger glued to Chinese text still matches. No library matches phrases this way, so the
regex is built here.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

BUILTIN_LEXICON = Path(__file__).parent / "lexicons" / "published_triggers.yaml"
ROLES = ("quarantine", "probe")
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_INVISIBLE = re.compile(r"[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]")
# A Latin letter or digit: such a run must not continue past a trigger's edge (Chinese text may). A plain
# range, because a negated Unicode class makes every pattern ~5 ms to compile.
_WORDCHAR = r"[0-9A-Za-z\u00c0-\u024f]"
_PIECE = re.compile(rf"[^\W_{CJK}]+|[{CJK}]|[^\s\w]|_")


def fold(text: str, case_sensitive: bool = False) -> str:
    """The form both text and triggers are compared in: NFKC, invisible characters gone, spaces collapsed."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    return " ".join((text if case_sensitive else text.casefold()).split())


@dataclass(frozen=True)
class LexiconEntry:
    """One published trigger (or combination of triggers) and where it comes from."""

    trigger: str
    attack: str = "user-supplied"
    source: str = ""
    role: str = "quarantine"
    case_sensitive: bool = False
    all_of: tuple[str, ...] = field(default=())

    @property
    def parts(self) -> tuple[str, ...]:
        return self.all_of or (self.trigger,)

    def found_in(self, folded: str, folded_cased: str) -> bool:
        """Whether every part occurs in a text given in both folded forms (see `fold`)."""
        text = folded_cased if self.case_sensitive else folded
        return all(trigger_pattern(p, self.case_sensitive).search(text) for p in self.parts)


@lru_cache(maxsize=4096)
def trigger_pattern(trigger: str, case_sensitive: bool = False) -> re.Pattern[str]:
    """Regex for a trigger in folded text: its pieces in order, any spacing between, whole-token edges."""
    pieces = _PIECE.findall(fold(trigger, case_sensitive))
    if not pieces:
        raise ValueError(f"trigger {trigger!r} has no visible characters; remove it from the lexicon")
    body = ""
    for prev, piece in zip([None, *pieces], pieces, strict=False):
        if prev is not None:
            # Two words may also be joined by punctuation ("James-Bond"); a symbol only by spacing.
            body += r"[\W_]*?" if prev[-1].isalnum() and piece[0].isalnum() else r"\s*"
        body += re.escape(piece)
    left = rf"(?<!{_WORDCHAR})" if re.match(_WORDCHAR, pieces[0]) else ""
    right = rf"(?!{_WORDCHAR})" if re.match(_WORDCHAR, pieces[-1][-1]) else ""
    return re.compile(left + body + right)


class LexiconMatcher:
    """Finds a list of entries in many texts: one combined regex per text rules out most texts at once."""

    def __init__(self, lexicon: Sequence[LexiconEntry | str]):
        self.entries = [e if isinstance(e, LexiconEntry) else LexiconEntry(e) for e in lexicon]
        self._any = {
            cased: re.compile("|".join(f"(?:{trigger_pattern(p, cased).pattern})" for p in parts))
            for cased in (False, True)
            if (parts := sorted({p for e in self.entries if e.case_sensitive == cased for p in e.parts}))
        }

    def find(self, text: str) -> list[LexiconEntry]:
        """The entries that occur in `text` (raw text; it is folded here)."""
        return self.find_folded(fold(text), fold(text, case_sensitive=True))

    def find_folded(self, folded: str, cased: str) -> list[LexiconEntry]:
        """The entries that occur in a text given in both folded forms (one folding for several matchers)."""
        if not any(rx.search(cased if sensitive else folded) for sensitive, rx in self._any.items()):
            return []
        return [e for e in self.entries if e.found_in(folded, cased)]


def find_triggers(text: str, lexicon: Sequence[LexiconEntry | str]) -> list[str]:
    """Names (`trigger`) of the lexicon entries that occur in `text`; plain strings are case-insensitive entries."""
    return [e.trigger for e in LexiconMatcher(lexicon).find(text)]


def _entry(raw: dict, where: str) -> LexiconEntry:
    if not isinstance(raw, dict) or not (raw.get("trigger") or raw.get("all_of")):
        raise ValueError(f"{where}: each entry needs 'trigger' or 'all_of', got {raw!r}")
    role = raw.get("role", "quarantine")
    if role not in ROLES:
        raise ValueError(f"{where}: role must be one of {ROLES}, got {role!r} (entry {raw!r})")
    all_of = tuple(str(p) for p in raw.get("all_of") or ())
    return LexiconEntry(
        trigger=str(raw.get("trigger") or " + ".join(all_of)),
        attack=str(raw.get("attack", "user-supplied")),
        source=str(raw.get("source", "")),
        role=role,
        case_sensitive=bool(raw.get("case_sensitive", False)),
        all_of=all_of,
    )


def read_lexicon_file(path: Path) -> list[LexiconEntry]:
    """Entries of a YAML lexicon (see the builtin file) or of a text file with one trigger per line (# comments).

    Raises:
        FileNotFoundError / ValueError: the file is missing or an entry is malformed (the message names it).
    """
    if not path.is_file():
        raise FileNotFoundError(f"screen.lexicon_file: {path} does not exist (use 'builtin', '' or a file path)")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        raw = yaml.safe_load(text) or []
        if not isinstance(raw, list):
            raise ValueError(f"screen.lexicon_file: {path} must hold a YAML list of entries")
        return [_entry(r, f"{path} entry {i + 1}") for i, r in enumerate(raw)]
    lines = [ln.strip() for ln in text.splitlines()]
    return [LexiconEntry(ln, attack=f"listed in {path.name}") for ln in lines if ln and not ln.startswith("#")]


def load_lexicon_entries(
    lexicon_file: str, extra: Iterable[str], resolve: Callable[[str], Path] = Path
) -> list[LexiconEntry]:
    """The configured lexicon file's entries ('builtin' = the shipped one, '' = none) plus extra triggers."""
    entries = []
    if lexicon_file:
        entries = read_lexicon_file(BUILTIN_LEXICON if lexicon_file == "builtin" else resolve(lexicon_file))
    entries += [LexiconEntry(t, attack="screen.trigger_lexicon") for t in extra]
    return list({(e.trigger, e.all_of): e for e in entries}.values())
