"""Where a result came from: the suite's version and commit, the libraries', the command line, the time."""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
from pathlib import Path

import torch

from transfer_eval.version import __version__


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def fields(command: str) -> dict:
    """The record's provenance fields."""
    import timm
    import torchvision

    return {
        "suite_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "torchvision_version": torchvision.__version__,
        "command": command,
    }
