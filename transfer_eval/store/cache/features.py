"""The feature cache: pre-logits features on disk, keyed by everything that changes them.

The key covers the weights digest, the architecture and its arguments, the task, its version, the split's
manifest (sample ids and labels) and its image files' sizes and modification times, the transform (the full
data config), the precision of the forward pass (devices.py: "fp32" or "bf16"), pixels other than the CPU
transforms' (`--decode device`), the feature source other than `pooled` (methods/sources.py: `cls+avg`, `last4`,
...), the suite version and torch's version. Images resized on the device are PIL's
very pixels (device_resize.py), so they share the CPU's entries.
A second probe on the same checkpoint and task then does no forward pass; a changed transform or split misses.

An entry is a folder `features/KEY/` holding `features.npy` (N x D float32), `labels.npy` and `about.json`.
Extraction writes each batch into the preallocated `features.npy` as it comes (`FeatureWriter`), so its memory
does not grow with N; readers memory-map it; `entries` reads the .npy headers only. An entry is built in a
temporary folder and renamed into place whole: readers never see half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from transfer_eval import paths
from transfer_eval.errors import UserError
from transfer_eval.io import full_error, is_full
from transfer_eval.keys import digest
from transfer_eval.version import __version__

log = logging.getLogger(__name__)

FEATURES, LABELS, ABOUT = "features.npy", "labels.npy", "about.json"


def key(
    weights_sha256: str,
    checkpoint,
    task,
    split_name: str,
    manifest: str,
    data_config: dict,
    files: str | None = None,
    precision: str = "fp32",
    pixels: str | None = None,
    source: str = "pooled",
) -> str:
    import torch

    other = {"pixels": pixels} if pixels is not None else {}  # not the CPU transforms' pixels (--decode device)
    if source != "pooled":  # another feature source (methods/sources.py); pooled keeps the key it always had
        other["source"] = source
    return digest(
        {
            **other,
            "weights": weights_sha256,
            "model": checkpoint.model,
            "model_args": checkpoint.model_args,
            "task": task.name,
            "task_version": task.version,
            "split": split_name,
            "manifest": manifest,
            "files": files,
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(data_config.items())},
            "precision": precision,
            "suite": __version__,
            "torch": torch.__version__,
        }
    )


def folder() -> Path:
    return paths.cache_dir() / "features"


def load(key: str, warn: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """(features memory-mapped copy-on-write: N x D float32, labels), or None where missing or damaged (a damaged
    entry is said so, with `warn`, and is replaced by the extraction that follows)."""
    entry = folder() / key
    if not entry.is_dir():
        return None
    try:
        feats = np.load(entry / FEATURES, mmap_mode="c", allow_pickle=False)
        labels = np.load(entry / LABELS, allow_pickle=False)
        about = json.loads((entry / ABOUT).read_text())
    except (OSError, ValueError) as e:  # a truncated .npy fails to map; a garbled one to parse
        reason = f"{type(e).__name__}: {e}"
    else:
        if feats.ndim == 2 and len(feats) == len(labels) == int(about.get("images", len(labels))):
            return feats, labels
        reason = f"{feats.shape} features for {len(labels)} labels and {about.get('images')} images"
    if warn:
        log.warning(
            "transfer-eval: the feature cache entry %s is damaged (%s); extracting its features again", entry, reason
        )
    return None


class FeatureWriter:
    """A cache entry being written: `write(rows)` appends a batch of feature rows (B x D) to a preallocated
    N x D float32 .npy, `commit(labels, about)` publishes the entry. Rows go through plain file writes at their
    offset, not a writable memory map, so written pages are the kernel's page cache, never the process's memory.
    Leaving the `with` block without a commit removes the partial entry."""

    def __init__(self, key: str, n: int):
        self.key, self.n, self.done = key, n, 0
        self.tmp = folder() / f".{key}.{os.getpid()}.part"
        self.file = None

    def __enter__(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.file is None:  # the width is known at the first batch
            header = np.lib.format.open_memmap(
                self.tmp / FEATURES, mode="w+", dtype=np.float32, shape=(self.n, rows.shape[1])
            )
            offset = header.offset
            del header
            self.file = open(self.tmp / FEATURES, "r+b")
            self.file.seek(offset)
        if self.done + len(rows) > self.n:
            raise ValueError(f"more feature rows than the {self.n} the entry was made for")
        self.file.write(rows.tobytes())
        self.done += len(rows)

    def commit(self, labels: np.ndarray, about: dict) -> None:
        if self.done != self.n:
            raise ValueError(f"{self.done} feature rows written, {self.n} expected")
        if self.file is None:  # an empty split
            np.save(self.tmp / FEATURES, np.zeros((0, 0), np.float32))
        else:
            self.file.close()
            self.file = None
        np.save(self.tmp / LABELS, np.asarray(labels))
        (self.tmp / ABOUT).write_text(json.dumps(about, default=str))
        entry = folder() / self.key
        if entry.exists() and load(self.key, warn=False) is None:
            shutil.rmtree(entry, ignore_errors=True)  # a damaged entry is replaced
        try:
            os.replace(self.tmp, entry)
        except OSError:  # another process published the same entry first: the same features
            if load(self.key, warn=False) is None:
                raise

    def __exit__(self, kind, exc, tb):
        if self.file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush too; the entry goes either way
                self.file.close()
        full = exc is not None and not isinstance(exc, UserError) and is_full(exc, self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if full:
            raise full_error(f"a feature cache entry ({self.n} images)", folder(), paths.CACHE_HINT) from None
        return False


def entries() -> list[dict]:
    """Every entry, from its .npy header and about.json (no feature is read)."""
    out = []
    for entry in (
        sorted(p for p in folder().iterdir() if p.is_dir() and not p.name.startswith(".")) if folder().is_dir() else []
    ):
        try:
            about = json.loads((entry / ABOUT).read_text())
            shape = list(np.load(entry / FEATURES, mmap_mode="r", allow_pickle=False).shape)  # maps, reads nothing
        except (OSError, ValueError):
            about, shape = {}, None
        size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        out.append(
            {
                "key": entry.name,
                "bytes": size,
                "shape": shape,
                "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.stat().st_mtime)),
                **about,
            }
        )
    return out


def clear(keys=None) -> int:
    """Remove entries (all, or those whose key is in `keys`); without keys, also entries of earlier formats."""
    removed = 0
    for e in entries():
        if keys is None or e["key"] in keys:
            shutil.rmtree(folder() / e["key"], ignore_errors=True)
            removed += 1
    if keys is None and folder().is_dir():
        for old in folder().glob("*.npz"):  # entries of suite 0.1's single-file format
            old.unlink(missing_ok=True)
    return removed
