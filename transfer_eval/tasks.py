"""The Task type, task plugin discovery, and split handling.

A task plugin is a Python file that defines `Task` objects at module level (or a `TASKS` list). Plugins are
found in three places, later ones overriding earlier ones of the same name:

1. the built-in plugins in `tasks/` (shipped inside the package by a wheel install);
2. installed packages that declare the entry-point group `transfer_eval.tasks` (an entry point may name a Task,
   a list of Tasks, or a module holding them);
3. a user's folder given with `--tasks-dir DIR`.

A Task's `load(split, ctx)` returns an `ImageSplit`: images (PIL) with integer labels and stable sample ids.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from transfer_eval import paths
from transfer_eval.errors import UserError, unknown_name

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "transfer_eval.tasks"
SPLITS = ("train", "val", "test")


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
    """An image file that cannot be decoded. The message names the file."""


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
            f"--bad-images skip to leave unreadable images out"
        ) from None


class ImageSplit:
    """One split of a task: `image(i)` gives a PIL RGB image, `labels[i]` its class, `ids[i]` a stable name.

    Splits over image files (`ImageSplit.from_files`) also keep `paths`, so unreadable files can be found.
    """

    def __init__(
        self,
        image: Callable[[int], "object"],
        labels: Sequence[int],
        ids: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
    ):
        self._image = image
        self.labels = np.asarray(labels, dtype=np.int64)
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
    def from_files(cls, paths: Sequence, labels: Sequence[int], ids: Sequence[str] | None = None) -> "ImageSplit":
        paths = [str(p) for p in paths]
        return cls(lambda i: load_image(paths[i]), labels, ids if ids is not None else paths, paths)

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
        h = hashlib.sha256()
        for p in self.paths:
            try:
                st = os.stat(p)
                h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\tmissing\n".encode())
        return h.hexdigest()

    def manifest(self) -> str:
        """A digest of the sample ids and labels: two results compare only when measured on the same examples."""
        h = hashlib.sha256()
        for sid, lab in zip(self.ids, self.labels.tolist()):
            h.update(f"{sid}\t{lab}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Task:
    """A labelled image dataset with train/val/test splits, a class count and a default recipe for each mode.

    `recipes` maps a mode name to recipe fields that override the mode's defaults for this task, e.g.
    `{"full": {"steps": 500, "lr": 0.01}}`. Bump `version` whenever a change could move accuracy.
    """

    name: str
    num_classes: int
    load: Callable[[str, LoadContext], ImageSplit]
    version: int = 1
    classes: tuple[str, ...] | None = None
    splits: tuple[str, ...] = SPLITS
    recipes: dict = field(default_factory=dict)
    description: str = ""
    data_help: str = ""  # where the data goes and how to get it
    # the official number of images in each split the loader gives ("train" before any val hold-out), so that
    # `paper plan` can size the work of a task whose data is not here yet
    sizes: dict = field(default_factory=dict)
    # tasks that train exactly as this one (the same train, val, hold-out and recipes) and differ in their test
    # split: a model fine-tuned for this task is scored on their test splits too (transfer_eval.companions)
    companions: tuple[str, ...] = ()
    # {"fraction": 0.1, "seed": 0}: val is held out of the official train split (the loader gives that whole as
    # "train"; `dataset` splits it); None: the loader gives its own val (an official one, say)
    val_holdout: dict | None = None
    download: Callable[[LoadContext], None] | None = None  # fetches the data where its source allows it
    source: str = ""  # filled in by discovery
    # input settings every mode on this task uses, over the checkpoint's data config (VTAB-1k's square resize
    # without crop: {"crop_pct": 1.0, "crop_mode": "squash"}); they key the feature cache like any other
    data_config: dict = field(default_factory=dict)

    def input_config(self, cfg: dict) -> dict:
        """The checkpoint's data config with this task's input settings over it."""
        return {**cfg, **self.data_config}

    def dataset(self, split: str, ctx: LoadContext) -> ImageSplit:
        """One split, as runs read it. Where the task declares `val_holdout`, its loader is asked only for "train"
        (the whole official train split) and "test": train and val are the kept and held-out parts of that,
        by `holdout(labels, fraction, seed)`, here for every task alike."""
        if split not in self.splits:
            raise UserError(f"task {self.name!r} has no {split!r} split (it has {', '.join(self.splits)})")
        if self.val_holdout and split in ("train", "val"):
            full = self.load("train", ctx)
            kept, held = _holdout_of(
                full.labels, float(self.val_holdout["fraction"]), int(self.val_holdout.get("seed", 0))
            )
            data = full.subset(kept if split == "train" else held)
        else:
            data = self.load(split, ctx)
        if len(data) == 0:
            raise UserError(f"task {self.name!r}: the {split} split is empty under {ctx.data_dir}; {self.data_help}")
        if ctx.bad_images == "skip" and data.paths is not None:
            data = data.without_unreadable()
        return data

    def fetch(self, ctx: LoadContext) -> None:
        """Download the data, only where the task's source allows it."""
        if self.download is None:
            raise UserError(f"task {self.name!r} cannot be downloaded automatically; {self.data_help}")
        self.download(ctx)


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


