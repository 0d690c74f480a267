"""ImageNet's other test sets, each a companion of `imagenet1k`: train and val are ImageNet-1k's (train less its 1%
minival), the class indices are ImageNet-1k's (a wnid's rank among the 1000 sorted wnids, timm's
`imagenet_synsets.txt`), and only test differs. A model trained on ImageNet-1k is scored on every one whose data is
present (transfer_eval.methods.companions). ObjectNet is tasks/objectnet.py.

imagenet_real: ImageNet ReaL (Beyer et al. 2020, "Are we done with ImageNet?", arXiv 2006.07159). The ImageNet-1k
val images, read in either layout imagenet1k reads (tasks/imagenet.py):

    DATA/imagenet/val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG        torchvision's layout
    DATA/imagenet/val/ILSVRC2012_val_NNNNNNNN.JPEG               flat, with the devkit beside it

labelled with ReaL's label sets, google-research/reassessed-imagenet's real.json as timm ships it
(timm/data/_info/imagenet_real_labels.json: 50,000 lists, item i for val image i + 1). An image with an empty set
is left out (3,163 of them: 46,837 are scored), and a prediction is right when it is in its image's set (top-5: when
one of the five is), as timm's `RealLabelsImagenet` scores (`label_sets`; `labels` keeps the original val label).

imagenet_sketch: ImageNet-Sketch (Wang et al. 2019, arXiv 1905.13549), 50,889 images of the 1,000 classes, as
ImageNet-Sketch.zip unpacks:

    DATA/sketch/<wnid>/*.JPEG

imagenet_a: ImageNet-A (Hendrycks et al. 2021, "Natural Adversarial Examples", arXiv 1907.07174), 7,500 images of
200 classes; imagenet_r: ImageNet-R (Hendrycks et al. 2021, "The Many Faces of Robustness", arXiv 2006.16241),
30,000 renditions of 200 classes; as imagenet-a.tar and imagenet-r.tar unpack:

    DATA/imagenet-a/<wnid>/*.jpg   (and README.txt)
    DATA/imagenet-r/<wnid>/*.jpg   (and README.txt)

Each image's label is its wnid's ImageNet-1k index, and every prediction is restricted to the set's 200 classes
(`scored_classes`: the indices of timm's imagenet_a_indices.txt / imagenet_r_indices.txt, checked against its
synsets files): every mode masks the model's 1,000 scores to them before top-k, as the sets' authors and timm's
`validate.py --valid-labels` do. imagenet_a_clean and imagenet_r_clean are the in-distribution points of their
lines, timm's "-clean" results: the ImageNet-1k val images of the same 200 classes (10,000 each), masked the same
way.

A wnid folder that is not an ImageNet-1k class (or not one of A's or R's 200), or a val image whose number ReaL
does not know, is refused in one line. None of these sets is downloaded automatically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task
from transfer_eval.tasks.imagenet_shared import (
    NUM_CLASSES,
    TRAIN_IMAGES,
    VAL_HOLDOUT,
    VAL_NAME,
    class_names,
    companions_of,
    in1k_listing,
    in1k_train_root,
    in1k_wnids,
    note_size,
    real_labels,
    recipes,
    subset_indices,
    subset_wnids,
    val_listing,
    wnid_folders,
)

REAL_IMAGES = 46_837  # val images with a non-empty ReaL label set
REAL_URL = "https://github.com/google-research/reassessed-imagenet"

# task -> (folder under DATA, official size, what it is, where it comes from, file extension, the 200-class subset)
FOLDER_SETS = {
    "imagenet_sketch": (
        "sketch",
        50_889,
        "ImageNet-Sketch (Wang et al. 2019): 50,889 sketches of the 1,000 ImageNet-1k classes",
        "ImageNet-Sketch.zip from https://github.com/HaohanWang/ImageNet-Sketch (or the Hugging Face dataset "
        "imagenet_sketch, data/ImageNet-Sketch.zip)",
        "JPEG",
        None,
    ),
    "imagenet_a": (
        "imagenet-a",
        7_500,
        "ImageNet-A (Hendrycks et al. 2021): 7,500 natural adversarial examples of 200 ImageNet-1k classes, "
        "predictions restricted to the 200",
        "imagenet-a.tar from https://github.com/hendrycks/natural-adv-examples "
        "(https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar)",
        "jpg",
        "a",
    ),
    "imagenet_r": (
        "imagenet-r",
        30_000,
        "ImageNet-R (Hendrycks et al. 2021): 30,000 renditions (art, cartoons, sketches, toys, ...) of 200 "
        "ImageNet-1k classes, predictions restricted to the 200",
        "imagenet-r.tar from https://github.com/hendrycks/imagenet-r "
        "(https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar)",
        "jpg",
        "r",
    ),
}
CLEAN = {"imagenet_a_clean": "a", "imagenet_r_clean": "r"}  # task -> the subset its val images are restricted to
CLEAN_IMAGES = 10_000  # 50 val images of each of the 200 classes
SUBSET_NAME = {"a": "ImageNet-A", "r": "ImageNet-R"}
IN1K_HELP = (
    "for linear, attention and full, also ImageNet-1k train at DATA/imagenet/train (torchvision layout: "
    "<wnid>/*.JPEG, all 1000 wnid folders; from image-net.org)"
)
VAL_HELP = (
    "ImageNet-1k's val images at DATA/imagenet/val: torchvision's val/<wnid>/ layout, or the flat "
    "ILSVRC2012_img_val.tar folder with ILSVRC2012_devkit_t12.tar.gz beside it (from image-net.org)"
)


# --------------------------------------------------------------------------------------------------------------
# Test splits


def _real_test(task: str, ctx: LoadContext) -> ImageSplit:
    """The val images with a non-empty ReaL set, their original labels and their sets (N x M, padded with -1)."""
    paths, labels, ids = val_listing(task, Path(ctx.data_dir) / "imagenet", ctx.verify)
    sets = real_labels(task)
    width = max(len(s) for s in sets)
    keep, rows = [], []
    for i, name in enumerate(ids):
        m = VAL_NAME.fullmatch(name)
        number = int(m.group(1)) if m else 0
        if not 1 <= number <= len(sets):
            raise UserError(
                f"task {task}: {paths[i]} is not a val image ReaL has labels for (its file name is not "
                f"ILSVRC2012_val_00000001.JPEG .. ILSVRC2012_val_{len(sets):08d}.JPEG); keep only the official val "
                f"images in DATA/imagenet/val"
            )
        if sets[number - 1]:
            keep.append(i)
            rows.append(sets[number - 1] + [-1] * (width - len(sets[number - 1])))
    return ImageSplit.from_files(
        [paths[i] for i in keep],
        [labels[i] for i in keep],
        [ids[i] for i in keep],
        np.asarray(rows, dtype=np.int64).reshape(len(rows), width),
    )


def _clean_test(task: str, ctx: LoadContext) -> ImageSplit:
    """The val images of ImageNet-A's or -R's 200 classes."""
    paths, labels, ids = val_listing(task, Path(ctx.data_dir) / "imagenet", ctx.verify)
    allowed = set(subset_wnids(task, CLEAN[task]).values())
    keep = [i for i, y in enumerate(labels) if y in allowed]
    return ImageSplit.from_files([paths[i] for i in keep], [labels[i] for i in keep], [ids[i] for i in keep])


def _folder_test(task: str, ctx: LoadContext) -> ImageSplit:
    folder, size, _, source, ext, subset = FOLDER_SETS[task]
    root = Path(ctx.data_dir) / folder
    if not root.is_dir():
        classes = "1,000" if subset is None else "200"
        raise UserError(
            f"task {task}: no {folder}/ under {ctx.data_dir}; expected {folder}/<wnid>/*.{ext} ({size:,} images, "
            f"{classes} classes) as unpacked from {source}; extract it into the data folder and pass --data-dir "
            f"or set TRANSFER_EVAL_DATA"
        )
    if subset is None:
        known = {w: i for i, w in enumerate(in1k_wnids(task))}
    else:
        known = subset_wnids(task, subset)
    paths, labels, ids = wnid_folders(task, root, known, f"{SUBSET_NAME.get(subset)}'s 200 classes")
    note_size(task, root, len(paths), size)
    return ImageSplit.from_files(paths, labels, ids)


def _loader(task: str):
    def load(split: str, ctx: LoadContext) -> ImageSplit:
        if split != "test":  # the whole ImageNet-1k train set; Task.dataset holds val out of it (val_holdout)
            return ImageSplit.from_files(*in1k_listing(task, in1k_train_root(task, Path(ctx.data_dir))))
        if task == "imagenet_real":
            return _real_test(task, ctx)
        if task in CLEAN:
            return _clean_test(task, ctx)
        return _folder_test(task, ctx)

    return load


# --------------------------------------------------------------------------------------------------------------
# The tasks


def _task(name: str, test_size: int, description: str, data_help: str, scored=None) -> Task:
    return Task(
        name=name,
        num_classes=NUM_CLASSES,
        load=_loader(name),
        version=1,
        classes=class_names(),
        splits=("train", "val", "test"),
        recipes=recipes(),
        description=description,
        data_help=data_help,
        sizes={"train": TRAIN_IMAGES, "test": test_size},
        companions=companions_of(name),
        scored_classes=scored,
        val_holdout=dict(VAL_HOLDOUT),
        download=None,
    )


def _folder_task(name: str) -> Task:
    folder, size, what, source, ext, subset = FOLDER_SETS[name]
    return _task(
        name,
        size,
        f"{what}; test-only, ImageNet-1k labels; train/val = ImageNet-1k train / its 1% minival",
        f"extract {source} into DATA so that DATA/{folder}/<wnid>/*.{ext} exist, and pass --data-dir DATA; "
        f"{IN1K_HELP}; not downloaded automatically",
        subset_indices(subset) if subset else None,
    )


def _clean_task(name: str) -> Task:
    subset = SUBSET_NAME[CLEAN[name]]
    return _task(
        name,
        CLEAN_IMAGES,
        f"ImageNet-1k val restricted to {subset}'s 200 classes (10,000 images), predictions restricted to the 200: "
        f"the in-distribution point of {subset}'s line (timm's -clean results)",
        f"needs {VAL_HELP}; {IN1K_HELP}",
        subset_indices(CLEAN[name]),
    )


imagenet_real = _task(
    "imagenet_real",
    REAL_IMAGES,
    "ImageNet ReaL (Beyer et al. 2020): ImageNet-1k val with the reassessed label sets, 46,837 of the 50,000 "
    "images (those with a non-empty set); right when the prediction is in the image's set",
    f"needs {VAL_HELP}; the label sets ship with timm (imagenet_real_labels.json, from {REAL_URL}); {IN1K_HELP}",
)
imagenet_sketch = _folder_task("imagenet_sketch")
imagenet_a = _folder_task("imagenet_a")
imagenet_r = _folder_task("imagenet_r")
imagenet_a_clean = _clean_task("imagenet_a_clean")
imagenet_r_clean = _clean_task("imagenet_r_clean")
