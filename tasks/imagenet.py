"""imagenet1k: ImageNet-1k (ILSVRC 2012) with its official 50,000 val images as test; imagenetv2_matched_frequency,
imagenetv2_threshold07, imagenetv2_top_images: ImageNet-V2 (Recht et al. 2019) in the same label space.

ImageNet-1k train, in torchvision's ImageNet layout (every task here that trains reads it):

    DATA/imagenet/train/<wnid>/*.JPEG          exactly the 1000 wnid folders; class index = the wnid's rank in
                                               sorted order (the standard ImageNet-1k indices)

`val` is 1% of it held out per class (the ViT paper's "minival", `holdout(labels, 0.01, seed=0)`).

imagenet1k's `test` is the official validation set, in either of its two layouts:

    DATA/imagenet/val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG        torchvision's layout (after its val parsing)
    DATA/imagenet/val/ILSVRC2012_val_NNNNNNNN.JPEG               the flat folder of ILSVRC2012_img_val.tar, with
    DATA/imagenet/ILSVRC2012_devkit_t12/data/meta.mat            the devkit's ground truth (extracted, or the
    DATA/imagenet/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt   ILSVRC2012_devkit_t12.tar.gz
                                                                 there, read in place and md5-checked)

The ground truth gives each val image an ILSVRC2012_ID (1..1000), which is NOT the class index: meta.mat maps it
to its wnid, whose sorted rank is. Sample ids are the file names (ILSVRC2012_val_00000001.JPEG, ...) in both
layouts, so the two give the same split manifest and their results compare. `-m pretrained` evaluates a
checkpoint's own ImageNet-1k head on val and reads nothing else.

ImageNet-V2: test-only datasets (1000 classes, 10 images each), as the tarballs of the Hugging Face dataset
vaishaal/ImageNetV2 extract:

    DATA/imagenetv2-matched-frequency-format-val/<class index 0..999>/<40-hex sha1>.jpeg
    DATA/imagenetv2-threshold0.7-format-val/...
    DATA/imagenetv2-top-images-format-val/...

(DATA/imagenetv2/<the same folder>/ is accepted too; older copies name the files 0.jpeg..9.jpeg, and any image
extension is read.) The label of an image is `int(<its folder name>)`, the ImageNet-1k class index: NOT the
folder's rank, neither in string order (what torchvision's ImageFolder and the official README do: '10' -> 2,
'100' -> 3, '2' -> 112, ...) nor in numeric order among the folders present (wrong as soon as one is missing).

Two ways to run ImageNet-V2 (and imagenet1k):

- `-m pretrained`: a checkpoint with an ImageNet-1k head is evaluated as it is, without training; only the
  `test` split is read.
- `-m linear|attention|full|...`: trained on ImageNet-1k train (above), selected on its 1% minival, scored on
  the test split.

Table 5 of "Three things everyone should know about Vision Transformers" (attention-only fine-tuning from 224 to
384 px, scored on ImageNet val and ImageNet-V2) is `transfer-eval paper run three-things-table5`, or by hand:

    transfer-eval run -c deit3_s16_in1k -t imagenet1k,imagenetv2_matched_frequency -m attention --resolution 384

No automatic download: ImageNet-1k needs an account at image-net.org, and there is no published checksum of the
ImageNet-V2 tarballs to verify a download against.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task

log = logging.getLogger("transfer_eval.tasks.imagenet")
IN1K = "imagenet1k"

NUM_CLASSES = 1000
VAL_FRACTION, VAL_SEED = 0.01, 0
HF_DATASET = "vaishaal/ImageNetV2"
HF_URL = "https://huggingface.co/datasets/vaishaal/ImageNetV2"

# task name -> the variant's name in the tarball and folder names
VARIANTS = {
    "imagenetv2_matched_frequency": "matched-frequency",
    "imagenetv2_threshold07": "threshold0.7",
    "imagenetv2_top_images": "top-images",
}
_WNID = re.compile(r"n\d{8}")


def folder_name(variant: str) -> str:
    return f"imagenetv2-{variant}-format-val"


def tarball(variant: str) -> str:
    return f"imagenetv2-{variant}.tar.gz"


# --------------------------------------------------------------------------------------------------------------
# Listing image folders


@lru_cache(maxsize=1)
def _image_extensions() -> frozenset:
    """Every extension PIL can open (.jpeg, .jpg, .png, .webp, ...), lower case."""
    from PIL import Image

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")  # .DS_Store, macOS ._* resource forks, .ipynb_checkpoints


def _subdirs(root: Path) -> list[tuple[str, int]]:
    """(name, mtime_ns) of the visible subfolders of root, sorted by name."""
    out = []
    with os.scandir(root) as it:
        for e in it:
            if not _is_hidden(e.name) and e.is_dir():
                out.append((e.name, e.stat().st_mtime_ns))
    return sorted(out)


def _images_in(folder: str) -> list[str]:
    """Image file names directly in a folder, sorted (hidden files and non-images left out)."""
    exts = _image_extensions()
    with os.scandir(folder) as it:
        names = [
            e.name for e in it if not _is_hidden(e.name) and os.path.splitext(e.name)[1].lower() in exts and e.is_file()
        ]
    return sorted(names)


# --------------------------------------------------------------------------------------------------------------
# ImageNet-V2 (test)


def _v2_root(task: str, data_dir: Path) -> Path:
    name = folder_name(VARIANTS[task])
    for root in (data_dir / name, data_dir / "imagenetv2" / name):
        if root.is_dir():
            return root
    raise UserError(
        f"task {task}: no {name}/ under {data_dir} (nor under {data_dir / 'imagenetv2'}); expected "
        f"{name}/<class index 0..999>/*.jpeg as extracted from {tarball(VARIANTS[task])} of the "
        f"Hugging Face dataset {HF_DATASET} ({HF_URL}); extract it into the data folder and pass "
        f"--data-dir or set TRANSFER_EVAL_DATA"
    )


def _class_index(task: str, root: Path, name: str) -> int:
    if not (name.isascii() and name.isdigit() and 0 <= int(name) < NUM_CLASSES):
        raise UserError(
            f"task {task}: folder {root / name} is not an ImageNet-1k class index (an integer "
            f"0..999); {root} must hold only the folders 0..999 of {tarball(VARIANTS[task])}"
        )
    return int(name)


def _v2_listing(task: str, root: Path) -> tuple[list[str], list[int], list[str]]:
    """Paths, labels (int(folder name), never a rank) and ids ("<folder>/<file>"), by class index then file name."""
    subdirs = _subdirs(root)
    by_index: dict[int, str] = {}
    for name, _ in subdirs:
        idx = _class_index(task, root, name)
        if idx in by_index:
            raise UserError(f"task {task}: folders {root / by_index[idx]} and {root / name} are both class {idx}")
        by_index[idx] = name
    return _walk(str(root), root.stat().st_mtime_ns, tuple(subdirs), tuple(sorted(by_index.items())))


@lru_cache(maxsize=4)
def _walk(root: str, mtime_ns: int, subdirs: tuple, classes: tuple) -> tuple[list[str], list[int], list[str]]:
    """The image files of each (label, folder) in `classes`, in that order, file names sorted. Cached on the
    folder's path and the modification times of it and of its class folders (`subdirs`): a changed folder is
    read again, an unchanged one (1.28M files for ImageNet-1k train) is walked once per process."""
    paths, labels, ids = [], [], []
    for label, name in classes:
        files = _images_in(os.path.join(root, name))  # an empty folder keeps its label and adds no sample
        paths += [os.path.join(root, name, f) for f in files]
        labels += [label] * len(files)
        ids += [f"{name}/{f}" for f in files]
    return paths, labels, ids


# --------------------------------------------------------------------------------------------------------------
# ImageNet-1k train (train and val, for the modes that train)


def _in1k_train_root(task: str, data_dir: Path) -> Path:
    root = data_dir / "imagenet" / "train"
    if not root.is_dir():
        raise UserError(
            f"task {task}: needs ImageNet-1k train at {root} (torchvision ImageNet layout: "
            f"train/<wnid>/*.JPEG, the 1000 wnid folders) for linear/attention/full, or use "
            f"`-m pretrained` to evaluate an ImageNet-1k classifier as it is"
        )
    return root


def _in1k_listing(task: str, root: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Paths, labels (the wnid's rank among the 1000 sorted wnids: the standard ImageNet-1k class indices) and ids
    ("<wnid>/<file>")."""
    subdirs = _subdirs(root)
    names = [n for n, _ in subdirs]
    stray = [n for n in names if not _WNID.fullmatch(n)]
    if stray:
        raise UserError(
            f"task {task}: {root / stray[0]} is not a WordNet-id folder (n########); {root} must "
            f"hold exactly the 1000 ImageNet-1k class folders of torchvision's ImageNet layout"
        )
    if len(names) != NUM_CLASSES:
        raise UserError(
            f"task {task}: {root} has {len(names)} wnid folders, ImageNet-1k train has exactly "
            f"{NUM_CLASSES}; the class index is a wnid's rank among all 1000 in sorted order, so a "
            f"subset would shift the indices away from the ImageNet-1k (and ImageNet-V2) labels"
        )
    return _split_in1k(str(root), root.stat().st_mtime_ns, tuple(subdirs))


