"""Parse JSON and JSON Lines rows one by one, salvaging the good rows of a damaged file.

`json.loads` on a whole `.json` file loses every record when one byte is wrong (a truncated download,
an element with a stray quote) and raises RecursionError on deeply nested input. Here a `.json` array
is split into its elements first, so each element parses or is quarantined on its own, with its line.
The splitter is iterative (no recursion, any depth) and only runs when the C decoder fails or a value
has many brackets. No JSON library we depend on reports element boundaries after an error, so this
small scanner is written here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

MAX_DEPTH = 100  # far deeper than any instruction record; deeper values would exhaust recursion downstream

# One string literal (possessive, so an unterminated one fails fast), one structural character, or a lone
# quote (a string that never closes: the element cannot be delimited).
_TOKEN = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[\]{},]|"')
_WHITESPACE = re.compile(r"[ \t\n\r]*")
UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept as surrogate escapes
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DECODER = json.JSONDecoder()


class Parsed(NamedTuple):
    """One row: where it starts, the value (when it parsed) or why not, and its text (kept for quarantine)."""

    line: int
    value: Any
    error: str | None
    text: str


class ValueTooDeep(ValueError):
    """A JSON value nests deeper than MAX_DEPTH."""


class LoneSurrogate(ValueError):
    """A JSON string escapes half of a UTF-16 surrogate pair ("\\ud800"): valid JSON, but no character, so
    no later stage could write or encode it."""


def _lone_surrogate_at(value: Any, path: str = "") -> str | None:
    """Where in a parsed value a string (or key) holds a lone surrogate, as "conversations[0].value"."""
    if isinstance(value, str):
        return path or "the row" if _SURROGATE.search(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        inner = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and _SURROGATE.search(key):
            return f"the key of {inner}"
        if (found := _lone_surrogate_at(item, inner)) is not None:
            return found
    return None


def _scan(text: str, pos: int, end: int | None = None) -> tuple[int | None, int]:
    """From `pos`, where the value there ends (the index of the `,` or `]` that closes it inside an array,
    or `end`/None at the end of the text) and its nesting depth. None when a string never closes."""
    depth = deepest = 0
    for match in _TOKEN.finditer(text, pos, len(text) if end is None else end):
        char = match.group()[0]
        if char == '"':
            if len(match.group()) == 1:
                return None, deepest
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            if depth == 0:
                return match.start(), deepest
            depth -= 1
        elif depth == 0:  # a comma between elements
            return match.start(), deepest
    return end, deepest


def nesting_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest (brackets inside strings do not count)."""
    depth = deepest = 0
    for match in _TOKEN.finditer(text):
        char = match.group()[0]
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def _check_depth(text: str, start: int = 0, end: int | None = None) -> None:
    end = len(text) if end is None else end
    if text.count("[", start, end) + text.count("{", start, end) > MAX_DEPTH:  # cheap: most rows stop here
        depth = nesting_depth(text[start:end])
        if depth > MAX_DEPTH:
            raise ValueTooDeep(f"JSON nested {depth} levels deep; at most {MAX_DEPTH} levels are read")


def loads(text: str) -> Any:
    """`json.loads` that refuses values nested deeper than MAX_DEPTH.

    Raises:
        ValueError: invalid JSON (json.JSONDecodeError), too deep (ValueTooDeep) or a string that escapes
            half a surrogate pair (LoneSurrogate).
    """
    _check_depth(text)
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueTooDeep("JSON nested too deeply to parse") from None
    # Only an escape can make a lone surrogate (decoded UTF-8 holds none), so most rows skip the walk.
    if _SURROGATE_ESCAPE.search(text) and (where := _lone_surrogate_at(value)) is not None:
        raise LoneSurrogate(
            f"a \\u escape in {where} is half of a UTF-16 surrogate pair, not a character: "
            "fix the exporting tool or drop the escape"
        )
    return value


