"""The one key rule of every cache: a digest of everything that changes an entry's content."""

from __future__ import annotations

import hashlib
import json


def digest(fields: dict) -> str:
    """32 hex digits of the SHA-256 of `fields` as sorted JSON (values JSON cannot write are written as str)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]