_HOLDOUTS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _holdout_of(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """holdout(), kept per labels digest: train and val of one task, and every run of a process, split once."""
    key = (hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest(), len(labels), fraction, seed)
    if key not in _HOLDOUTS:
        if len(_HOLDOUTS) >= 8:
            _HOLDOUTS.pop(next(iter(_HOLDOUTS)))
        _HOLDOUTS[key] = holdout(labels, fraction, seed)
    return _HOLDOUTS[key]


def holdout(labels: Sequence[int], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified hold-out: (kept indices, held-out indices), each sorted.

    Each class's indices are permuted by numpy's default_rng(seed) and the first round(fraction * n) are held
    out (at least one where the class has two or more examples), so the split depends only on the labels.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    order = np.argsort(labels, kind="stable")  # each class's indices, ascending, without a scan per class
    _, starts = np.unique(labels[order], return_index=True)
    for start, end in zip(starts, list(starts[1:]) + [len(labels)]):
        idx = order[start:end]
        n = int(round(fraction * len(idx)))
        if n == 0 and len(idx) >= 2 and fraction > 0:
            n = 1
        held.append(rng.permutation(idx)[:n])
    held = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return kept, held


# --------------------------------------------------------------------------------------------------------------
# Discovery


def _tasks_in(namespace, where: str) -> list[Task]:
    found = [v for v in vars(namespace).values() if isinstance(v, Task)] if hasattr(namespace, "__dict__") else []
    found += [t for t in getattr(namespace, "TASKS", []) if isinstance(t, Task) and t not in found]
    return found


def _import_file(path: Path):
    """The plugin module of `path`, imported once per content: a file edited since (in a notebook, between two
    runs in one process) is imported again, never served from the earlier import."""
    identity = str(path.resolve()).encode() + b"\0" + path.read_bytes()
    mod_name = "transfer_eval_task_" + hashlib.sha1(identity).hexdigest()[:10] + "_" + path.stem
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[mod_name]
        raise UserError(f"task plugin {path} failed to import: {type(e).__name__}: {e}") from None
    return module


def _from_folder(folder: Path) -> list[Task]:
    if not folder.is_dir():
        raise UserError(f"tasks folder {folder} does not exist or is not a folder")
    out = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        for t in _tasks_in(_import_file(path), str(path)):
            out.append(_with_source(t, str(path)))
    return out


def _with_source(t: Task, source: str) -> Task:
    from dataclasses import replace

    return replace(t, source=source)


def _from_entry_points() -> list[Task]:
    out = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:
            raise UserError(f"task entry point {ep.name!r} ({ep.value}) failed to load: {e}") from None
        if callable(obj) and not isinstance(obj, Task):
            obj = obj()
        items = obj if isinstance(obj, (list, tuple)) else [obj] if isinstance(obj, Task) else _tasks_in(obj, ep.value)
        out += [_with_source(t, f"entry point {ep.value}") for t in items if isinstance(t, Task)]
    return out


# Tasks added in this process (transfer_eval.add_task: a notebook's, without a plugin file); discovered last.
ADDED: dict[str, Task] = {}


def discover(tasks_dirs: Sequence[str | Path] = ()) -> dict[str, Task]:
    """Every task, by name: built-ins, then entry points, then each user folder, then those added in this process."""
    found: dict[str, Task] = {}
    sources = [lambda: _from_folder(paths.builtin("tasks")), _from_entry_points]
    sources += [lambda d=d: _from_folder(Path(d)) for d in tasks_dirs]
    sources.append(lambda: list(ADDED.values()))
    for source in sources:
        for t in source():
            if t.name in found and found[t.name].source != t.source:
                log.warning(
                    "transfer-eval: task %r from %s overrides the one from %s", t.name, t.source, found[t.name].source
                )
            found[t.name] = t
    return found


def resolve(name: str, tasks: dict[str, Task]) -> Task:
    if name not in tasks:
        hint = "(see `transfer-eval list tasks`; add one with --tasks-dir DIR, or give folder:PATH or hf:PATH)"
        raise unknown_name("task", name, tasks, hint=hint)
    return tasks[name]
