"""What the ImageNet task plugins share (tasks/imagenet.py, tasks/imagenet_shift.py, tasks/objectnet.py): the
image folders listed once per process, ImageNet-1k train (every one of them trains on it) and its official val set
in both layouts, the wnid lists and label sets that timm ships as package data, and the training recipe and
hold-out that make them companions of each other.

Every task here trains on ImageNet-1k train, selects on its 1% minival and differs only in its test split, so one
fine-tuned model serves all their tests (`COMPANIONS`; transfer_eval.methods.companions): their `recipes()` and
`VAL_HOLDOUT` are one, and so are their class indices (a wnid's rank among the 1000 sorted wnids, the order of
timm's `imagenet_synsets.txt`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError

log = logging.getLogger("transfer_eval.tasks.imagenet")

IN1K = "imagenet1k"
NUM_CLASSES = 1000
TRAIN_IMAGES = 1_281_167
VAL_HOLDOUT = {"fraction": 0.01, "seed": 0}
WNID = re.compile(r"n\d{8}")
IN1K_URL = "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php"

# Every task that trains on ImageNet-1k train and selects on its minival: each names the others as companions.
COMPANIONS = (
    IN1K,
    "imagenetv2_matched_frequency",
    "imagenetv2_threshold07",
    "imagenetv2_top_images",
    "imagenet_real",
    "imagenet_sketch",
    "imagenet_a",
    "imagenet_r",
    "imagenet_a_clean",
    "imagenet_r_clean",
    "objectnet",
)

# The ViT paper's ImageNet fine-tuning (Table 4 / App. B.1.1): the `vit` preset (SGD momentum 0.9, batch 512, no
# weight decay, clip at norm 1) with ImageNet's schedule: 20k steps, 500 warmup, lr from {0.003, ..., 0.06} chosen
# on the 1% minival.
_FINETUNE = {"steps": 20000, "warmup_steps": 500, "lr_grid": [0.003, 0.01, 0.03, 0.06]}


def recipes() -> dict:
    """The recipes of every task trained on ImageNet-1k (equal, so that they are companions)."""
    return {"linear": {}, "pretrained": {}, "attention": dict(_FINETUNE), "full": dict(_FINETUNE)}


def companions_of(name: str) -> tuple[str, ...]:
    return tuple(t for t in COMPANIONS if t != name)


@lru_cache(maxsize=64)
def note_size(task: str, where: Path, n: int, official: int) -> None:
    """Say (once per process) that a folder holds other than the official number of images."""
    if n != official:
        log.warning(
            "transfer-eval: task %s: %s holds %d images, not the official %d: its test accuracy does not compare "
            "with published numbers",
            task,
            where,
            n,
            official,
        )


# --------------------------------------------------------------------------------------------------------------
# What timm ships (timm/data/_info): read as files, without importing timm (and torch)


def _timm_info() -> Path | None:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"


@lru_cache(maxsize=None)
def timm_file(name: str) -> str | None:
    """The text of one of timm's ImageNet info files, or None where timm is not installed or lacks it."""
    info = _timm_info()
    try:
        return (info / name).read_text(encoding="utf-8") if info is not None else None
    except OSError:
        return None


def _need(task: str, name: str) -> str:
    text = timm_file(name)
    if text is None:
        raise UserError(f"task {task}: needs timm's package data file timm/data/_info/{name}; install timm >= 1.0.9")
    return text


@lru_cache(maxsize=1)
def wnids() -> tuple[str, ...] | None:
    """The 1000 ImageNet-1k wnids in class-index order (sorted), from timm's `imagenet_synsets.txt`."""
    text = timm_file("imagenet_synsets.txt")
    found = tuple(text.split()) if text else ()
    return found if len(found) == NUM_CLASSES and list(found) == sorted(found) else None


def class_names() -> tuple[str, ...] | None:
    """The 1000 class names (timm's ImageNetInfo descriptions: "tench, Tinca tinca", ...), or None."""
    text = timm_file("imagenet_synset_to_lemma.txt")
    if wnids() is None or text is None:
        return None
    lemmas = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
    return tuple(lemmas[w] for w in wnids()) if all(w in lemmas for w in wnids()) else None


def subset_indices(subset: str) -> tuple[int, ...] | None:
    """The ImageNet-1k indices of ImageNet-A's ("a") or -R's ("r") 200 classes, from timm's
    `imagenet_<subset>_indices.txt` (what timm's `validate.py --valid-labels` reads), or None."""
    text = timm_file(f"imagenet_{subset}_indices.txt")
    return tuple(int(x) for x in text.split()) if text else None


