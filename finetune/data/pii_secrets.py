"""Secrets in text: detect-secrets' plugins as one Presidio recognizer (entity SECRET).

detect-secrets (Yelp) is the maintained scanner for secrets in code and config; its plugins know
vendor token shapes (AWS, Slack, Stripe, Twilio, GitLab, npm, PyPI, ...) and its KeywordDetector
finds values assigned to secret-sounding names (`password = ...`, `db_secret: ...`). Two gaps for
instruction data are filled here: KeywordDetector leaves out `token`/`credential`/`auth` names, and
AWS's secret-key rule needs quotes, so an unquoted `aws_secret_access_key = <40 chars>` line in a
pasted config is missed. For those, a value beside such a name counts when detect-secrets' own Shannon
entropy says it is random-looking. Values that are placeholders (`<PASSWORD>`, `${TOKEN}`,
`your_api_key`, `API_KEY`, `xxxx`) are never secrets.
"""

from __future__ import annotations

import string
from functools import lru_cache

import regex
from presidio_analyzer import EntityRecognizer, RecognizerResult

from finetune.data.pii_placeholders import is_placeholder_value

ENTITY = "SECRET"
_NAME = r"[A-Za-z0-9_.-]*(?:secret|token|passw(?:or)?d|passwd|pwd|api[_-]?key|access[_-]?key|private[_-]?key|auth[_-]?key|credential|client[_-]?key)[A-Za-z0-9_.-]*"  # noqa: E501
# `name = value`, `name: value`, `"name": "value"`, `name := value`, `name => value`, `NAME=value` (env files).
_ASSIGNMENT = regex.compile(
    rf"(?i)(?<![A-Za-z0-9])(?:{_NAME})[\"'\]]{{0,2}}\s*(?::=|=>|==?|:)\s*[\"'`]?(?P<value>[^\s\"'`,;)}}]{{8,}})"
)
_BASE64 = string.ascii_letters + string.digits + "+/=_-"
_ENTROPY_LIMITS = {"hex": 3.0, "base64": 3.5}  # detect-secrets' hex limit; base64 lower for 16-40 char values
_SCORE = 0.8


@lru_cache(maxsize=1)
def _plugins() -> tuple:
    from detect_secrets.plugins.artifactory import ArtifactoryDetector
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.discord import DiscordBotTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.mailchimp import MailchimpDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.sendgrid import SendGridDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.square_oauth import SquareOAuthDetector
    from detect_secrets.plugins.stripe import StripeDetector
    from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
    from detect_secrets.plugins.twilio import TwilioKeyDetector

    # Shapes the project's own recognizers already report under their own entity (AWS key ids,
    # GitHub tokens, OpenAI keys, JWTs, private keys, IPs) are matched again here only through AWS's
    # secret-key rule; overlapping hits resolve to one span.
    return tuple(
        cls()
        for cls in (
            ArtifactoryDetector, AWSKeyDetector, AzureStorageKeyDetector, BasicAuthDetector,
            DiscordBotTokenDetector, GitLabTokenDetector, MailchimpDetector, NpmDetector, PypiTokenDetector,
            SendGridDetector, SlackDetector, SquareOAuthDetector, StripeDetector, TelegramBotTokenDetector,
            TwilioKeyDetector,
        )
    )  # fmt: skip


@lru_cache(maxsize=1)
def _keyword_detector():
    from detect_secrets.plugins.keyword import CONFIG_DENYLIST_REGEX_TO_GROUP, KeywordDetector

    return KeywordDetector(), CONFIG_DENYLIST_REGEX_TO_GROUP


@lru_cache(maxsize=1)
def _entropy():
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString

    return {"hex": HexHighEntropyString(), "base64": Base64HighEntropyString()}


def looks_random(value: str) -> bool:
    """detect-secrets' Shannon entropy of the value above the limit for its alphabet (hex or base64)."""
    kind = "hex" if all(c in string.hexdigits for c in value) else "base64"
    if kind == "base64" and not all(c in _BASE64 for c in value):
        return False
    return _entropy()[kind].calculate_shannon_entropy(value) > _ENTROPY_LIMITS[kind]


def _spans(text: str, value: str, start: int = 0) -> list[tuple[int, int]]:
    spans, at = [], text.find(value, start)
    while at >= 0:
        spans.append((at, at + len(value)))
        at = text.find(value, at + len(value))
    return spans


class SecretRecognizer(EntityRecognizer):
    """Vendor tokens, keyword assignments and random-looking values assigned to secret-sounding names."""

    def __init__(self) -> None:
        super().__init__(supported_entities=[ENTITY], supported_language="en", name="SecretRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        if ENTITY not in entities or not text.isascii() and not _has_ascii_assignment(text):
            return []
        found: set[tuple[int, int]] = set()
        for plugin in _plugins():
            for value in plugin.analyze_string(text):
                if len(value) >= 8 and not is_placeholder_value(value):
                    found.update(_spans(text, value))
        keyword, regexes = _keyword_detector()
        for line_start, line in _lines_with_assignments(text):
            for value in keyword.analyze_string(line, regexes):
                value = value.strip()
                if _secret_like(value):
                    found.update((line_start + s, line_start + e) for s, e in _spans(line, value))
            for m in _ASSIGNMENT.finditer(line):
                value = m.group("value")
                if not is_placeholder_value(value) and looks_random(value):
                    found.add((line_start + m.start("value"), line_start + m.end("value")))
        return [RecognizerResult(ENTITY, s, e, _SCORE) for s, e in sorted(found)]


def _secret_like(value: str) -> bool:
    """A keyword assignment's value that can be a password: one token, not a placeholder, not prose."""
    if len(value) < 6 or any(c.isspace() for c in value) or not value.isascii() or is_placeholder_value(value):
        return False
    classes = sum(
        (any(c.islower() for c in value), any(c.isupper() for c in value), any(c.isdigit() for c in value),
         any(not c.isalnum() for c in value))
    )  # fmt: skip
    return classes >= 2


_ASSIGNMENT_SIGN = regex.compile(r"[=:]")


def _has_ascii_assignment(text: str) -> bool:
    return bool(_ASSIGNMENT_SIGN.search(text))


def _lines_with_assignments(text: str):
    """(offset, line) of each line holding `=` or `:` (the only lines an assignment can be on)."""
    at = 0
    for line in text.split("\n"):
        if "=" in line or ":" in line:
            yield at, line
        at += len(line) + 1
