"""inat2018, inat2019, inat2021, inat2021_mini: the iNaturalist species-classification competitions, read from
the official files under --data-dir.

2018 and 2019: the COCO-style annotation files beside the extracted image tarball (which holds train and val
images together; the JSON files say which is which):

    DATA/train2018.json  DATA/val2018.json                  (train2018.json.tar.gz, val2018.json.tar.gz)
    DATA/2018/<Supercategory>/<category_id>/<32-hex>.jpg    (train_val2018.tar.gz; torchvision's folder name)
      or DATA/train_val2018/...                             (the same, under the tarball's own folder name)

2019 likewise (train2019.json, val2019.json, DATA/2019/ or DATA/train_val2019/). A JSON `file_name` such as
`train_val2018/Plantae/2412/<hex>.jpg` is relative to the folder the tarball was extracted in; it is mapped onto
whichever image folder is present (DATA/2018/ first). The label is the annotation's `category_id` (2018: 0..8141,
2019: 0..1009). torchvision's INaturalist is not used for these years: it merges train and val.

2021: one folder per split, one subfolder per species; no JSON needed (train.json / val.json are not read):

    DATA/2021_train/       or DATA/train/        (train.tar.gz, 2.7M images)       -> inat2021
    DATA/2021_train_mini/  or DATA/train_mini/   (train_mini.tar.gz, 500k images)  -> inat2021_mini
    DATA/2021_valid/       or DATA/val/          (val.tar.gz, 100k images)         -> test of both
        NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_epithet/<uuid4>.jpg

The label is int(NNNNN), the official category id (0..9999). Hidden entries (.DS_Store, ._*) and files that
are not .jpg/.jpeg/.png are ignored.

Splits: test = the official val set (the competitions' test labels are withheld); val = 10% of the official
train set, held out per class by `holdout(labels, 0.1, seed=0)` (VTAB's fraction; stratified, seed 0); train =
the other 90%. The hold-out runs over the train images in a fixed order: 2018/2019 sorted by JSON `file_name`
(not JSON order, so a re-serialised file gives the same split); 2021 sorted by class folder, then file name.
Sample ids are the official relative names (`train_val2018/Plantae/2412/<hex>.jpg`,
`train_mini/<class folder>/<uuid>.jpg`), whatever the folders are called on disk.

No automatic download (74-224 GB): the visipedia/inat_comp GitHub repo lists the official AWS URLs of each
year's images and annotations. Checksums: none are known for the extracted images or the JSON files (the md5s
torchvision keeps are of the image tarballs, gone once extracted), so --skip-verify changes nothing here.

    transfer-eval run -c deit3_s16_in1k -t inat2021_mini -m linear,attention --data-dir DATA
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task

VAL_FRACTION, VAL_SEED = 0.1, 0
URL = "https://ml-inat-competition-datasets.s3.amazonaws.com"
REPO = "https://github.com/visipedia/inat_comp"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_YEARS = {"inat2018": ("2018", 8142, "120 GB"), "inat2019": ("2019", 1010, "74 GB")}
# task -> (train folder names on disk, its official (tarball / JSON) name, its size)
_TRAIN_2021 = {
    "inat2021": (("2021_train", "train"), "train", "224 GB"),
    "inat2021_mini": (("2021_train_mini", "train_mini"), "train_mini", "42 GB"),
}
_VAL_2021 = (("2021_valid", "val"), "val", "8.4 GB")
_CLASS_FOLDER = re.compile(r"^(\d{5})_.+")


# --------------------------------------------------------------------------------------------------------------
# 2018 / 2019: annotation files + one image folder


def _year_help(name: str) -> str:
    year, _, size = _YEARS[name]
    return (
        f"put train{year}.json and val{year}.json in DATA beside the extracted images DATA/{year}/ (or "
        f"DATA/train_val{year}/): extract train_val{year}.tar.gz ({size}), train{year}.json.tar.gz and "
        f"val{year}.json.tar.gz from {URL}/{year}/ (the official URLs are listed in {REPO}) into DATA, and "
        f"pass --data-dir DATA; there is no automatic download"
    )


def _json_path(name: str, data_dir: Path, which: str) -> Path:
    year = _YEARS[name][0]
    path = data_dir / f"{which}{year}.json"
    if not path.is_file():
        raise UserError(
            f"task {name}: no {path.name} in {data_dir} (expected train{year}.json and "
            f"val{year}.json from the iNat {year} competition, beside the images in "
            f"{data_dir / year} or {data_dir / ('train_val' + year)}; URLs in {REPO})"
        )
    return path


def _image_dir(name: str, data_dir: Path) -> Path:
    year = _YEARS[name][0]
    for folder in (data_dir / year, data_dir / f"train_val{year}"):
        if folder.is_dir():
            return folder
    raise UserError(
        f"task {name}: no image folder {data_dir / year} (nor {data_dir / ('train_val' + year)}); "
        f"expected train_val{year}.tar.gz extracted there (<Supercategory>/<category_id>/<hex>.jpg), "
        f"beside train{year}.json and val{year}.json"
    )


_KEEP = frozenset({"images", "annotations", "categories", "id", "file_name", "image_id", "category_id", "name"})


def _slim(pairs):
    """json object hook: keep only the fields used. With text-mode reading, the 2018 train file (437k images)
    peaks near 3x its size while parsing, instead of 4-5x; what is kept afterwards is two compact lists."""
    return {k: v for k, v in pairs if k in _KEEP}


class _Annotations:
    """One annotation file, reduced to what the loader needs: file names sorted, their labels, class names."""

    def __init__(self, file_names: list[str], labels: np.ndarray, class_names: dict[int, str]):
        self.file_names, self.labels, self.class_names = file_names, labels, class_names


def _annotations(name: str, path: Path) -> _Annotations:
    st = path.stat()
    return _parse(name, str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=8)
def _parse(name: str, path: str, mtime_ns: int, size: int) -> _Annotations:
    """Parsed once per process and file version (path, mtime and size are the cache key)."""
    year, num_classes, _ = _YEARS[name]
    try:
        with open(path, encoding="utf-8") as f:  # text mode: no second, bytes copy of the file in memory
            doc = json.load(f, object_pairs_hook=_slim)
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(
            f"task {name}: cannot read {path}: {type(e).__name__}: {e}; re-extract "
            f"{Path(path).name}.tar.gz from {URL}/{year}/"
        ) from None
    what = f"task {name}: {path} is not an iNat {year} annotation file"
    try:
        images, annotations = doc["images"], doc["annotations"]
        categories = doc.get("categories") or []
        if not isinstance(images, list) or not isinstance(annotations, list):
            raise TypeError("'images' and 'annotations' must be lists")
        category = {}
        for a in annotations:
            img, cat = a["image_id"], a["category_id"]
            if not isinstance(cat, int) or not 0 <= cat < num_classes:
                raise UserError(
                    f"{what}: category_id {cat!r} (annotation {a.get('id')}) is outside 0..{num_classes - 1}"
                )
            if category.setdefault(img, cat) != cat:
                raise UserError(f"{what}: image {img} has two annotations, category_id {category[img]} and {cat}")
        pairs, unlabelled = [], []
        tops = (f"train_val{year}", year)
        for im in images:
            fn = im["file_name"]
            if not isinstance(fn, str):
                raise TypeError(f"file_name {fn!r} is not a string")
            top, _, rel = fn.partition("/")
            if top not in tops or not rel:
                raise UserError(f"{what}: file_name {fn!r} does not start with train_val{year}/")
            if im["id"] not in category:
                unlabelled.append(fn)
            else:
                pairs.append((fn, category[im["id"]]))
        names = {c["id"]: str(c["name"]) for c in categories if "name" in c}
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{what}: {type(e).__name__}: {e} (expected COCO-style 'images' [{{id, file_name}}] and "
            f"'annotations' [{{image_id, category_id}}])"
        ) from None
    if unlabelled:
        raise UserError(
            f"{what}: {len(unlabelled):,} of its {len(images):,} images have no annotation, e.g. {unlabelled[0]}"
        )
    del doc, images, annotations, category
    pairs.sort()
    for a, b in zip(pairs, pairs[1:]):
        if a[0] == b[0]:
            raise UserError(f"{what}: {a[0]} is listed twice")
    return _Annotations([fn for fn, _ in pairs], np.fromiter((y for _, y in pairs), np.int64, len(pairs)), names)


def _missing(root: Path, rels: list[str]) -> list[str]:
    """The relative paths that are not in their folder: one listing per folder, not one stat per file."""
    listed: dict[str, set] = {}
    out = []
    for rel in rels:
        parent, _, base = rel.rpartition("/")
        names = listed.get(parent)
        if names is None:
            try:
                names = set(os.listdir(os.path.join(root, parent)))
            except OSError:
                names = set()
            listed[parent] = names
        if base not in names:
            out.append(rel)
    return out


def _year_loader(name: str):
    def load(split: str, ctx: LoadContext) -> ImageSplit:
        data_dir = Path(ctx.data_dir)
        which = "val" if split == "test" else "train"  # the official val set is this suite's test split
        path = _json_path(name, data_dir, which)
        images = _image_dir(name, data_dir)
        ann = _annotations(name, path)
        rels = [fn.partition("/")[2] for fn in ann.file_names]
        missing = _missing(images, rels)
        if missing:
            raise UserError(
                f"task {name}: {len(missing):,} of the {len(rels):,} images listed in {path} are "
                f"missing, e.g. {images / missing[0]}; expected the whole train_val"
                f"{_YEARS[name][0]}.tar.gz extracted in {images}"
            )
        root = str(images)
        # train: the whole official train set; Task.dataset holds val out of it (val_holdout)
        return ImageSplit.from_files([os.path.join(root, r) for r in rels], ann.labels, ann.file_names)

    return load


# --------------------------------------------------------------------------------------------------------------
# 2021: class folders


def _help_2021(name: str) -> str:
    (disk, official, size), (vdisk, vofficial, vsize) = _TRAIN_2021[name], _VAL_2021
    return (
        f"extract {official}.tar.gz ({size}) and {vofficial}.tar.gz ({vsize}) from {URL}/2021/ (the official "
        f"URLs are listed in {REPO}) into DATA, giving DATA/{official}/ and DATA/{vofficial}/ (or name them "
        f"DATA/{disk[0]}/ and DATA/{vdisk[0]}/ as torchvision does), and pass --data-dir DATA; there is no "
        f"automatic download"
    )


class _Folder:
    """One 2021 split folder: its images sorted by class folder then file name, and their labels."""

    def __init__(self, rels: list[str], labels: np.ndarray, class_names: dict[int, str]):
        self.rels, self.labels, self.class_names = rels, labels, class_names


def _folder(name: str, data_dir: Path, names: tuple[str, ...], official: str) -> Path:
    for n in names:
        if (data_dir / n).is_dir():
            return data_dir / n
    raise UserError(
        f"task {name}: no {data_dir / names[0]}/ (nor {data_dir / names[1]}/); expected {official}.tar.gz "
        f"from the iNat 2021 competition extracted there: folders "
        f"NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_epithet/ of .jpg images (URLs in {REPO})"
    )


def _scan(name: str, folder: Path, official: str) -> _Folder:
    """The folder's class folders with their modification times (which change when a file in them is added,
    removed or renamed): the cache key of the listing."""
    try:
        entries = sorted(
            (e.name, e.stat().st_mtime_ns) for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir()
        )
    except OSError as e:
        raise UserError(f"task {name}: cannot list {folder}: {e}") from None
    return _walk(name, str(folder), official, tuple(entries))


@lru_cache(maxsize=8)
def _walk(name: str, folder: str, official: str, entries: tuple) -> _Folder:
    rels, labels, class_names, seen = [], [], {}, {}
    for dir_name, _ in entries:
        m = _CLASS_FOLDER.match(dir_name)
        if not m:
            raise UserError(
                f"task {name}: {os.path.join(folder, dir_name)} is not a class folder; expected only "
                f"NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_epithet folders directly in {folder}, as "
                f"extracted from {official}.tar.gz"
            )
        label = int(m.group(1))
        if label >= 10000:
            raise UserError(
                f"task {name}: class folder {os.path.join(folder, dir_name)}: {m.group(1)} is outside "
                f"the 10,000 categories 00000..09999"
            )
        if label in seen:
            raise UserError(
                f"task {name}: class folders {seen[label]} and {dir_name} in {folder} share the "
                f"category id {m.group(1)}"
            )
        seen[label] = dir_name
        class_names[label] = dir_name[6:]
        try:
            files = sorted(
                f
                for f in os.listdir(os.path.join(folder, dir_name))
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
            )
        except OSError as e:
            raise UserError(f"task {name}: cannot list {os.path.join(folder, dir_name)}: {e}") from None
        rels += [f"{dir_name}/{f}" for f in files]
        labels += [label] * len(files)
    if not seen:
        raise UserError(
            f"task {name}: {folder} has no class folders; expected "
            f"NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_epithet/ folders of images, as extracted "
            f"from {official}.tar.gz"
        )
    return _Folder(rels, np.asarray(labels, dtype=np.int64), class_names)


def _loader_2021(name: str):
    def load(split: str, ctx: LoadContext) -> ImageSplit:
        data_dir = Path(ctx.data_dir)
        names, official, _ = _VAL_2021 if split == "test" else _TRAIN_2021[name]
        folder = _folder(name, data_dir, names, official)
        listing = _scan(name, folder, official)
        root = str(folder)
        # train: the whole official train set; Task.dataset holds val out of it (val_holdout)
        return ImageSplit.from_files(
            [os.path.join(root, r) for r in listing.rels], listing.labels, [f"{official}/{r}" for r in listing.rels]
        )

    return load


# --------------------------------------------------------------------------------------------------------------


def class_names(task_name: str, data_dir) -> dict[int, str]:
    """Category id -> name: from the train JSON's `categories` (2018, 2019), or from the class folder names
    (2021: `Kingdom_Phylum_Class_Order_Family_Genus_epithet`). Where the data lacks a name, the id has none."""
    data_dir = Path(data_dir)
    if task_name in _YEARS:
        return dict(_annotations(task_name, _json_path(task_name, data_dir, "train")).class_names)
    names, official, _ = _TRAIN_2021[task_name]
    return dict(_scan(task_name, _folder(task_name, data_dir, names, official), official).class_names)


def _recipes():
    # The ViT paper's fine-tuning settings for its large target (ImageNet, Table 4; big_vision's transfer configs
    # likewise): SGD momentum 0.9, batch 512, no weight decay, clip at norm 1, 500 warmup steps then cosine,
    # 20,000 steps, lr chosen on val from {0.003, 0.01, 0.03}. "Three things everyone should know about ViTs"
    # fine-tunes on iNat but does not publish its recipe, so these large-dataset settings stand in for it.
    # The optimiser and the rest come from the `vit` preset; the task gives its schedule and lr grid.
    schedule = {"steps": 20000, "warmup_steps": 500, "lr_grid": [0.003, 0.01, 0.03]}
    return {"linear": {}, "attention": dict(schedule), "full": dict(schedule)}


_HOLDOUT = {"fraction": VAL_FRACTION, "seed": VAL_SEED}

inat2018 = Task(
    name="inat2018",
    sizes={"train": 437_513, "test": 24_426},
    num_classes=8142,
    load=_year_loader("inat2018"),
    version=1,
    description="iNaturalist 2018 (8,142 species): official train 437,513 (90% train / 10% val) / official val "
    "24,426 as test",
    data_help=_year_help("inat2018"),
    recipes=_recipes(),
    val_holdout=dict(_HOLDOUT),
)

inat2019 = Task(
    name="inat2019",
    sizes={"train": 265_213, "test": 3_030},
    num_classes=1010,
    load=_year_loader("inat2019"),
    version=1,
    description="iNaturalist 2019 (1,010 species): official train 265,213 (90% train / 10% val) / official val "
    "3,030 as test",
    data_help=_year_help("inat2019"),
    recipes=_recipes(),
    val_holdout=dict(_HOLDOUT),
)

inat2021 = Task(
    name="inat2021",
    sizes={"train": 2_686_843, "test": 100_000},
    num_classes=10000,
    load=_loader_2021("inat2021"),
    version=1,
    description="iNaturalist 2021 (10,000 species): train 2,686,843 (90% train / 10% val) / official val "
    "100,000 as test",
    data_help=_help_2021("inat2021"),
    recipes=_recipes(),
    val_holdout=dict(_HOLDOUT),
)

inat2021_mini = Task(
    name="inat2021_mini",
    sizes={"train": 500_000, "test": 100_000},
    num_classes=10000,
    load=_loader_2021("inat2021_mini"),
    version=1,
    description="iNaturalist 2021 mini (10,000 species, 50 images each): train_mini 500,000 (90% train / 10% val) "
    "/ official val 100,000 as test",
    data_help=_help_2021("inat2021_mini"),
    recipes=_recipes(),
    val_holdout=dict(_HOLDOUT),
)
