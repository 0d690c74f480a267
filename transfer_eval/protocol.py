"""A run's protocol hash (part of its key), and reading a stored result's protocol back from it.

The hash covers the mode, its protocol version, the fully resolved recipe and, where chosen, --limit and
--precision. A result stores the hash and the recipe, not the version or the precision chosen; `identify` finds
them by hashing the recipe under each candidate, which is how the leaderboard tells a superseded protocol (an older
version of the mode's code) from a variant the user chose (another recipe, another precision).
"""

from __future__ import annotations

import functools
import hashlib
import json

PRECISION_CHOICES = ("auto", "fp32", "bf16")  # = devices.PRECISIONS (devices imports torch; this module must not)
MAX_VERSION = 32  # versions tried by `identify`


def protocol_hash(mode: str, version: int, recipe: dict, limit: int | None = None, precision: str = "auto") -> str:
    protocol = {"mode": mode, "version": version, "recipe": recipe}
    if limit is not None:  # a limited run never stands in for the full one
        protocol["limit"] = limit
    if precision != "auto":  # a precision chosen on purpose is measured apart
        protocol["precision"] = precision
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


def identify(result) -> tuple[int | None, str | None]:
    """(mode version, precision chosen) of a stored result, or (None, None) where its hash matches none (a result
    of a suite that hashed differently)."""
    recipe = json.dumps(result.recipe or {}, sort_keys=True)
    return _identify(result.mode, recipe, result.limit_per_split, result.protocol_hash)


@functools.lru_cache(maxsize=65536)
def _identify(mode: str, recipe_json: str, limit: int | None, wanted: str) -> tuple[int | None, str | None]:
    recipe = json.loads(recipe_json)
    for version in range(1, MAX_VERSION + 1):
        for precision in PRECISION_CHOICES:
            if protocol_hash(mode, version, recipe, limit, precision) == wanted:
                return version, precision
    return None, None
