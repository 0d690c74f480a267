"""stanford_cars: Stanford Cars (Krause et al. 2013), 196 classes, official train / test; val held out of train.

The official download is gone (pytorch/vision#7545), so the data comes from a re-packed copy, put under
DATA/stanford_cars/ in one of these layouts:

    torchvision's (Kaggle rickyyyyyyy/torchvision-stanford-cars is exactly this):
        DATA/stanford_cars/cars_train/00001.jpg ... 08144.jpg
        DATA/stanford_cars/cars_test/00001.jpg ... 08041.jpg
        DATA/stanford_cars/devkit/cars_train_annos.mat, cars_meta.mat        (car_devkit.tgz)
        DATA/stanford_cars/cars_test_annos_withlabels.mat                    (or inside devkit/)
    Kaggle jessicali9530/stanford-cars-dataset: the same, with nested image folders
        DATA/stanford_cars/cars_train/cars_train/*.jpg, cars_test/cars_test/*.jpg    (flat ones work too)
        plus devkit/ and cars_test_annos_withlabels.mat added by hand (see HELP)
    the all-in-one release (car_ims.tgz + cars_annos.mat, used when there is no devkit/):
        DATA/stanford_cars/car_ims/000001.jpg ... 016185.jpg
        DATA/stanford_cars/cars_annos.mat     (`annotations`: relative_im_path, bbox_*, class, test)

The annotation files are read with scipy.io.loadmat(squeeze_me=True): `annotations` (bbox_x1..bbox_y2, class in
1..196, fname), label = class - 1. Train is the official train set less the val split: 20% of train held out
per class (transfer_eval.tasks.holdout, seed 0; the 80/20 split of VTAB and CoOp, though not their examples).
Test is the official test set. Sample ids are `cars_train/00001.jpg`, `cars_test/00001.jpg` whatever the image
folder nesting; the all-in-one release numbers its images differently (`car_ims/000001.jpg`), so results on it
carry a different split manifest. There are no official checksums, so nothing is verified.

    transfer-eval run -c deit3_s16_in1k -t stanford_cars -m attention --data-dir DATA
"""

from functools import lru_cache
from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task

NAME = "stanford_cars"
FOLDER = "stanford_cars"
NUM_CLASSES = 196
VAL_FRACTION, VAL_SEED = 0.2, 0
TEST_ANNOS = "cars_test_annos_withlabels.mat"
HELP = (
    "the official download is gone (pytorch/vision#7545), so nothing can be downloaded: get the Kaggle "
    "dataset rickyyyyyyy/torchvision-stanford-cars (already in torchvision's layout) and put its stanford_cars/ "
    "folder under DATA; or get Kaggle jessicali9530/stanford-cars-dataset (cars_train/, cars_test/) into "
    "DATA/stanford_cars/, add devkit/ from https://github.com/pytorch/vision/files/11644847/car_devkit.tgz "
    f"and {TEST_ANNOS} (linked in the pytorch/vision#7545 thread); then pass --data-dir DATA"
)
_EXPECTED = (
    f"cars_train/, cars_test/, devkit/cars_train_annos.mat and {TEST_ANNOS} (torchvision's layout), "
    "or car_ims/ and cars_annos.mat (the all-in-one release)"
)


# --------------------------------------------------------------------------------------------------------------
# .mat files


def _stat(path: Path) -> tuple:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _read_mat(path: Path, variable: str, fields: tuple[str, ...]) -> np.ndarray:
    return _cached_mat(*_stat(path), variable, fields)


@lru_cache(maxsize=8)
def _cached_mat(path: str, size: int, mtime: int, variable: str, fields: tuple[str, ...]) -> np.ndarray:
    """`variable` of a .mat file as a 1-d array, checking the struct fields it must have."""
    from scipy.io import loadmat

    try:
        value = loadmat(path, squeeze_me=True)[variable]
    except KeyError:
        raise UserError(f"task {NAME}: {path} has no variable {variable!r}; is it the right file?") from None
    except Exception as e:  # truncated, not a .mat file
        raise UserError(f"task {NAME}: cannot read {path}: {type(e).__name__}: {e}") from None
    value = np.atleast_1d(value)  # squeeze_me makes a single entry a 0-d array
    names = value.dtype.names or ()
    lacking = [f for f in fields if f not in names]
    if lacking:
        raise UserError(
            f"task {NAME}: {variable} in {path} lacks the field(s) {', '.join(lacking)} "
            f"(it has {', '.join(names) or 'no fields'})"
            f"{'; it has no labels: use ' + TEST_ANNOS if 'class' in lacking else ''}"
        )
    return value


def _classes(annotations: np.ndarray, path: Path) -> list[int]:
    labels = [int(c) - 1 for c in annotations["class"]]
    bad = [y + 1 for y in labels if not 0 <= y < NUM_CLASSES]
    if bad:
        raise UserError(f"task {NAME}: {path} has class {bad[0]} outside 1..{NUM_CLASSES}")
    return labels


def _check_meta(devkit: Path) -> None:
    """cars_meta.mat is optional (labels come from the annotations), but when present it must be the real one."""
    meta = devkit / "cars_meta.mat"
    if not meta.is_file():
        return
    names = _read_mat(meta, "class_names", ())
    if len(names) != NUM_CLASSES:
        raise UserError(f"task {NAME}: {meta} lists {len(names)} class names, expected {NUM_CLASSES}")


