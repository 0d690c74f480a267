"""objectnet: ObjectNet 1.0 (Barbu et al. 2019) scored over its 113 classes that map to ImageNet-1k, as Taori et al.'s
testbed (modestyachts/imagenet-testbed, src/eval_settings/objectnet.py) and model-soups (mlfoundations/model-soups,
datasets/objectnet.py) score it. A companion of `imagenet1k`: train and val are ImageNet-1k's (train less its 1%
minival); only test differs (tasks/imagenet_shift.py has the other shift sets).

Layout, as objectnet-1.0.zip (from https://objectnet.dev, password on its download page) unpacks:

    DATA/objectnet-1.0/images/<folder>/*.png                       313 class folders, 50,273 images
    DATA/objectnet-1.0/mappings/folder_to_objectnet_label.json     {folder: ObjectNet class name}
    DATA/objectnet-1.0/mappings/objectnet_to_imagenet_1k.json      {ObjectNet name: "IN name; IN name; ..."}
    DATA/objectnet-1.0/mappings/pytorch_to_imagenet_2012_id.json   {ImageNet-1k index: line of the file below}
    DATA/objectnet-1.0/mappings/imagenet_to_label_2012_v2          the 1000 ImageNet class names, one a line
    DATA/objectnet-1.0/README, LICENSE

The mapping is read as model-soups reads ObjectNet 1.0's: an ImageNet name in objectnet_to_imagenet_1k.json (the
names split at "; ") is a line of imagenet_to_label_2012_v2, and pytorch_to_imagenet_2012_id.json gives the
ImageNet-1k class index (the sorted-wnid order) of each line. The 113 ObjectNet classes so mapped name 125 ImageNet
classes, each mapping to one ObjectNet class. Only the images of those 113 classes are scored (18,574): each
image's `label_sets` are the ImageNet classes its class maps to (`labels`: the lowest of them), and the model's
predictions are restricted to the 125 (`scored_classes`), so a prediction is right when its ImageNet class maps to
the image's ObjectNet class. For top-1 that is the testbed's rule (the argmax over the 125 classes; model-soups
takes the max logit of each class's ImageNet classes, which picks the same class); top-5 counts an image right
when one of the five best ImageNet classes maps to its class. The loader checks that the archive's mapping gives
exactly those 125 classes.

Every image carries a thin (1 px, red) border, which both reference loaders crop: 2 px off each side
(`img.crop((2, 2, w - 2, h - 2))`, PIL.ImageOps.crop(img, 2)) before the model's transforms. The crop is applied by
the split's `image(i)`, which every way images reach the model goes through, and named in `ImageSplit.edit`, so
the decoded-image and feature caches key on it and `--decode device` does not read the files around it.

ObjectNet's license forbids training on it: it is a test split only, never downloaded automatically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task, load_image
from transfer_eval.tasks.imagenet_shared import (
    NUM_CLASSES,
    TRAIN_IMAGES,
    VAL_HOLDOUT,
    class_names,
    companions_of,
    in1k_listing,
    in1k_train_root,
    note_size,
    recipes,
    subdirs,
    walk,
)

ROOT = "objectnet-1.0"
FOLDERS = "folder_to_objectnet_label.json"
TO_IMAGENET = "objectnet_to_imagenet_1k.json"
INDEX_TO_LINE = "pytorch_to_imagenet_2012_id.json"
NAMES = "imagenet_to_label_2012_v2"
MAPPINGS = (FOLDERS, TO_IMAGENET, INDEX_TO_LINE, NAMES)
URL = "https://objectnet.dev"
IMAGES = 18_574  # of the 113 classes that map to ImageNet-1k (of 50,273 in all)
BORDER = 2  # px cropped off each side, as the testbed and model-soups do
EDIT = f"{BORDER} px border cropped off"

# The ImageNet-1k indices that ObjectNet 1.0's mapping names (125 classes, of its 113 mapped ObjectNet classes):
# what every prediction is restricted to. The loader checks that the archive's mapping files give exactly these.
SCORED = (
    409, 412, 414, 418, 419, 423, 434, 440, 444, 446, 455, 457, 462, 463, 470, 473, 479, 487, 499, 504, 507, 508,
    518, 530, 531, 533, 539, 543, 545, 549, 550, 559, 560, 563, 567, 578, 587, 588, 589, 601, 606, 608, 610, 618,
    619, 620, 623, 626, 629, 630, 632, 644, 647, 651, 655, 658, 659, 664, 671, 673, 677, 679, 689, 694, 695, 696,
    700, 703, 720, 721, 725, 728, 729, 731, 732, 737, 740, 742, 749, 752, 759, 761, 765, 769, 770, 772, 773, 774,
    778, 783, 790, 792, 797, 804, 806, 809, 811, 813, 828, 834, 837, 841, 842, 846, 849, 850, 851, 859, 868, 879,
    882, 883, 893, 898, 902, 906, 907, 909, 923, 930, 950, 951, 954, 968, 999,
)  # fmt: skip


def crop_border(img, border: int = BORDER):
    """The image without `border` px on each side (as it is where it is too small to lose them)."""
    if img.width <= 2 * border or img.height <= 2 * border:
        return img
    return img.crop((border, border, img.width - border, img.height - border))


def _help(task: str, data_dir: Path) -> str:
    return (
        f"task {task}: expected {ROOT}/images/<folder>/*.png and {ROOT}/mappings/ ({', '.join(MAPPINGS)}) under "
        f"{data_dir}, as objectnet-1.0.zip from {URL} unpacks (50,273 images in 313 classes, of which the "
        f"{IMAGES:,} in the 113 classes that map to ImageNet-1k are scored); unzip it into the data folder and pass "
        f"--data-dir or set TRANSFER_EVAL_DATA"
    )


def _read(task: str, path: Path, data_dir: Path):
    if not path.is_file():
        raise UserError(f"{_help(task, data_dir)} ({path} is missing)")
    try:
        text = path.read_text(encoding="utf-8")
        return text.splitlines() if path.name == NAMES else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"task {task}: cannot read {path} ({e}); unzip objectnet-1.0.zip again") from None


def mapping(task: str, data_dir: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """({folder: ObjectNet class}, {folder: the ImageNet-1k indices its class maps to}, for the mapped folders)."""
    where = data_dir / ROOT / "mappings"
    folders, to_imagenet, index_to_line, lines = (_read(task, where / name, data_dir) for name in MAPPINGS)
    try:
        line_to_index = {int(line): int(index) for index, line in index_to_line.items()}
        by_name: dict[str, list[int]] = {}
        for line, name in enumerate(lines):
            by_name.setdefault(name.strip(), []).append(line_to_index[line])
        if sorted(line_to_index.values()) != list(range(NUM_CLASSES)) or len(lines) != NUM_CLASSES:
            raise ValueError(f"{INDEX_TO_LINE} and {NAMES} do not give each of the 1000 classes one line")
        folder_of = {name: folder for folder, name in folders.items()}
        mapped = {}
        for objectnet, names in to_imagenet.items():
            if objectnet not in folder_of:
                raise ValueError(f"{TO_IMAGENET} maps {objectnet!r}, a class {FOLDERS} has no folder for")
            indices = []
            for name in names.split("; "):
                if len(by_name.get(name, ())) != 1:
                    raise ValueError(f"{TO_IMAGENET} names {name!r}, which is not one line of {NAMES}")
                indices += by_name[name]
            mapped[folder_of[objectnet]] = tuple(sorted(indices))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"task {task}: the mapping files in {where} are not ObjectNet 1.0's ({e})") from None
    scored = sorted(i for indices in mapped.values() for i in indices)
    if scored != list(SCORED):
        raise UserError(
            f"task {task}: the mapping files in {where} map {len(mapped)} ObjectNet classes to {len(scored)} ImageNet "
            f"classes, not ObjectNet 1.0's 113 to {len(SCORED)}; unzip objectnet-1.0.zip again"
        )
    return folders, mapped


def _test(task: str, ctx: LoadContext) -> ImageSplit:
    data_dir = Path(ctx.data_dir)
    images = data_dir / ROOT / "images"
    if not images.is_dir():
        raise UserError(f"{_help(task, data_dir)} ({images} is missing)")
    folders, mapped = mapping(task, data_dir)
    found = subdirs(images)
    for name, _ in found:
        if name not in folders:
            raise UserError(
                f"task {task}: folder {images / name} is not an ObjectNet class ({FOLDERS} does not name it); "
                f"{images} must hold only the class folders of objectnet-1.0.zip"
            )
    # the mapped classes only, each labelled by its lowest ImageNet class (one per ObjectNet class)
    classes = tuple(sorted((mapped[name][0], name) for name, _ in found if name in mapped))
    paths, labels, ids = walk(str(images), images.stat().st_mtime_ns, tuple(found), classes)
    width = max(len(v) for v in mapped.values())
    padded = {mapped[name][0]: list(mapped[name]) + [-1] * (width - len(mapped[name])) for _, name in classes}
    label_sets = np.asarray([padded[y] for y in labels], dtype=np.int64).reshape(len(labels), width)
    note_size(task, images, len(paths), IMAGES)
    return ImageSplit(lambda i: crop_border(load_image(paths[i])), labels, ids, paths, label_sets, edit=EDIT)


def _load(split: str, ctx: LoadContext) -> ImageSplit:
    if split == "test":
        return _test("objectnet", ctx)
    # the whole ImageNet-1k train set; Task.dataset holds val out of it (val_holdout)
    return ImageSplit.from_files(*in1k_listing("objectnet", in1k_train_root("objectnet", Path(ctx.data_dir))))


objectnet = Task(
    name="objectnet",
    num_classes=NUM_CLASSES,
    load=_load,
    version=1,
    classes=class_names(),
    splits=("train", "val", "test"),
    recipes=recipes(),
    description=(
        "ObjectNet 1.0 (Barbu et al. 2019): the 18,574 images of its 113 classes that map to ImageNet-1k, a 2 px "
        "border cropped off; predictions restricted to the 125 mapped ImageNet classes, right when the class maps "
        "to the image's (Taori et al.'s testbed); train/val = ImageNet-1k train / its 1% minival"
    ),
    data_help=(
        f"unzip objectnet-1.0.zip (from {URL}; the password is on its download page) into DATA so that "
        f"DATA/{ROOT}/images/<folder>/*.png and DATA/{ROOT}/mappings/*.json exist, and pass --data-dir DATA; for "
        f"linear, attention and full, also ImageNet-1k train at DATA/imagenet/train (torchvision layout: "
        f"<wnid>/*.JPEG, all 1000 wnid folders; from image-net.org); never downloaded automatically"
    ),
    sizes={"train": TRAIN_IMAGES, "test": IMAGES},
    companions=companions_of("objectnet"),
    scored_classes=SCORED,
    val_holdout=dict(VAL_HOLDOUT),
    download=None,
)
