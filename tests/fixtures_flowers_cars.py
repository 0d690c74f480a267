"""Miniature Oxford Flowers-102 and Stanford Cars folders in the exact on-disk formats of the real releases.

The .mat files are written with scipy.io.savemat in the shapes and dtypes of the originals:
- flowers-102/imagelabels.mat: `labels`, uint8, shape (1, N), classes 1..102;
- flowers-102/setid.mat: `trnid`, `valid`, `tstid`, uint16, shape (1, n), 1-based image ids (two or more each);
- stanford_cars annotation files: `annotations`, a 1 x N MATLAB struct array (a (1, N) numpy structured array
  with object fields bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname holding np.uint16 / np.uint8 / str);
- devkit/cars_meta.mat: `class_names`, a 1 x 196 cell array of str.

Every image is one flat colour that names it: image k has colour(k), whose red value 20 + 6k is unique, so a
decoded pixel within TOL of it proves the right file was read. The files come in several kinds: RGB, grayscale
("L") and CMYK JPEGs, and a palette PNG and an RGB PNG saved under a .jpg name.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

SIZE = (20, 20)
TOL = 4  # JPEG round trip of a flat colour


def colour(k: int) -> tuple[int, int, int]:
    assert 0 <= k < 38
    return 20 + 6 * k, 230 - 5 * k, 60 + (k * 29) % 150


def expected_pixel(kind: str, k: int) -> tuple[int, int, int]:
    r, g, b = colour(k)
    return (r, r, r) if kind == "L" else (r, g, b)


def image_bytes(kind: str, k: int) -> bytes:
    """kind: rgb | L | CMYK (JPEGs), P | png (PNG bytes, to be saved under a .jpg name)."""
    buf = io.BytesIO()
    rgb = Image.new("RGB", SIZE, colour(k))
    if kind == "rgb":
        rgb.save(buf, "JPEG", quality=95)
    elif kind == "L":
        Image.new("L", SIZE, colour(k)[0]).save(buf, "JPEG", quality=95)
    elif kind == "CMYK":
        rgb.convert("CMYK").save(buf, "JPEG", quality=95)
    elif kind == "P":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(buf, "PNG")
    elif kind == "png":
        rgb.save(buf, "PNG")
    else:
        raise ValueError(kind)
    return buf.getvalue()


def corrupt_bytes() -> bytes:
    """A JPEG cut off after 60 bytes (its headers are not even complete), as an interrupted copy leaves it."""
    return image_bytes("rgb", 0)[:60]


# --------------------------------------------------------------------------------------------------------------
# Oxford Flowers-102

# Image ids 1..20 with their 1-based classes (as in imagelabels.mat) and the official split ids, in file order.
FLOWERS_LABELS = [3, 17, 102, 3, 17, 102, 3, 17, 102, 3, 17, 102, 3, 17, 102, 3, 17, 102, 3, 17]
FLOWERS_SETID = {
    "trnid": [12, 3, 7, 1, 19, 8],   # not sorted: the order of setid.mat is the split's order
    "valid": [2, 15, 6, 11],
    "tstid": [20, 4, 9, 13, 17, 5, 10, 14, 16, 18],
}
FLOWERS_SPLIT_KEY = {"train": "trnid", "val": "valid", "test": "tstid"}
# Image kinds by id (the rest are RGB JPEGs): one of each in train, val and test.
FLOWERS_KINDS = {1: "L", 2: "CMYK", 4: "P", 5: "png", 15: "L", 19: "CMYK", 13: "png"}
FLOWERS_CORRUPT_ID = 7  # in trnid


@dataclass
class FlowersWritten:
    root: Path  # --data-dir
    folder: Path  # root / flowers-102
    labels: list[int] = field(default_factory=lambda: list(FLOWERS_LABELS))  # 1-based, by image id
    setid: dict = field(default_factory=lambda: {k: list(v) for k, v in FLOWERS_SETID.items()})

    def kind(self, image_id: int) -> str:
        return FLOWERS_KINDS.get(image_id, "rgb")


def write_flowers(root: Path, sub: str = "", corrupt: int | None = None) -> FlowersWritten:
    """root/[sub/]flowers-102/{jpg/image_%05d.jpg, imagelabels.mat, setid.mat}."""
    folder = root / sub / "flowers-102" if sub else root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    for image_id in range(1, len(FLOWERS_LABELS) + 1):
        data = corrupt_bytes() if image_id == corrupt else image_bytes(FLOWERS_KINDS.get(image_id, "rgb"),
                                                                          image_id)
        (folder / "jpg" / f"image_{image_id:05d}.jpg").write_bytes(data)
    savemat(folder / "imagelabels.mat", {"labels": np.array(FLOWERS_LABELS, dtype=np.uint8)[None, :]})
    savemat(folder / "setid.mat", {k: np.array(v, dtype=np.uint16)[None, :] for k, v in FLOWERS_SETID.items()})
    return FlowersWritten(root, folder)


# --------------------------------------------------------------------------------------------------------------
# Stanford Cars

CARS_CLASS_NAMES = [f"Make{i // 7} Model{i} {'Sedan' if i % 2 else 'Coupe'} {2000 + i % 13}" for i in range(1, 197)]
CARS_CLASS_NAMES[0] = "AM General Hummer SUV 2000"  # names of unequal lengths: a cell array, not a char matrix
# 1-based classes of cars_train/00001.jpg ... in annotation order: class 1 x5, 7 x1, 50 x8, 196 x4.
CARS_TRAIN_CLASSES = [50, 1, 196, 50, 1, 50, 7, 196, 50, 1, 50, 196, 1, 50, 50, 196, 1, 50]
# The 20% hold-out per class, by hand: round(0.2 * 5) = 1, 1 image holds none, round(1.6) = 2, round(0.8) = 1.
CARS_VAL_COUNTS = {0: 1, 6: 0, 49: 2, 195: 1}
CARS_TEST_CLASSES = [196, 1, 50, 7, 1, 50, 196, 50]
# Image kinds by (split, 1-based file number); colours: train file n has colour(n - 1), test file n colour(17 + n).
CARS_KINDS = {("train", 2): "L", ("train", 5): "CMYK", ("train", 9): "P", ("train", 12): "png",
              ("test", 1): "L", ("test", 3): "CMYK", ("test", 6): "P", ("test", 8): "png"}


def cars_colour_index(split: str, n: int) -> int:
    return n - 1 if split == "train" else len(CARS_TRAIN_CLASSES) + n - 1


def cars_kind(split: str, n: int) -> str:
    return CARS_KINDS.get((split, n), "rgb")


_ANNO_FIELDS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]


def annotations(classes: list[int] | None, fnames: list[str]) -> np.ndarray:
    """A (1, N) structured array that savemat writes as a 1 x N struct array; classes None: no class field (as
    in devkit/cars_test_annos.mat)."""
    names = [f for f in _ANNO_FIELDS if classes is not None or f != "class"]
    out = np.empty((1, len(fnames)), dtype=[(f, object) for f in names])
    for i, fname in enumerate(fnames):
        row = [np.uint16(1 + i), np.uint16(2 + i), np.uint16(15 + i), np.uint16(16 + i)]
        if classes is not None:
            row.append(np.uint8(classes[i]))
        out[0, i] = tuple(row + [fname])
    return out


@dataclass
class CarsWritten:
    root: Path  # --data-dir
    base: Path  # root / stanford_cars
    train_fnames: list[str]
    test_fnames: list[str]
    train_classes: list[int] = field(default_factory=lambda: list(CARS_TRAIN_CLASSES))  # 1-based
    test_classes: list[int] = field(default_factory=lambda: list(CARS_TEST_CLASSES))


def write_cars(root: Path, nested: bool = False, test_annos_in_devkit: bool = False) -> CarsWritten:
    """torchvision's layout; nested=True: Kaggle jessicali9530's cars_train/cars_train/ and cars_test/cars_test/."""
    base = root / "stanford_cars"
    devkit = base / "devkit"
    devkit.mkdir(parents=True)
    train = [f"{n:05d}.jpg" for n in range(1, len(CARS_TRAIN_CLASSES) + 1)]
    test = [f"{n:05d}.jpg" for n in range(1, len(CARS_TEST_CLASSES) + 1)]
    for split, fnames in (("train", train), ("test", test)):
        folder = base / f"cars_{split}" / (f"cars_{split}" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        for n, fname in enumerate(fnames, 1):
            (folder / fname).write_bytes(image_bytes(cars_kind(split, n), cars_colour_index(split, n)))
    savemat(devkit / "cars_train_annos.mat", {"annotations": annotations(CARS_TRAIN_CLASSES, train)})
    savemat(devkit / "cars_test_annos.mat", {"annotations": annotations(None, test)})  # no labels, unused
    savemat(devkit / "cars_meta.mat", {"class_names": np.array(CARS_CLASS_NAMES, dtype=object)[None, :]})
    where = devkit if test_annos_in_devkit else base
    savemat(where / "cars_test_annos_withlabels.mat", {"annotations": annotations(CARS_TEST_CLASSES, test)})
    (devkit / "README.txt").write_text("This file gives documentation for the cars 196 dataset.\n")
    return CarsWritten(root, base, train, test)


# The all-in-one release: car_ims/000001.jpg ... with cars_annos.mat (train and test interleaved, `test` flag).
ALL_IN_ONE_CLASSES = [1, 50, 1, 196, 50, 1, 196, 50, 1, 50, 196, 50]
ALL_IN_ONE_TEST = [0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0]


def write_cars_all_in_one(root: Path) -> Path:
    base = root / "stanford_cars"
    (base / "car_ims").mkdir(parents=True)
    rel = [f"car_ims/{n:06d}.jpg" for n in range(1, len(ALL_IN_ONE_CLASSES) + 1)]
    for k, path in enumerate(rel):
        (base / path).write_bytes(image_bytes("rgb", k))
    names = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annos = np.empty((1, len(rel)), dtype=[(f, object) for f in names])
    for i, path in enumerate(rel):
        annos[0, i] = (path, np.uint16(1), np.uint16(2), np.uint16(15), np.uint16(16),
                       np.uint8(ALL_IN_ONE_CLASSES[i]), np.uint8(ALL_IN_ONE_TEST[i]))
    savemat(base / "cars_annos.mat", {"annotations": annos,
                                      "class_names": np.array(CARS_CLASS_NAMES, dtype=object)[None, :]})
    return base