# --------------------------------------------------------------------------------------------------------------
# Layouts


def _base(data_dir: Path) -> Path:
    base = data_dir / FOLDER
    if not base.is_dir():
        raise UserError(
            f"task {NAME}: no {FOLDER}/ folder under {data_dir}; expected {FOLDER}/ holding {_EXPECTED}; {HELP}"
        )
    return base


def _image_folder(base: Path, name: str, first: str) -> Path:
    """cars_train/ or, as in the Kaggle copy, cars_train/cars_train/: whichever holds the first annotated file."""
    flat, nested = base / name, base / name / name
    if not flat.is_dir():
        raise UserError(f"task {NAME}: no {name}/ under {base}; expected {name}/*.jpg (or {name}/{name}/*.jpg); {HELP}")
    if not (flat / first).is_file() and (nested / first).is_file():
        return nested
    return flat


def _split_files(base: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """torchvision's layout, image folders flat or nested."""
    devkit = base / "devkit"
    if split == "test":
        candidates = [base / TEST_ANNOS, devkit / TEST_ANNOS]
        annos_path = next((p for p in candidates if p.is_file()), None)
        if annos_path is None:
            raise UserError(
                f"task {NAME}: no {TEST_ANNOS} in {base} (nor in {devkit}); it holds the test labels "
                f"(devkit/cars_test_annos.mat has none): get it from the pytorch/vision#7545 thread "
                f"(or Kaggle rickyyyyyyy/torchvision-stanford-cars) and put it in {base}"
            )
        folder_name = "cars_test"
    else:
        annos_path = devkit / "cars_train_annos.mat"
        if not annos_path.is_file():
            raise UserError(
                f"task {NAME}: {devkit} lacks cars_train_annos.mat; expected car_devkit.tgz extracted there; {HELP}"
            )
        folder_name = "cars_train"
    _check_meta(devkit)
    annos = _read_mat(annos_path, "annotations", ("class", "fname"))
    labels = _classes(annos, annos_path)
    fnames = [str(f) for f in annos["fname"]]
    folder = _image_folder(base, folder_name, fnames[0] if fnames else "")
    paths = [folder / f for f in fnames]
    ids = [f"{folder_name}/{f}" for f in fnames]
    return paths, labels, ids


def _all_in_one(base: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    annos_path = base / "cars_annos.mat"
    annos = _read_mat(annos_path, "annotations", ("relative_im_path", "class", "test"))
    is_test = np.asarray([int(t) for t in annos["test"]], dtype=bool)
    keep = is_test if split == "test" else ~is_test
    rel = [str(p) for p, k in zip(annos["relative_im_path"], keep) if k]
    labels = [y for y, k in zip(_classes(annos, annos_path), keep) if k]
    return [base / p for p in rel], labels, rel


def _official(data_dir: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """The official train or test set: image paths, labels, ids."""
    base = _base(data_dir)
    if (base / "devkit").is_dir():
        paths, labels, ids = _split_files(base, split)
    elif (base / "car_ims").is_dir() and (base / "cars_annos.mat").is_file():
        paths, labels, ids = _all_in_one(base, split)
    else:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in base.iterdir())[:8]
        raise UserError(
            f"task {NAME}: no devkit/ (nor car_ims/ with cars_annos.mat) in {base} "
            f"(it holds {', '.join(found) or 'nothing'}); expected {_EXPECTED}; {HELP}"
        )
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise UserError(
            f"task {NAME}: {len(absent)} of the {len(paths)} {'test' if split == 'test' else 'train'} "
            f"images named in the annotations are missing, e.g. "
            f"{', '.join(str(p) for p in absent[:3])}; the image files must match the "
            f"annotation file names (some re-packed copies lack files or rename them)"
        )
    return paths, labels, ids


def load(split: str, ctx: LoadContext) -> ImageSplit:
    paths, labels, ids = _official(Path(ctx.data_dir), split)
    return ImageSplit.from_files(paths, labels, ids)  # train: whole; Task.dataset holds val out (val_holdout)


def _recipes() -> dict:
    # ViT paper (Table 4) / big_vision transfer recipe: SGD momentum 0.9, batch 512, no weight decay, clip 1,
    # cosine after 200 warmup steps, 2,500 steps; lr from {0.001, 0.003, 0.01, 0.03} chosen on the held-out val.
    # The optimiser and lr grid come from the `vit` preset; the task gives its schedule.
    schedule = {"steps": 2500, "warmup_steps": 200}
    return {"linear": {}, "attention": dict(schedule), "full": dict(schedule)}


stanford_cars = Task(
    name=NAME,
    sizes={"train": 8_144, "test": 8_041},
    num_classes=NUM_CLASSES,
    load=load,
    version=1,
    classes=None,  # the names are in the data (devkit/cars_meta.mat), not shipped here
    description="Stanford Cars (Krause et al. 2013): 8,144 train / 8,041 test images, 196 classes; val = 20% of train",
    data_help=HELP,
    recipes=_recipes(),
    val_holdout={"fraction": VAL_FRACTION, "seed": VAL_SEED},
    download=None,  # the official URL is gone (pytorch/vision#7545)
)
