"""The Task type, and the deterministic picks every task shares: `holdout` (val out of train) and `spread`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.tasks.splits import SPLITS, ImageSplit, LoadContext


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
    # split: a model fine-tuned for this task is scored on their test splits too (transfer_eval.methods.companions)
    companions: tuple[str, ...] = ()
    # the classes test is scored over, where a test set covers a subset of the model's classes (ImageNet-A and -R:
    # 200 of ImageNet-1k's; ObjectNet: the ImageNet classes that map to one of its own): every mode masks its
    # scores to these before top-k (methods/inference.py `restrict`); None: all of them
    scored_classes: tuple[int, ...] | None = None
    # {"fraction": 0.1, "seed": 0}: val is held out of the official train split (the loader gives that whole as
    # "train"; `dataset` splits it); None: the loader gives its own val (an official one, say)
    val_holdout: dict | None = None
    download: Callable[[LoadContext], None] | None = None  # fetches the data where its source allows it
    source: str = ""  # filled in by discovery
    # input settings every mode on this task uses, over the checkpoint's data config (VTAB-1k's square resize
    # without crop: {"crop_pct": 1.0, "crop_mode": "squash"}); they key the feature cache like any other
    data_config: dict = field(default_factory=dict)
    # every class of val and test has training images (checked before runs start); False for a benchmark whose
    # small train split leaves some classes out by design (VTAB-1k: 800 images over SUN397's 397 classes), whose
    # test images of those classes then count as errors, as the benchmark scores them
    train_covers_classes: bool = True

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

    def check_classes(self, splits: dict[str, ImageSplit]) -> None:
        """Refuse a task that cannot be learnt and scored: its train split must hold images of at least two classes
        and every class in val and test must have training images (a one-class task would score 100%), unless
        the task declares that its train split need not cover them (`train_covers_classes`). `splits` are splits
        already loaded (only their labels are read), so the check loads nothing; without "train" among them (a run
        that reads only test) there is nothing to check."""
        if "train" not in splits:
            return
        trained = np.unique(splits["train"].labels)
        if len(trained) < 2:
            raise UserError(
                f"task {self.name!r}: its train split has images of {len(trained)} class"
                f"{'' if len(trained) == 1 else 'es'} ({self._class_names(trained) or 'none'}); a task needs at "
                f"least two classes with training images"
            )
        for split in ("val", "test") if self.train_covers_classes else ():
            if split in splits:
                lacking = np.setdiff1d(np.unique(splits[split].labels), trained)
                if len(lacking):
                    raise UserError(
                        f"task {self.name!r}: its {split} split has images of {len(lacking)} class"
                        f"{'' if len(lacking) == 1 else 'es'} with no training images ({self._class_names(lacking)}); "
                        f"every class in {split} needs images in train"
                    )

    def _class_names(self, labels: np.ndarray, shown: int = 5) -> str:
        """The first few of these labels by class name (by index where the task names no classes)."""
        named = [
            repr(self.classes[i]) if self.classes and 0 <= i < len(self.classes) else str(i) for i in labels.tolist()
        ]
        return ", ".join(named[:shown]) + (f", ... ({len(named)} in all)" if len(named) > shown else "")

    def fetch(self, ctx: LoadContext) -> None:
        """Download the data, only where the task's source allows it."""
        if self.download is None:
            raise UserError(f"task {self.name!r} cannot be downloaded automatically; {self.data_help}")
        self.download(ctx)


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