@lru_cache(maxsize=2)
def _split_in1k(root: str, mtime_ns: int, subdirs: tuple):
    classes = tuple((idx, name) for idx, (name, _) in enumerate(subdirs))  # subdirs are sorted by name
    paths, labels, ids = _walk(root, mtime_ns, subdirs, classes)
    labels = np.asarray(labels, dtype=np.int64)
    return paths, labels, ids


# --------------------------------------------------------------------------------------------------------------
# ImageNet-1k val (imagenet1k's test), in torchvision's layout or flat with the devkit's ground truth

DEVKIT = "ILSVRC2012_devkit_t12"
DEVKIT_TAR = f"{DEVKIT}.tar.gz"
DEVKIT_MD5 = "fa75699e90414af021442c21a62c3abf"  # torchvision.datasets.imagenet.ARCHIVE_META["devkit"]
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
VAL_IMAGES = 50_000
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
IN1K_URL = "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php"


def _val_help(task: str, root: Path) -> str:
    return (
        f"task {task}: needs the ImageNet-1k val images at {root / 'val'}: either torchvision's layout "
        f"(val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG) or the flat folder of ILSVRC2012_img_val.tar with the devkit "
        f"({DEVKIT_TAR}, or its extracted {DEVKIT}/ folder) in {root}; both from {IN1K_URL} (an account is needed)"
    )


