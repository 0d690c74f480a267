"""A task's splits: `ImageSplit` (images, labels, stable ids; sealing, signatures, the unreadable-image scan),
what a loader is given (`LoadContext`), and reading one image file."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from transfer_eval import paths

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def spread(labels: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """`n` indices spread over the classes as evenly as they allow, sorted: each class's indices are permuted by
    numpy's default_rng(seed), then the classes take turns (first of each class in class order, then second, ...)
    until n are taken. Depends only on the labels."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    _, starts = np.unique(labels[order], return_index=True)
    ends = list(starts[1:]) + [len(labels)]
    ranks = np.empty(len(labels), dtype=np.int64)  # each example's turn within its class
    for a, b in zip(starts, ends):
        ranks[rng.permutation(order[a:b])] = np.arange(b - a)
    classes = np.searchsorted(np.unique(labels), labels)
    turn = np.lexsort((classes, ranks))  # by turn, then class
    return np.sort(turn[:n])


@dataclass(frozen=True)
class LoadContext:
    """What a task's loader may use: the data root, whether to verify checksums, whether it may download, and
    what to do with an unreadable image ("stop": the run fails naming the file; "skip": every image of the
    split is decoded up front and the unreadable ones are left out, their count recorded with the result)."""

    data_dir: Path
    verify: bool = True
    download: bool = False
    bad_images: str = "stop"


