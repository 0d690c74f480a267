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

import hashlib
import importlib.util
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from transfer_eval import paths
from transfer_eval.errors import UserError, unknown_name

ENTRY_POINT_GROUP = "transfer_eval.tasks"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LoadContext:
    """What a task's loader may use: the data root, and whether to verify checksums."""

    data_dir: Path
    verify: bool = True


class ImageSplit:
    """One split of a task: `image(i)` gives a PIL RGB image, `labels[i]` its class, `ids[i]` a stable name."""

    def __init__(self, image: Callable[[int], "object"], labels: Sequence[int], ids: Sequence[str] | None = None):
        self._image = image
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(self.labels))]
        if len(self.ids) != len(self.labels):
            raise ValueError("ids and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int):
        img = self._image(int(i))
        return img if img.mode == "RGB" else img.convert("RGB")

    def subset(self, indices: Sequence[int]) -> "ImageSplit":
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSplit(lambda j: self._image(int(idx[j])), self.labels[idx], [self.ids[i] for i in idx])

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
    val_holdout: dict | None = None  # e.g. {"fraction": 0.1, "seed": 0} where val is held out from train
    source: str = ""  # filled in by discovery

    def dataset(self, split: str, ctx: LoadContext) -> ImageSplit:
        if split not in self.splits:
            raise UserError(f"task {self.name!r} has no {split!r} split (it has {', '.join(self.splits)})")
        data = self.load(split, ctx)
        if len(data) == 0:
            raise UserError(f"task {self.name!r}: the {split} split is empty under {ctx.data_dir}; {self.data_help}")
        return data


def holdout(labels: Sequence[int], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified hold-out: (kept indices, held-out indices), each sorted.

    Each class's indices are permuted by numpy's default_rng(seed) and the first round(fraction * n) are held
    out (at least one where the class has two or more examples), so the split depends only on the labels.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
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
    mod_name = "transfer_eval_task_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10] + "_" + path.stem
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


def discover(tasks_dirs: Sequence[str | Path] = ()) -> dict[str, Task]:
    """Every task, by name: built-ins, then entry points, then each user folder."""
    found: dict[str, Task] = {}
    sources = [lambda: _from_folder(paths.builtin("tasks")), _from_entry_points]
    sources += [lambda d=d: _from_folder(Path(d)) for d in tasks_dirs]
    for source in sources:
        for t in source():
            if t.name in found and found[t.name].source != t.source:
                print(f"transfer-eval: task {t.name!r} from {t.source} overrides the one from "
                      f"{found[t.name].source}", file=sys.stderr)
            found[t.name] = t
    return found


def resolve(name: str, tasks: dict[str, Task]) -> Task:
    if name not in tasks:
        raise unknown_name("task", name, tasks, hint="(see `transfer-eval list tasks`; add one with --tasks-dir DIR)")
    return tasks[name]
