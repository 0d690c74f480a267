"""The caches under $TRANSFER_EVAL_CACHE (default ~/.cache/transfer-eval), one interface for each kind:

- features (features.py): pre-logits features of a checkpoint on a split, for the probes;
- images (image_cache.py): a split's images decoded once at the training resolution (`run --cache-images`).

Each kind has `key(...)` (keys.digest of everything that changes the entry), `folder()`, `entries()` (dicts with
key, bytes, modified and what the entry is about) and `clear(keys=None)`. `entries` and `clear` here serve both:
what `transfer-eval cache list|clear` shows and removes.
"""

from __future__ import annotations

from transfer_eval.input import image_cache
from transfer_eval.keys import digest
from transfer_eval.store.cache import features

KINDS = {"features": features, "images": image_cache}

__all__ = ["KINDS", "digest", "entries", "clear", "features", "image_cache"]


def entries(kind: str | None = None) -> list[dict]:
    """Every entry of one kind, or of all (features first), each with its "kind"."""
    return [{"kind": k, **e} for k, mod in KINDS.items() if kind in (None, k) for e in mod.entries()]


def clear(kind: str | None = None, keys=None) -> dict[str, int]:
    """Remove entries of one kind or of all (all of them, or those whose key is in `keys`); the count per kind."""
    return {k: mod.clear(keys) for k, mod in KINDS.items() if kind in (None, k)}