def _devkit(task: str, root: Path, verify: bool) -> tuple[dict[int, str], list[int]]:
    """(ILSVRC2012_ID -> wnid of the 1000 leaf synsets, the ground-truth ID of each val image in order), from the
    extracted devkit folder or, read in place, its tarball."""
    import io
    import tarfile

    import scipy.io

    data = root / DEVKIT / "data"
    tar = root / DEVKIT_TAR
    meta_name, truth_name = f"{DEVKIT}/data/meta.mat", f"{DEVKIT}/data/{GROUND_TRUTH}"
    if (data / "meta.mat").is_file() and (data / GROUND_TRUTH).is_file():
        meta_bytes, truth_text = (data / "meta.mat").read_bytes(), (data / GROUND_TRUTH).read_text()
        where = data
    elif tar.is_file():
        if verify:
            import hashlib

            with open(tar, "rb") as f:
                md5 = hashlib.file_digest(f, "md5").hexdigest() if hasattr(hashlib, "file_digest") else None
            if md5 is None:
                md5 = hashlib.md5(tar.read_bytes()).hexdigest()  # Python 3.10; the devkit is 2.5 MB
            if md5 != DEVKIT_MD5:
                raise UserError(
                    f"task {task}: {tar} has not the md5 of the official devkit ({DEVKIT_MD5}); download it again "
                    f"from {IN1K_URL}, or pass --skip-verify for a re-packed copy"
                )
        try:
            with tarfile.open(tar) as t:
                meta_bytes = t.extractfile(meta_name).read()
                truth_text = t.extractfile(truth_name).read().decode()
        except (KeyError, AttributeError, tarfile.TarError, OSError) as e:
            raise UserError(f"task {task}: {tar} lacks {meta_name} or {truth_name} ({e})") from None
        where = tar
    else:
        raise UserError(_val_help(task, root))
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
        leaves = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
        truth = [int(x) for x in truth_text.split()]
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"task {task}: cannot read the devkit's meta.mat or ground truth in {where} ({e})") from None
    if len(leaves) != NUM_CLASSES or set(leaves) != set(range(1, NUM_CLASSES + 1)):
        raise UserError(f"task {task}: meta.mat in {where} has {len(leaves)} leaf synsets, not ILSVRC2012_ID 1..1000")
    bad = [t for t in truth if t not in leaves]
    if bad:
        raise UserError(f"task {task}: {GROUND_TRUTH} in {where} names ILSVRC2012_ID {bad[0]}, outside 1..1000")
    return leaves, truth


