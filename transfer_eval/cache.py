"""The feature cache: pre-logits features on disk, keyed by everything that changes them.

The key covers the weights digest, the architecture and its arguments, the task, its version, the split's
manifest (sample ids and labels) and its image files' sizes and modification times, the transform (the full
data config, and whether images were resized on the CPU or the device), the suite version and torch's version.
A second probe on the same checkpoint and task then does no forward pass; a changed transform or split misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

import transfer_eval
from transfer_eval import paths


def feature_key(weights_sha256: str, checkpoint, task, split_name: str, manifest: str, data_config: dict,
                files: str | None = None, resize: str = "cpu") -> str:
    import torch

    blob = json.dumps({
        "weights": weights_sha256, "model": checkpoint.model, "model_args": checkpoint.model_args,
        "task": task.name, "task_version": task.version, "split": split_name, "manifest": manifest, "files": files,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(data_config.items())},
        "resize": resize,
        "suite": transfer_eval.__version__, "torch": torch.__version__,
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _folder() -> Path:
    return paths.cache_dir() / "features"


def load(key: str) -> tuple[np.ndarray, np.ndarray] | None:
    f = _folder() / f"{key}.npz"
    if not f.is_file():
        return None
    try:
        with np.load(f, allow_pickle=False) as z:
            return z["features"], z["labels"]
    except (OSError, ValueError, KeyError):  # a damaged entry is a miss, and is replaced
        return None


def save(key: str, features: np.ndarray, labels: np.ndarray, about: dict) -> None:
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.part.npz"
    np.savez(tmp, features=features, labels=labels, about=np.asarray(json.dumps(about, default=str)))
    os.replace(tmp, folder / f"{key}.npz")  # readers never see half a file


def entries() -> list[dict]:
    out = []
    for f in sorted(_folder().glob("*.npz")) if _folder().is_dir() else []:
        try:
            with np.load(f, allow_pickle=False) as z:
                about = json.loads(str(z["about"]))
                shape = z["features"].shape
        except (OSError, ValueError, KeyError):
            about, shape = {}, None
        out.append({"key": f.stem, "bytes": f.stat().st_size, "shape": list(shape) if shape else None,
                    "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(f.stat().st_mtime)), **about})
    return out


def clear(keys=None) -> int:
    removed = 0
    for e in entries():
        if keys is None or e["key"] in keys:
            (_folder() / f"{e['key']}.npz").unlink(missing_ok=True)
            removed += 1
    return removed
