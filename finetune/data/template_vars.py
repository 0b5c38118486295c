"""Unfilled template variables (`{{name}}`, `{{author}}`) left in instruction data.

LLaMA-Factory's identity.json ships with `{{name}}` and `{{author}}` for users to replace before
training; trained as they are, the model learns to call itself "{{name}}". A placeholder in prose is a
data error: filled from `ingest.template_variables` when given, otherwise the record is quarantined.
Inside code (fenced blocks or inline backticks) `{{x}}` is Jinja/Vue/Handlebars syntax and is left alone.
"""

from __future__ import annotations

import re
from collections import Counter

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)  # an unclosed fence runs to the end


class TemplateVariables:
    """Fills configured placeholders in prose and reports the ones left; `filled` counts replacements."""

    def __init__(self, values: dict[str, str], flag_unfilled: bool = True):
        self.values, self.flag_unfilled = dict(values), flag_unfilled
        self.filled: Counter[str] = Counter()

    def _fill_prose(self, text: str, unfilled: list[str]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in self.values:
                self.filled[name] += 1
                return self.values[name]
            unfilled.append(name)
            return match.group()

        return PLACEHOLDER.sub(replace, text)

    def fill(self, text: str) -> tuple[str, list[str]]:
        """The text with known placeholders filled outside code, and the names of those left unfilled."""
        if "{{" not in text:  # the common case costs one substring search
            return text, []
        unfilled: list[str] = []
        parts, end = [], 0
        for code in _CODE.finditer(text):
            parts += [self._fill_prose(text[end : code.start()], unfilled), code.group()]
            end = code.end()
        parts.append(self._fill_prose(text[end:], unfilled))
        return "".join(parts), (unfilled if self.flag_unfilled else [])

    def fill_messages(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str | None]:
        """Every turn filled, and a quarantine detail naming the unfilled placeholders (None: none left)."""
        out, problems, missing = [], [], {}
        for i, m in enumerate(messages):
            text, unfilled = self.fill(m["content"])
            out.append({"role": m["role"], "content": text})
            if unfilled:
                missing |= dict.fromkeys(unfilled)
                problems.append(
                    f"turn {i} ({m['role']}) has " + ", ".join("{{" + n + "}}" for n in dict.fromkeys(unfilled))
                )
        if not problems:
            return out, None
        fix = "{" + ", ".join(f"{n}: ..." for n in missing) + "}"
        return out, "; ".join(problems) + f" (an unfilled template placeholder; set ingest.template_variables: {fix})"