def _val_listing(task: str, root: Path, verify: bool) -> tuple[list[str], list[int], list[str]]:
    """Paths, labels (a wnid's sorted rank) and ids (the file names), by file name (= the official val order).
    Cached on the modification times of the val folder, its class folders and the devkit."""
    val = root / "val"
    if not val.is_dir():
        raise UserError(_val_help(task, root))
    devkit = [root / DEVKIT / "data" / "meta.mat", root / DEVKIT / "data" / GROUND_TRUTH, root / DEVKIT_TAR]
    signature = tuple(p.stat().st_mtime_ns if p.exists() else None for p in devkit)
    return _val_items(task, str(root), val.stat().st_mtime_ns, tuple(_subdirs(val)), signature, verify)


@lru_cache(maxsize=2)
def _val_items(task: str, root_name: str, mtime_ns: int, subdirs: tuple, devkit: tuple, verify: bool):
    root = Path(root_name)
    val = root / "val"
    folders, loose = [n for n, _ in subdirs], _images_in(str(val))
    if folders and loose:
        raise UserError(
            f"task {task}: {val} holds both wnid folders and loose images; keep one layout (torchvision's "
            f"val/<wnid>/ or the flat val/ with the devkit)"
        )
    items = []  # (file name, path, label)
    if folders:  # torchvision's layout
        stray = [n for n in folders if not _WNID.fullmatch(n)]
        if stray or len(folders) != NUM_CLASSES:
            raise UserError(
                f"task {task}: {val} must hold exactly the 1000 wnid folders of torchvision's layout "
                f"({len(folders)} folders{', e.g. ' + stray[0] + ' is not a wnid' if stray else ''})"
            )
        for rank, wnid in enumerate(folders):
            items += [(f, os.path.join(val, wnid, f), rank) for f in _images_in(os.path.join(val, wnid))]
    else:  # flat, labelled by the devkit
        leaves, truth = _devkit(task, root, verify)
        rank = {w: i for i, w in enumerate(sorted(leaves.values()))}
        for f in loose:
            m = _VAL_NAME.fullmatch(f)
            if m is None or not 1 <= int(m.group(1)) <= len(truth):
                raise UserError(
                    f"task {task}: {val / f} is not an official val image name (ILSVRC2012_val_00000001.JPEG .. "
                    f"ILSVRC2012_val_{len(truth):08d}.JPEG)"
                )
            items.append((f, os.path.join(val, f), rank[leaves[truth[int(m.group(1)) - 1]]]))
    items.sort()
    if len(items) != VAL_IMAGES:
        log.warning(
            "transfer-eval: task %s: %s holds %d val images, not the official %d: its test accuracy does not "
            "compare with published numbers",
            task,
            val,
            len(items),
            VAL_IMAGES,
        )
    return [p for _, p, _ in items], [y for *_, y in items], [f for f, *_ in items]


# --------------------------------------------------------------------------------------------------------------
# The tasks


def _loader(task: str):
    def load(split: str, ctx: LoadContext) -> ImageSplit:
        data_dir = Path(ctx.data_dir)
        if split == "test" and task == IN1K:
            return ImageSplit.from_files(*_val_listing(task, data_dir / "imagenet", ctx.verify))
        if split == "test":
            paths, labels, ids = _v2_listing(task, _v2_root(task, data_dir))
            return ImageSplit.from_files(paths, labels, ids)
        # train: the whole ImageNet-1k train set; Task.dataset holds val out of it (val_holdout)
        return ImageSplit.from_files(*_in1k_listing(task, _in1k_train_root(task, data_dir)))

    return load


