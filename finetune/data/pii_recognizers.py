"""Presidio recognizers for Chinese and English PII and secrets, offline, safe next to CJK text.

Presidio's built-in patterns anchor on `\\b`, which never matches between a CJK character
and a digit, so PII glued to Chinese text is missed; every pattern here uses explicit
look-arounds instead, and formats with a checksum (resident ID, bank card, IBAN, IP) are
validated so that order numbers and other near misses are not reported.
"""

from __future__ import annotations

import ipaddress

import regex
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer
from presidio_analyzer.predefined_recognizers import IbanRecognizer

from finetune.data.pii_names import PersonNameRecognizer
from finetune.data.pii_placeholders import is_placeholder_value
from finetune.data.pii_secrets import SecretRecognizer

# Presidio selects recognizers by language code; records mix Chinese and English in one
# string, so every recognizer is registered under one code and each text is analyzed once.
LANGUAGE = "en"
# Presidio's default flags include IGNORECASE, which would let `[A-Z]` match lower case
# and turn `AKIA…`-style key prefixes and capitalised names into noise.
CASE_SENSITIVE = regex.DOTALL | regex.MULTILINE

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_HAN = r"\p{Han}"
# Characters that start the sentence around an address or name but are never part of one.
_FUNCTION_CHARS = "我你他她它们住在是到于的地得了着过这那个寄送址请把往从给发和与或及也都就还说"
_PLACE_CHAR = rf"(?:(?![{_FUNCTION_CHARS}]){_HAN})"


def cn_resident_id_check_digit(body: str) -> str:
    """The ISO 7064 MOD 11-2 check character for the first 17 digits of a PRC resident ID number."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]


def is_valid_cn_resident_id(value: str) -> bool:
    """True if an 18-character PRC resident ID number has a correct check digit."""
    value = value.upper()
    if len(value) != 18 or not value[:17].isdigit():
        return False
    return cn_resident_id_check_digit(value[:17]) == value[17]


def luhn_valid(digits: str) -> bool:
    """True if a digit string passes the Luhn checksum (bank and credit card numbers)."""
    digits = "".join(ch for ch in digits if ch.isdigit())
    if len(digits) < 13:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


_MOBILE_TEXT = r"(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}"
_MOBILE = regex.compile(_MOBILE_TEXT)


def _pattern(entity: str, regex_text: str, score: float = 0.8, **kwargs) -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity=entity,
        patterns=[Pattern(entity.lower(), regex_text, score)],
        supported_language=LANGUAGE,
        global_regex_flags=kwargs.pop("flags", CASE_SENSITIVE),
        **kwargs,
    )


_DATE = r"(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_ID_SHAPE = regex.compile(rf"[1-9]\d{{5}}(?:18|19|20)\d{{2}}{_DATE}\d{{3}}[0-9Xx]")


class CnResidentIdRecognizer(PatternRecognizer):
    """PRC resident ID: 18 digits with birth date and checksum, or the legacy 15-digit form."""

    def __init__(self) -> None:
        date = r"(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
        patterns = [
            Pattern(
                "cn_resident_id_18",
                rf"(?<![0-9A-Za-z])[1-9]\d{{5}}(?:18|19|20)\d{{2}}{date}\d{{3}}[0-9Xx](?![0-9A-Za-z])",
                0.8,
            ),
            # Legacy IDs have no check digit; the two-digit year and date shape are all there is.
            Pattern("cn_resident_id_15", rf"(?<![0-9A-Za-z])[1-9]\d{{5}}\d{{2}}{date}\d{{3}}(?![0-9A-Za-z])", 0.6),
        ]
        super().__init__(
            supported_entity="CN_RESIDENT_ID",
            patterns=patterns,
            supported_language=LANGUAGE,
            global_regex_flags=CASE_SENSITIVE,
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        # None keeps the legacy form's pattern score: a Luhn-valid 15-digit card outranks it.
        return None if len(pattern_text) == 15 else is_valid_cn_resident_id(pattern_text)


class BankCardRecognizer(PatternRecognizer):
    """13-19 digit card numbers (optionally grouped by spaces or dashes) that pass Luhn."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CREDIT_CARD",
            # Issuer prefixes 2[2-7] (Mastercard 2-series) and 3-6; order numbers like 2023… are excluded.
            # A number labelled as an order/serial number is not a card even when it passes Luhn (1 in 10 do).
            patterns=[
                Pattern(
                    "card_number",
                    r"(?<![\d.])(?<!(?:订单|单号|编号|流水号|身份证号?码?|(?i:order|invoice|serial|tracking)(?: ?(?:no|number|id))?)\.?[:：#\s]*)"
                    r"(?:2[2-7]|[3-6])\d?(?:[ -]?\d){11,17}(?![0-9Xx])",
                    0.7,
                )
            ],
            supported_language=LANGUAGE,
            global_regex_flags=CASE_SENSITIVE,
        )

    def validate_result(self, pattern_text: str) -> bool:
        digits = "".join(ch for ch in pattern_text if ch.isdigit())
        # A valid resident ID or a +86 mobile number that happens to pass Luhn is reported as that, not as a card.
        looks_like_id = len(digits) == 18 and _ID_SHAPE.fullmatch(pattern_text) is not None
        return luhn_valid(digits) and not looks_like_id and not _MOBILE.fullmatch(pattern_text)


