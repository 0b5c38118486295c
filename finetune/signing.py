"""Signing a release manifest with HMAC-SHA256 (RFC 2104, Python's `hmac`) under a key kept out of the release.

Anyone who can write a release folder can rewrite its files and their hashes together; a
signature under a key they cannot read is what they cannot recompute. The key is
`$FINETUNE_RELEASE_KEY`, else a random one kept (mode 0600) in `<work_dir>/secrets/release_key`
beside the PII salt; whoever verifies needs the same key (an HMAC, not a public-key signature:
the builder and the auditor are one organisation).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

KEY_ENV = "FINETUNE_RELEASE_KEY"
KEY_FILE = "release_key"
ALGORITHM = "HMAC-SHA256"


def release_key(secrets_dir: Path, create: bool = False) -> bytes | None:
    """The signing key: `$FINETUNE_RELEASE_KEY`, else the key file (created when `create`); None when absent."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    path = secrets_dir / KEY_FILE
    if path.is_file():
        return path.read_text().strip().encode()
    if not create:
        return None
    secrets_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key.encode()


def key_id(key: bytes) -> str:
    """A short name for a key (a hash of a 256-bit random key reveals nothing usable), to tell keys apart."""
    return hashlib.sha256(b"finetune-release-key-id\x00" + key).hexdigest()[:16]


def sign(data: bytes, key: bytes) -> dict[str, Any]:
    """The signature record written beside the manifest."""
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(key),
        "manifest_sha256": hashlib.sha256(data).hexdigest(),
        "signature": hmac.new(key, data, hashlib.sha256).hexdigest(),
    }


def signature_problem(data: bytes, signature: dict[str, Any], key: bytes) -> str | None:
    """Why `signature` does not sign `data` under `key`, or None when it does."""
    if signature.get("algorithm") != ALGORITHM:
        return f"signature algorithm {signature.get('algorithm')!r}, expected {ALGORITHM}"
    expected = hmac.new(key, data, hashlib.sha256).hexdigest()
    if hmac.compare_digest(expected, str(signature.get("signature", ""))):
        return None
    if signature.get("key_id") != key_id(key):
        return f"signed with key {signature.get('key_id')!r}, not with this key ({key_id(key)})"
    return "the manifest was changed after it was signed"