def _imagenet1k_classes() -> tuple[str, ...] | None:
    """The 1000 class names (timm's ImageNetInfo descriptions: "tench, Tinca tinca", ...), read from the data files
    that timm ships without importing timm (and torch); None where they are not installed."""
    try:
        spec = importlib.util.find_spec("timm")
        if spec is None or not spec.submodule_search_locations:
            return None
        info = Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"
        synsets = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
        lemmas = dict(
            line.split("\t", 1)
            for line in (info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines()
            if "\t" in line
        )
        names = tuple(lemmas[s] for s in synsets)
    except (OSError, ValueError, KeyError):
        return None
    return names if len(names) == NUM_CLASSES else None


def _help(variant: str) -> str:
    return (
        f"extract {tarball(variant)} from the Hugging Face dataset {HF_DATASET} ({HF_URL}) into DATA (so "
        f"that DATA/{folder_name(variant)}/0..999/ exist; DATA/imagenetv2/{folder_name(variant)}/ works too) "
        f"and pass --data-dir DATA; not downloaded automatically (no published sha256 to verify the tarball "
        f"against). ImageNet-V2 is test-only: -m pretrained needs nothing else; linear, attention and full "
        f"also need ImageNet-1k train at DATA/imagenet/train (torchvision layout: <wnid>/*.JPEG, all 1000 "
        f"wnid folders; from image-net.org)"
    )


# The ViT paper's ImageNet fine-tuning (Table 4 / App. B.1.1): the `vit` preset (SGD momentum 0.9, batch 512, no
# weight decay, clip at norm 1) with ImageNet's schedule: 20k steps, 500 warmup, lr from {0.003, ..., 0.06} chosen
# on the 1% minival.
_FINETUNE = {"steps": 20000, "warmup_steps": 500, "lr_grid": [0.003, 0.01, 0.03, 0.06]}

_CLASSES = _imagenet1k_classes()


def _companions(name: str) -> tuple[str, ...]:
    """The other tasks trained on ImageNet-1k train and its minival: one fine-tuned model serves all their tests."""
    return tuple(t for t in (IN1K, *VARIANTS) if t != name)


def _task(name: str) -> Task:
    variant = VARIANTS[name]
    return Task(
        companions=_companions(name),
        name=name,
        num_classes=NUM_CLASSES,
        sizes={"train": 1_281_167, "test": 10_000},
        load=_loader(name),
        version=1,
        classes=_CLASSES,
        splits=("train", "val", "test"),
        description=f"ImageNet-V2 {variant} (Recht et al. 2019): test-only, 10,000 images, ImageNet-1k labels; "
        f"train/val = ImageNet-1k train / its 1% minival",
        data_help=_help(variant),
        recipes={"linear": {}, "pretrained": {}, "attention": dict(_FINETUNE), "full": dict(_FINETUNE)},
        val_holdout={"fraction": VAL_FRACTION, "seed": VAL_SEED},
        download=None,  # no published checksum of the tarballs on Hugging Face to verify a download against
    )


imagenet1k = Task(
    companions=_companions(IN1K),
    name=IN1K,
    sizes={"train": 1_281_167, "test": VAL_IMAGES},
    num_classes=NUM_CLASSES,
    load=_loader(IN1K),
    version=1,
    classes=_CLASSES,
    splits=("train", "val", "test"),
    description="ImageNet-1k (ILSVRC 2012): 1,281,167 train images less the 1% minival held out as val; test = "
    "the official 50,000 val images (torchvision's layout, or flat with the devkit's ground truth)",
    data_help=(
        f"put ImageNet-1k at DATA/imagenet: train/<wnid>/*.JPEG (the 1000 wnid folders) and val/ (torchvision's "
        f"val/<wnid>/ layout, or the flat ILSVRC2012_img_val.tar folder with {DEVKIT_TAR} beside it), from "
        f"{IN1K_URL}, and pass --data-dir DATA; never downloaded automatically (it needs an account)"
    ),
    recipes={"linear": {}, "pretrained": {}, "attention": dict(_FINETUNE), "full": dict(_FINETUNE)},
    val_holdout={"fraction": VAL_FRACTION, "seed": VAL_SEED},
    download=None,
)
imagenetv2_matched_frequency = _task("imagenetv2_matched_frequency")
imagenetv2_threshold07 = _task("imagenetv2_threshold07")
imagenetv2_top_images = _task("imagenetv2_top_images")
