"""Keyed one-way pseudonyms for patient, study, series and instance identifiers.

A plain hash of a PatientID can be reversed by hashing every plausible ID, so keys are HMAC-SHA256
under a secret; set STROKERAY_PSEUDONYM_KEY per deployment. The built-in default only suits
synthetic and public data.
"""

from __future__ import annotations

import hashlib
import hmac
import os

DEFAULT_KEY = "strokeray-public-data-only"
KEY_ENV = "STROKERAY_PSEUDONYM_KEY"


def pseudonym_key() -> bytes:
    """The HMAC key: $STROKERAY_PSEUDONYM_KEY when set, else the public default."""
    return os.environ.get(KEY_ENV, DEFAULT_KEY).encode("utf-8")


def pseudonym(value: str | None, kind: str, key: bytes | None = None) -> str:
    """A 16-hex-digit pseudonym for ``value`` (empty when value is missing or blank).

    ``kind`` (patient, study, ...) is mixed in so equal strings of different kinds do not collide.
    """
    if value is None or not str(value).strip():
        return ""
    msg = f"{kind}\x00{str(value).strip()}".encode()
    return hmac.new(key or pseudonym_key(), msg, hashlib.sha256).hexdigest()[:16]