class IpAddressRecognizer(PatternRecognizer):
    """IPv4 and IPv6 addresses, validated by the standard library's parser."""

    def __init__(self) -> None:
        patterns = [
            # A dotted quad after "version"/"v"/"版本" is a version number.
            Pattern(
                "ipv4", r"(?<![\d.])(?<!(?i:version|ver|v|版本|版本号)[ :：]?)(?:\d{1,3}\.){3}\d{1,3}(?![\d.])", 0.7
            ),
            Pattern("ipv6", r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{1,4}(?![0-9A-Za-z:])", 0.7),
        ]
        super().__init__(
            supported_entity="IP_ADDRESS",
            patterns=patterns,
            supported_language=LANGUAGE,
            global_regex_flags=CASE_SENSITIVE,
        )

    def validate_result(self, pattern_text: str) -> bool:
        try:
            address = ipaddress.ip_address(pattern_text)
        except ValueError:
            return False
        # 0.0.0.0-style and version-number-like loopbacks are not about a person.
        return not address.is_unspecified


class PasswordRecognizer(PatternRecognizer):
    """The value after `password:` / `密码：` in prose or config; the key name stays readable.

    The value is printable ASCII (a password is typed; 为您的账户设置强密码 after "强密码：" is advice,
    not one) and not a placeholder (`<PASSWORD>`, `${DB_PASSWORD}`, `your_password`, `****`).
    """

    def __init__(self) -> None:
        cue = r"(?i:password|passwd|pwd|passcode|secret|token|api[_-]?key|密码|口令)"
        super().__init__(
            supported_entity="PASSWORD",
            patterns=[Pattern("password", rf"(?<={cue}[\"']?\s*[:=：]\s*[\"']?)(?:(?![\"',;])[!-~]){{4,}}", 0.8)],
            supported_language=LANGUAGE,
            global_regex_flags=CASE_SENSITIVE,
        )

    def invalidate_result(self, pattern_text: str) -> bool:
        return is_placeholder_value(pattern_text)


def _iban_recognizer() -> IbanRecognizer:
    # Presidio's IBAN recognizer validates the mod-97 checksum; only its `\b` anchors are replaced.
    # Its analyze() reads capture groups, so the whole pattern is one group.
    pattern = r"(?<![A-Za-z0-9])([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)(?![A-Za-z0-9])"
    return IbanRecognizer(patterns=[Pattern("iban", pattern, 0.7)], supported_language=LANGUAGE, exact_match=False)


def build_recognizers() -> list[EntityRecognizer]:
    """Every recognizer this project ships (Chinese-aware, offline, no model download)."""
    not_alnum_before, not_alnum_after = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"
    street = r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Square)"
    return [
        _pattern("CN_MOBILE_PHONE", rf"(?<![\d+]){_MOBILE_TEXT}(?!\d)", 0.8),
        # Landlines need an area-code separator or brackets: a bare 11-12 digit run is too often an order number.
        _pattern(
            "CN_LANDLINE", r"(?<![\d+])(?:(?:\+?86[ -]?)?0\d{2,3}[ -]|\(0\d{2,3}\) ?|（0\d{2,3}）)[2-9]\d{6,7}(?![\d-])"
        ),
        CnResidentIdRecognizer(),
        BankCardRecognizer(),
        _pattern(
            "CN_PASSPORT",
            r"(?<=(?:护照|passport)[^\n]{0,12}?)(?<![0-9A-Za-z])(?:[EG]\d{8}|E[A-HJ-NP-Z]\d{7}|[PSD]\d{7})"
            + not_alnum_after,
            flags=CASE_SENSITIVE | regex.IGNORECASE,
        ),
        _pattern(
            "CN_LICENSE_PLATE",
            r"(?<![A-Za-z0-9])[京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼][A-Z][·•\- ]?"
            r"(?=[A-HJ-NP-Z0-9]*\d)[A-HJ-NP-Z0-9]{5,6}" + not_alnum_after,
        ),
        _pattern(
            "CN_ADDRESS",
            rf"(?:{_PLACE_CHAR}{{2,7}}(?:省|自治区))?(?:{_PLACE_CHAR}{{2,7}}市)?(?:{_PLACE_CHAR}{{1,7}}(?:区|县|镇))?"
            rf"{_PLACE_CHAR}{{1,8}}(?:路|街|大道|大街|巷|胡同)\d{{1,5}}号(?:院)?(?:\d{{1,4}}(?:栋|幢|号楼|座))?"
            r"(?:\d{1,3}单元)?(?:\d{1,5}(?:室|房))?",
            0.75,
        ),
        PersonNameRecognizer(),
        _pattern("ADDRESS", rf"(?<![0-9A-Za-z])\d{{1,5}}(?: [A-Z][a-z]+){{1,3}} {street}\.?(?![A-Za-z])", 0.7),
        _pattern(
            "EMAIL_ADDRESS",
            # ASCII-only local part and domain so adjacent Chinese text is not swallowed.
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])",
            0.9,
        ),
        _pattern(
            "PHONE_NUMBER",
            r"(?<![\d+])(?:\+(?!86)\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,3}"
            # North American numbers as people write them: (415) 555-2671, 415.555.2671x12, 001-415-555-2671.
            r"|(?:\+1[ .-]?|001-)?(?:\(\d{3}\) ?|\d{3}[-.])\d{3}[-.]\d{4}(?:x\d{1,5})?"
            # A bare 10-digit run is a phone only after a cue; otherwise it is as likely a timestamp.
            r"|(?<=(?i:phone|call(?: me)?(?: at)?|tel|mobile|cell|fax)[:：.\s]*)[2-9]\d{9})(?![\d-])",
            0.7,
        ),
        _iban_recognizer(),
        IpAddressRecognizer(),
        _pattern("URL_CREDENTIALS", r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@\"'<>]+:[^\s/@\"'<>]+@[^\s/\"'<>，。]+", 0.9),
        _pattern("AWS_ACCESS_KEY", not_alnum_before + r"(?:AKIA|ASIA)[0-9A-Z]{16}" + not_alnum_after, 0.9),
        _pattern("GITHUB_TOKEN", not_alnum_before + r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_\w{22,255})", 0.9),
        _pattern("API_KEY", not_alnum_before + r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}" + not_alnum_after, 0.85),
        _pattern("JWT", not_alnum_before + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", 0.9),
        _pattern(
            "PRIVATE_KEY",
            r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----.+?-----END (?:[A-Z]+ )*PRIVATE KEY-----",
            0.95,
        ),
        PasswordRecognizer(),
        SecretRecognizer(),
    ]