def subset_wnids(task: str, subset: str) -> dict[str, int]:
    """{wnid: ImageNet-1k index} of ImageNet-A's or -R's 200 classes, once timm's indices file and its synsets file
    are checked to name the same classes."""
    synsets = _need(task, f"imagenet_{subset}_synsets.txt").split()
    indices = [int(x) for x in _need(task, f"imagenet_{subset}_indices.txt").split()]
    every = in1k_wnids(task)
    if len(indices) != 200 or [every[i] for i in indices] != synsets:
        raise UserError(
            f"task {task}: timm's imagenet_{subset}_indices.txt and imagenet_{subset}_synsets.txt do not name the "
            f"same 200 classes; reinstall timm"
        )
    return dict(zip(synsets, indices))


def in1k_wnids(task: str) -> tuple[str, ...]:
    if wnids() is None:
        _need(task, "imagenet_synsets.txt")
        raise UserError(f"task {task}: timm's imagenet_synsets.txt is not the 1000 sorted wnids; reinstall timm")
    return wnids()


@lru_cache(maxsize=1)
def _real(text: str) -> list:
    return json.loads(text)


def real_labels(task: str) -> list[list[int]]:
    """ImageNet ReaL's label sets (google-research/reassessed-imagenet's real.json, shipped by timm as
    `imagenet_real_labels.json`): a list of 50,000 lists, item i for val image number i + 1."""
    sets = _real(_need(task, "imagenet_real_labels.json"))
    if len(sets) != VAL_IMAGES:
        raise UserError(f"task {task}: timm's imagenet_real_labels.json holds {len(sets)} label sets, not 50,000")
    return sets


# --------------------------------------------------------------------------------------------------------------
# Listing image folders


@lru_cache(maxsize=1)
def _image_extensions() -> frozenset:
    """Every extension PIL can open (.jpeg, .jpg, .png, .webp, ...), lower case."""
    from PIL import Image

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")  # .DS_Store, macOS ._* resource forks, .ipynb_checkpoints


def subdirs(root: Path) -> list[tuple[str, int]]:
    """(name, mtime_ns) of the visible subfolders of root, sorted by name."""
    out = []
    with os.scandir(root) as it:
        for e in it:
            if not _is_hidden(e.name) and e.is_dir():
                out.append((e.name, e.stat().st_mtime_ns))
    return sorted(out)


def images_in(folder: str) -> list[str]:
    """Image file names directly in a folder, sorted (hidden files and non-images left out)."""
    exts = _image_extensions()
    with os.scandir(folder) as it:
        names = [
            e.name for e in it if not _is_hidden(e.name) and os.path.splitext(e.name)[1].lower() in exts and e.is_file()
        ]
    return sorted(names)


@lru_cache(maxsize=8)
def walk(root: str, mtime_ns: int, subdirs: tuple, classes: tuple) -> tuple[list[str], list[int], list[str]]:
    """The image files of each (label, folder) in `classes`, in that order, file names sorted: paths, labels and
    ids ("<folder>/<file>"). Cached on the folder's path and the modification times of it and of its class
    folders (`subdirs`): a changed folder is read again, an unchanged one (1.28M files for ImageNet-1k train) is
    walked once per process."""
    paths, labels, ids = [], [], []
    for label, name in classes:
        files = images_in(os.path.join(root, name))  # an empty folder keeps its label and adds no sample
        paths += [os.path.join(root, name, f) for f in files]
        labels += [label] * len(files)
        ids += [f"{name}/{f}" for f in files]
    return paths, labels, ids


def wnid_folders(task: str, root: Path, known: dict[str, int], what: str) -> tuple[list[str], list[int], list[str]]:
    """Paths, labels and ids ("<wnid>/<file>") of `root/<wnid>/*`, each labelled with its wnid's class index in
    `known` (never a rank among the folders present), by label then file name. A folder not in `known` is refused
    (`what` names the classes it may hold)."""
    found = subdirs(root)
    for name, _ in found:
        if name not in known:
            kind = f"one of {what}" if name in set(wnids() or ()) else "an ImageNet-1k class (wnid)"
            raise UserError(f"task {task}: folder {root / name} is not {kind}; {root} must hold only their folders")
    classes = tuple(sorted((known[name], name) for name, _ in found))
    return walk(str(root), root.stat().st_mtime_ns, tuple(found), classes)