def describe(exc: ValueError, line: int | None = None) -> str:
    """The quarantine detail of a JSON error; `line`: the file line the parsed text started on."""
    if isinstance(exc, json.JSONDecodeError):
        where = f"line {line + exc.lineno - 1} column {exc.colno}" if line is not None else f"column {exc.colno}"
        return f"invalid JSON: {exc.msg} at {where}"
    return str(exc)


def parse_line(raw: bytes | str, lineno: int) -> Parsed:
    """One JSON Lines row; invalid UTF-8, invalid JSON and too-deep values are errors, never exceptions."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")  # -sig: tolerate a BOM (Windows exports)
        except UnicodeDecodeError as exc:
            return Parsed(lineno, None, f"invalid UTF-8 at byte {exc.start}", raw.decode("utf-8", errors="replace"))
    else:
        text = raw
    try:
        return Parsed(lineno, loads(text), None, text)
    except ValueError as exc:
        return Parsed(lineno, None, describe(exc), text)


class _Lines:
    """Line numbers of increasing positions in a text, counted incrementally."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _skip_ws(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def iter_document(text: str) -> Iterator[Parsed]:
    """The rows of a `.json` file's text (decoded with surrogateescape, so bad bytes are visible per row).

    An array yields one row per element; a file of several values is read as JSON Lines; a single object
    is one row. A damaged element is an error row and the next element is read; a file that ends inside
    the array yields its complete elements, then one error row for the truncated rest.
    """
    pos = _skip_ws(text, 0)
    if pos == len(text):
        return
    if text[pos] != "[":
        yield from _non_array(text, pos)
        return
    lines, pos = _Lines(text), pos + 1
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            yield Parsed(lines.at(pos), None, "truncated: the file ends before the array's closing ']'", "")
            return
        if text[pos] == "]":
            break
        line = lines.at(pos)
        end = _element_end(text, pos)
        if end is None:
            why = "truncated: the file ends inside this element (or a string in it never closes)"
            yield Parsed(line, None, why + "; the rest of the file is this one row", _printable(text[pos:]))
            return
        yield _element(text, pos, end, line)
        pos = end + 1 if text[end] == "," else end
    rest = _skip_ws(text, pos + 1)
    if rest < len(text):
        yield Parsed(lines.at(rest), None, "data after the array's closing ']'", _printable(text[rest:]))


def _element_end(text: str, pos: int) -> int | None:
    """Index of the `,` or `]` after the element at `pos` (C decoder first, the scanner when it fails)."""
    try:
        _, end = _DECODER.raw_decode(text, pos)
        after = _skip_ws(text, end)
        if after < len(text) and text[after] in ",]":
            return after
    except (json.JSONDecodeError, RecursionError):
        pass
    end, _ = _scan(text, pos)
    return end


def _element(text: str, start: int, end: int, line: int) -> Parsed:
    chunk = text[start:end].rstrip()
    if UNDECODABLE.search(chunk):
        return Parsed(line, None, "invalid UTF-8 bytes in this element", _printable(chunk))
    try:
        return Parsed(line, loads(chunk), None, chunk)
    except ValueError as exc:
        return Parsed(line, None, describe(exc, line), chunk)


def _non_array(text: str, pos: int) -> Iterator[Parsed]:
    try:
        _, end = _DECODER.raw_decode(text, pos)
        several = _skip_ws(text, end) < len(text)
    except (json.JSONDecodeError, RecursionError):
        several = False
    if not several:  # one object (or one broken value): the whole file is one row
        yield _element(text, pos, len(text), text.count("\n", 0, pos) + 1)
        return
    # Several values, one per line: JSON Lines saved as .json (Hugging Face's json loader reads these too).
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        if UNDECODABLE.search(raw):
            yield Parsed(lineno, None, "invalid UTF-8 bytes in this line", _printable(raw))
        else:
            yield parse_line(raw, lineno)
