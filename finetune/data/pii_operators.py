"""What replaces a detected PII value: a typed placeholder, a mask, a consistent pseudonym, or dropping the record."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from presidio_anonymizer.entities import OperatorConfig

OPERATORS = ("replace", "mask", "pseudonym", "drop")
SALT_ENV = "FINETUNE_PII_SALT"


def placeholder(entity: str) -> str:
    """The typed placeholder for an entity, e.g. `<PHONE_NUMBER>`; the SFT stage trains on it as plain text."""
    return f"<{entity}>"


def mask_value(value: str) -> str:
    """Keep the last four characters of a long value (enough to tell two cards apart), star the rest."""
    keep = 4 if len(value) >= 10 else 0
    return "".join("*" if ch.isalnum() and i < len(value) - keep else ch for i, ch in enumerate(value))


def _canonical(value: str) -> str:
    # The same phone written as `138-1234-5678` and `13812345678` must get the same pseudonym.
    compact = "".join(ch for ch in value if ch.isalnum() or ch in "@.")
    return compact.casefold()


def pseudonym(entity: str, value: str, salt: str) -> str:
    """A stable surrogate like `<PERSON_3fa2c1d0>`: same value and salt, same surrogate; irreversible without the salt."""
    digest = hmac.new(salt.encode(), f"{entity}\x00{_canonical(value)}".encode(), hashlib.sha256).hexdigest()
    return f"<{entity}_{digest[:8]}>"


def load_or_create_salt(secrets_dir: Path) -> str:
    """The pseudonym salt: `$FINETUNE_PII_SALT`, else a random one kept (mode 0600) in `secrets_dir`.

    A public or default salt would let anyone brute-force an 11-digit phone number back
    from its pseudonym, so the salt is secret and never written to reports or releases.
    """
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV]
    path = secrets_dir / "pii_salt"
    if path.exists():
        return path.read_text().strip()
    secrets_dir.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(salt)
    return salt


def operator_config(entity: str, operator: str, salt: str) -> OperatorConfig:
    """The presidio-anonymizer operator for one entity (a dropped record is redacted with placeholders)."""
    if operator in ("replace", "drop"):
        return OperatorConfig("replace", {"new_value": placeholder(entity)})
    transform: Callable[[str], str]
    if operator == "mask":
        transform = mask_value
    elif operator == "pseudonym":
        if not salt:
            raise ValueError("the pseudonym operator needs a salt (set FINETUNE_PII_SALT or pass one)")

        def transform(value: str) -> str:
            return pseudonym(entity, value, salt)
    else:
        raise ValueError(f"unknown PII operator {operator!r} for {entity}; choose one of {', '.join(OPERATORS)}")
    return OperatorConfig("custom", {"lambda": transform})