# What each shipped pattern cannot match without: a necessary part of its regex above (every one of these needs a
# digit, an @, or a fixed prefix). Written by hand because Presidio has no such pre-filter: it runs every pattern
# recognizer's finditer and result bookkeeping on every text, which is most of de-identification's time on text
# that holds no digit. Entities not listed (names, passwords, secrets) are always asked for.
_DIGIT = r"\d"
REQUIRED = {
    **dict.fromkeys(
        "CN_MOBILE_PHONE CN_LANDLINE CN_RESIDENT_ID CREDIT_CARD CN_PASSPORT CN_LICENSE_PLATE CN_ADDRESS ADDRESS "
        "PHONE_NUMBER IBAN_CODE".split(),
        _DIGIT,
    ),
    "IP_ADDRESS": r"[\d:]",  # IPv6 may have no digit, never no colon
    "EMAIL_ADDRESS": "@",
    "URL_CREDENTIALS": "://",
    "AWS_ACCESS_KEY": "AKIA|ASIA",
    "GITHUB_TOKEN": "gh[pousr]_|github_pat_",
    "API_KEY": "sk-",
    "JWT": "eyJ",
    "PRIVATE_KEY": "-----BEGIN",
}
_REQUIRED = {entity: regex.compile(pattern) for entity, pattern in REQUIRED.items()}


def possible_entities(text: str, entities: list[str]) -> list[str]:
    """The entities of `entities` that `text` can hold at all (see REQUIRED); finding them gives the same hits."""
    return [e for e in entities if (need := _REQUIRED.get(e)) is None or need.search(text)]


ALL_ENTITIES = sorted({entity for recognizer in build_recognizers() for entity in recognizer.supported_entities})