# --------------------------------------------------------------------------------------------------------------
# ImageNet-1k train (train and val, for the modes that train)


def in1k_train_root(task: str, data_dir: Path) -> Path:
    root = data_dir / "imagenet" / "train"
    if not root.is_dir():
        raise UserError(
            f"task {task}: needs ImageNet-1k train at {root} (torchvision ImageNet layout: "
            f"train/<wnid>/*.JPEG, the 1000 wnid folders) for linear/attention/full, or use "
            f"`-m pretrained` to evaluate an ImageNet-1k classifier as it is"
        )
    return root


def in1k_listing(task: str, root: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Paths, labels (the wnid's rank among the 1000 sorted wnids: the standard ImageNet-1k class indices) and ids
    ("<wnid>/<file>")."""
    found = subdirs(root)
    names = [n for n, _ in found]
    stray = [n for n in names if not WNID.fullmatch(n)]
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
    return _split_in1k(str(root), root.stat().st_mtime_ns, tuple(found))


@lru_cache(maxsize=2)
def _split_in1k(root: str, mtime_ns: int, found: tuple):
    classes = tuple((idx, name) for idx, (name, _) in enumerate(found))  # sorted by name
    paths, labels, ids = walk(root, mtime_ns, found, classes)
    return paths, np.asarray(labels, dtype=np.int64), ids


# --------------------------------------------------------------------------------------------------------------
# ImageNet-1k val (imagenet1k's test), in torchvision's layout or flat with the devkit's ground truth

DEVKIT = "ILSVRC2012_devkit_t12"
DEVKIT_TAR = f"{DEVKIT}.tar.gz"
DEVKIT_MD5 = "fa75699e90414af021442c21a62c3abf"  # torchvision.datasets.imagenet.ARCHIVE_META["devkit"]
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
VAL_IMAGES = 50_000
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")


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


def val_listing(task: str, root: Path, verify: bool) -> tuple[list[str], list[int], list[str]]:
    """Paths, labels (a wnid's sorted rank) and ids (the file names), by file name (= the official val order), of
    the val images under `root` (DATA/imagenet). Cached on the modification times of the val folder, its class
    folders and the devkit."""
    val = root / "val"
    if not val.is_dir():
        raise UserError(_val_help(task, root))
    devkit = [root / DEVKIT / "data" / "meta.mat", root / DEVKIT / "data" / GROUND_TRUTH, root / DEVKIT_TAR]
    signature = tuple(p.stat().st_mtime_ns if p.exists() else None for p in devkit)
    return _val_items(task, str(root), val.stat().st_mtime_ns, tuple(subdirs(val)), signature, verify)


@lru_cache(maxsize=8)
def _val_items(task: str, root_name: str, mtime_ns: int, folders: tuple, devkit: tuple, verify: bool):
    root = Path(root_name)
    val = root / "val"
    folders, loose = [n for n, _ in folders], images_in(str(val))
    if folders and loose:
        raise UserError(
            f"task {task}: {val} holds both wnid folders and loose images; keep one layout (torchvision's "
            f"val/<wnid>/ or the flat val/ with the devkit)"
        )
    items = []  # (file name, path, label)
    if folders:  # torchvision's layout
        stray = [n for n in folders if not WNID.fullmatch(n)]
        if stray or len(folders) != NUM_CLASSES:
            raise UserError(
                f"task {task}: {val} must hold exactly the 1000 wnid folders of torchvision's layout "
                f"({len(folders)} folders{', e.g. ' + stray[0] + ' is not a wnid' if stray else ''})"
            )
        for rank, wnid in enumerate(folders):
            items += [(f, os.path.join(val, wnid, f), rank) for f in images_in(os.path.join(val, wnid))]
    else:  # flat, labelled by the devkit
        leaves, truth = _devkit(task, root, verify)
        rank = {w: i for i, w in enumerate(sorted(leaves.values()))}
        for f in loose:
            m = VAL_NAME.fullmatch(f)
            if m is None or not 1 <= int(m.group(1)) <= len(truth):
                raise UserError(
                    f"task {task}: {val / f} is not an official val image name (ILSVRC2012_val_00000001.JPEG .. "
                    f"ILSVRC2012_val_{len(truth):08d}.JPEG)"
                )
            items.append((f, os.path.join(val, f), rank[leaves[truth[int(m.group(1)) - 1]]]))
    items.sort()
    note_size(task, val, len(items), VAL_IMAGES)
    return [p for _, p, _ in items], [y for *_, y in items], [f for f, *_ in items]