class UnreadableImage(Exception):
    """An image file that cannot be decoded. The message names the file; `reason` is the decoder's own words (what
    every message about the file says: a run's, `predict`'s)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


class SealedSplitRead(RuntimeError):
    """A sealed split (test, during model selection) was read: a bug, never allowed to pass silently."""


def to_rgb(img):
    """Any PIL mode (L, P, CMYK, RGBA, I;16, ...) as RGB; transparency composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        from PIL import Image

        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        span = float(arr.max() - arr.min()) or 1.0
        from PIL import Image

        return Image.fromarray(((arr - arr.min()) * (255.0 / span)).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def load_image(path) -> "object":
    """Decode an image file fully, whatever its extension says (PNG bytes behind a .jpg name load as PNG)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(
            f"unreadable image {path}: {e}; fix or remove the file, or rerun with "
            f"--bad-images skip to leave unreadable images out",
            str(e),
        ) from None


class ImageSplit:
    """One split of a task: `image(i)` gives a PIL RGB image, `labels[i]` its class, `ids[i]` a stable name.

    Splits over image files (`ImageSplit.from_files`) also keep `paths`, so unreadable files can be found.
    A test split whose images each have a set of right answers (ImageNet ReaL's label sets; ObjectNet, whose class
    maps to several ImageNet classes) keeps them as `label_sets` (N x M, padded with -1): a prediction is right
    when it is in its image's set (methods/inference.py `truth`, `hits`). `labels` then stays one class per image
    (the one the split is stratified by).

    A split whose images are not its files' pixels as they decode (ObjectNet's, whose loader crops a border off
    each) names what is done to them in `edit`: it is part of `files_signature`, so the caches keyed on that (the
    decoded images, the features, the unreadable-image scan) keep the edited images apart, and `--decode device`,
    which decodes the files themselves, leaves such a split's images to `image(i)`.
    """

    def __init__(
        self,
        image: Callable[[int], "object"],
        labels: Sequence[int],
        ids: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        label_sets: np.ndarray | None = None,
        edit: str | None = None,
    ):
        self._image = image
        self.edit = edit
        self.labels = np.asarray(labels, dtype=np.int64)
        self.label_sets = None if label_sets is None else np.asarray(label_sets, dtype=np.int64)
        if self.label_sets is not None and (self.label_sets.ndim != 2 or len(self.label_sets) != len(self.labels)):
            raise ValueError("label_sets must be N x M (padded with -1), one row per label")
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(self.labels))]
        self.paths = list(paths) if paths is not None else None
        self.skipped: list[str] = []  # unreadable files left out under --bad-images skip
        # While sealed, reading an image raises SealedSplitRead. The flag is in shared memory, so DataLoader workers
        # forked while the split was sealed see it unsealed (data.EvalLoaders' workers outlive the seal).
        self._sealed = multiprocessing.RawValue(ctypes.c_bool, False)
        self._seal_reason = ""
        self.parts: tuple | None = None  # the splits a concatenation was made of
        self._signature: str | None = None  # files_signature, computed once per split
        self.signature: str | None = None  # what stands for the files' signature of a split without files
        if len(self.ids) != len(self.labels) or (self.paths is not None and len(self.paths) != len(self.labels)):
            raise ValueError("ids, paths and labels differ in length")

    @classmethod
    def from_files(
        cls, paths: Sequence, labels: Sequence[int], ids: Sequence[str] | None = None, label_sets=None
    ) -> "ImageSplit":
        paths = [str(p) for p in paths]
        return cls(lambda i: load_image(paths[i]), labels, ids if ids is not None else paths, paths, label_sets)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sealed(self) -> str | None:
        """Why the split is sealed (test, during model selection), or None."""
        return self._seal_reason if self._sealed.value else None

    def image(self, i: int):
        if self._sealed.value:
            raise SealedSplitRead(f"split read while sealed: {self._seal_reason}")
        return to_rgb(self._image(int(i)))

    def seal(self, reason: str) -> None:
        self._seal_reason = reason
        self._sealed.value = True

    def unseal(self) -> None:
        self._sealed.value = False

    def subset(self, indices: Sequence[int]) -> "ImageSplit":
        idx = np.asarray(indices, dtype=np.int64)
        out = ImageSplit(
            lambda j: self._image(int(idx[j])),
            self.labels[idx],
            [self.ids[i] for i in idx],
            [self.paths[i] for i in idx] if self.paths is not None else None,
            None if self.label_sets is None else self.label_sets[idx],
            self.edit,
        )
        out.skipped = list(self.skipped)
        out.signature = self.signature
        return out

    @staticmethod
    def concat(a: "ImageSplit", b: "ImageSplit") -> "ImageSplit":
        n = len(a)
        paths = a.paths + b.paths if a.paths is not None and b.paths is not None else None
        out = ImageSplit(
            lambda i: a._image(i) if i < n else b._image(i - n),
            np.concatenate([a.labels, b.labels]),
            a.ids + b.ids,
            paths,
            _concat_sets(a.label_sets, b.label_sets) if a.label_sets is not None and b.label_sets is not None else None,
            " + ".join(dict.fromkeys(e for e in (a.edit, b.edit) if e)) or None,
        )
        out.skipped = a.skipped + b.skipped
        if a.signature is not None and b.signature is not None:
            out.signature = hashlib.sha256(f"{a.signature}+{b.signature}".encode()).hexdigest()
        out.parts = (a, b)  # so caches of the parts serve the whole (train+val for retraining)
        return out

    def sample(self, k: int = 16) -> list[int]:
        """At most `k` indices spread evenly over the split, first and last included: what a plan probes."""
        n = len(self)
        return sorted({int(i) for i in np.linspace(0, n - 1, min(n, k))}) if n else []

    def limited(self, n: int) -> "ImageSplit":
        """At most `n` examples, stratified and deterministic (`spread`): a quick look at real data."""
        if n >= len(self):
            return self
        out = self.subset(spread(self.labels, n))
        out.skipped = list(self.skipped)
        return out

    def unreadable(self, workers: int = 8) -> list[int]:
        """Indices of the images that do not decode. Every image is decoded once; the answer is kept in the cache
        under the files' signature, so later runs over unchanged files do not decode them again."""
        import json
        from concurrent.futures import ThreadPoolExecutor

        from transfer_eval import io

        signature = self.files_signature()
        memo = paths.cache_dir() / "unreadable" / f"{signature}.json" if signature else None
        if memo is not None and memo.is_file():
            try:
                found = json.loads(memo.read_text())
                if found.get("images") == len(self):
                    return [int(i) for i in found["unreadable"]]
            except (OSError, ValueError, KeyError, AttributeError):
                pass  # a damaged memo is recomputed

        def bad(i):
            try:
                self._image(i)
                return False
            except UnreadableImage:
                return True

        with ThreadPoolExecutor(workers) as pool:
            flags = list(pool.map(bad, range(len(self))))
        found = [i for i, f in enumerate(flags) if f]
        if memo is not None:
            io.write_text(memo, json.dumps({"images": len(self), "unreadable": found}))
        return found

    def without_unreadable(self) -> "ImageSplit":
        bad = set(self.unreadable())
        if not bad:
            return self
        out = self.subset([i for i in range(len(self)) if i not in bad])
        out.skipped = self.skipped + [self.ids[i] for i in sorted(bad)]
        return out

    def files_signature(self) -> str | None:
        """A digest of the image files' sizes and modification times (a split without files: its `signature`, as
        a dataset's fingerprint, or None): a replaced or damaged file changes it, so cached features of the old
        one are not reused."""
        if self.paths is None:
            return self.signature
        if self._signature is None:
            self._signature = self._stat_signature()
        return self._signature

    def _stat_signature(self) -> str:
        if self.parts is not None and all(p.paths is not None for p in self.parts):  # from the parts' own
            return hashlib.sha256("+".join(p.files_signature() for p in self.parts).encode()).hexdigest()
        h = hashlib.sha256(f"edit\t{self.edit}\n".encode() if self.edit else b"")
        for p in self.paths:
            try:
                st = os.stat(p)
                h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\tmissing\n".encode())
        return h.hexdigest()

    def manifest(self) -> str:
        """A digest of the sample ids and labels (and label sets, where the split has them): two results compare
        only when measured on the same examples."""
        h = hashlib.sha256()
        for sid, lab in zip(self.ids, self.labels.tolist()):
            h.update(f"{sid}\t{lab}\n".encode())
        if self.label_sets is not None:
            h.update(b"label sets\n" + np.ascontiguousarray(self.label_sets, np.int64).tobytes())
        return h.hexdigest()


def _concat_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two N x M label-set arrays stacked, the narrower padded with -1."""
    width = max(a.shape[1], b.shape[1])
    pad = [np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=-1) for x in (a, b)]
    return np.concatenate(pad)
