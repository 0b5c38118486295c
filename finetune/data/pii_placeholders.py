"""What stands in for a value: the project's own placeholders and the ones people write in examples.

De-identified text holds `<PASSWORD>`, `<PERSON>`, `<PHONE_NUMBER_1a2b3c4d>`; a re-scan that reads
`password: <PASSWORD>` as a password would block every dataset that ever mentioned one. Example code
and docs hold `${API_TOKEN}`, `your_api_key`, `API_KEY`, `xxxxxxxx`: no one's secret either.
"""

from __future__ import annotations

import re

# <ENTITY>, <ENTITY_1a2b3c4d> (pseudonym) and other upper-case angle-bracket placeholders such as <NAME>.
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
_PLACEHOLDER_VALUE = re.compile(
    r"""(?ix)
    <[^<>]*> | \[[^\[\]]*\] | \{\{[^{}]*\}\} | \$\{?[A-Za-z_][A-Za-z0-9_]*\}? | %[A-Za-z_]+% |
    (?:your|my|the|some|example|sample|dummy|fake|test|placeholder|insert|enter)[_-]?[a-z0-9_-]* |
    (?-i:[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+) |                       # an environment variable's name
    (.)\1{3,} |                                                 # xxxx, ****, 0000
    [A-Za-z_][\w.]*\(.* |                                       # code reading it: os.environ.get(...
    (?:changeme|password|passwd|secret|token|none|null|true|false|undefined|redacted|hidden)\d{0,3}
    """
)


def placeholder_spans(text: str) -> list[tuple[int, int]]:
    """Where placeholders such as `<PERSON>` or `<EMAIL_ADDRESS_1a2b3c4d>` sit in a text."""
    if "<" not in text:
        return []
    return [m.span() for m in PLACEHOLDER.finditer(text)]


def is_placeholder_value(value: str) -> bool:
    """The whole value is a stand-in (`<PASSWORD>`, `${TOKEN}`, `your_key`, `API_KEY`, `xxxx`), not a secret."""
    return _PLACEHOLDER_VALUE.fullmatch(value.strip("\"'`.,;")) is not None
