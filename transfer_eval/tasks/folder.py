"""Any labelled image folder as a task, from the command line: `-t folder:PATH`.

PATH holds `train/<class>/...` and `test/<class>/...`, and may hold `val/<class>/...` (or `valid/`, `validation/`);
without one, val is 10% of train held out per class (seed 0), as the built-in tasks without an official val.

The splits are read as torchvision's ImageFolder reads a folder (its own `find_classes` and `make_dataset`): the
classes are the sub-folders of each split, sorted in plain string order (`10` before `2`; timm's reader sorts
digit runs as numbers instead: the two disagree on numbered class folders, and ImageFolder's order is the one most
code indexes by), a class's images are every file with an image extension below its folder, nested ones
included, in sorted order. Every split must hold the same class folders: a split with a class the others lack, or
without one they have, is refused (a class missing from test would shift every index after it).

The task's name is `folder:` and the folder's absolute path, so the same folder reached from another working
directory is the same task; its version is this reader's. What the images are is guarded as for every task: the
split manifests (ids are the paths below PATH, with their labels) and the files' sizes and times key the results
and the feature cache.
"""

from __future__ import annotations

from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task

PREFIX = "folder:"
VERSION = 1  # bump when the way a folder is read changes what a run sees
VAL_NAMES = ("val", "valid", "validation")
VAL_HOLDOUT = {"fraction": 0.1, "seed": 0}
SCHEDULE = {"steps": 500, "warmup_steps": 100}  # the ViT paper's schedule for its small tasks (Flowers, Pets)
LAYOUT = "PATH/train/<class>/<image>, PATH/test/<class>/<image> and optionally PATH/val/<class>/<image>"


class EmptyClass(UserError):
    """A class folder of a split without one image (the layout is right: `data check` says which class)."""

    status = "empty class"


def task(spec: str) -> Task:
    """The task of `folder:PATH` (`spec` is PATH). One line says what is wrong with a folder that cannot be one."""
    from torchvision.datasets.folder import find_classes

    root = Path(spec).expanduser().resolve()
    name = PREFIX + str(root)
    if not root.is_dir():
        raise UserError(f"task {PREFIX}{spec}: {root} is not a folder; it should hold {LAYOUT}")
    folders = {"train": root / "train", "test": root / "test"}
    val = next((root / v for v in VAL_NAMES if (root / v).is_dir()), None)
    if val is not None:
        folders["val"] = val
    missing = [s for s, f in folders.items() if not f.is_dir()]
    if missing:
        there = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
        raise UserError(
            f"task {name}: no {' or '.join(m + '/' for m in missing)} folder (it has {', '.join(there) or 'none'}); "
            f"it should hold {LAYOUT}"
        )
    classes = {}
    for split, folder in folders.items():
        try:
            classes[split] = find_classes(str(folder))[0]
        except FileNotFoundError:
            raise UserError(f"task {name}: {folder} has no class folders; it should hold {LAYOUT}") from None
    for split in classes:
        extra, lacking = set(classes[split]) - set(classes["train"]), set(classes["train"]) - set(classes[split])
        if extra or lacking:
            say = [f"classes not in train/: {', '.join(sorted(extra)[:5])}" if extra else ""]
            say += [f"lacks train's classes {', '.join(sorted(lacking)[:5])}" if lacking else ""]
            raise UserError(
                f"task {name}: {folders[split].name}/ {' and '.join(s for s in say if s)}; every split must hold "
                f"the same class folders"
            )
    names = tuple(classes["train"])
    return Task(
        name=name,
        num_classes=len(names),
        load=_loader(root, name, folders, names),
        version=VERSION,
        classes=names,
        splits=("train", "val", "test"),
        recipes=recipes(),
        description=f"image folder: {len(names)} classes, "
        + ("its own val/" if val is not None else "val = 10% of train"),
        data_help=f"the folder should hold {LAYOUT}",
        val_holdout=None if val is not None else dict(VAL_HOLDOUT),
        source=PREFIX,
    )


def recipes() -> dict:
    """The fine-tuning schedule of a task made from data on the command line (a folder, a Hugging Face dataset)."""
    return {mode: dict(SCHEDULE) for mode in ("attention", "full", "finetune")}


def _loader(root: Path, name: str, folders: dict, classes: tuple[str, ...]):
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    index = {c: i for i, c in enumerate(classes)}

    def load(split: str, ctx: LoadContext) -> ImageSplit:
        folder = folders[split if split in folders else "train"]  # without val/, train holds val (val_holdout)
        try:
            samples = make_dataset(str(folder), index, IMG_EXTENSIONS)
        except FileNotFoundError as e:  # a class folder without one image
            samples = make_dataset(str(folder), index, IMG_EXTENSIONS, allow_empty=True)
            empty = [c for c in classes if index[c] not in {label for _, label in samples}]
            if not empty:
                raise UserError(f"task {name}: {folder.name}/: {str(e).splitlines()[0]}") from None
            raise EmptyClass(
                f"task {name}: {', '.join(f'{folder.name}/{c}/' for c in empty[:5])}"
                f"{f' and {len(empty) - 5} more' if len(empty) > 5 else ''} "
                f"{'holds' if len(empty) == 1 else 'hold'} no images ({' '.join(IMG_EXTENSIONS)}); put images of "
                f"{'that class' if len(empty) == 1 else 'those classes'} there, or remove "
                f"{'its folder' if len(empty) == 1 else 'their folders'} from every split"
            ) from None
        paths = [p for p, _ in samples]
        ids = [Path(p).relative_to(root).as_posix() for p in paths]
        return ImageSplit.from_files(paths, [label for _, label in samples], ids)

    return load
