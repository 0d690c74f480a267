"""Where the built-in registry and task plugins are, and the default locations of the store, data and caches."""

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def builtin(name: str) -> Path:
    """`checkpoints.yaml` or `tasks`: inside the package in a wheel install, at the repository top in a checkout."""
    inside = PACKAGE / "_builtin" / name
    return inside if inside.exists() else PACKAGE.parent / name


def default_results() -> Path | str:
    """$TRANSFER_EVAL_RESULTS (a SQLite file, or a postgresql:// URL, kept as it is), else
    ./transfer_eval_results.sqlite."""
    value = os.environ.get("TRANSFER_EVAL_RESULTS", "transfer_eval_results.sqlite")
    return value if value.startswith(("postgresql://", "postgres://")) else Path(value)


def default_data_dir() -> Path:
    return Path(os.environ.get("TRANSFER_EVAL_DATA", "data"))


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transfer-eval"
    return Path(os.environ.get("TRANSFER_EVAL_CACHE", default))


# What a full cache disk's error suggests (the feature and image caches and the training checkpoints live there).
CACHE_HINT = "or set TRANSFER_EVAL_CACHE to a larger disk (`transfer-eval cache list` shows what the cache holds)"
