"""Miniature iNaturalist 2018 / 2019 / 2021 data in the exact on-disk formats of the official releases.

2018 / 2019 (train_val20xx.tar.gz + train20xx.json + val20xx.json):

    DATA/train2018.json, DATA/val2018.json       COCO-style: info, images [{id, file_name, width, height, license,
                                                 rights_holder}], annotations [{id, image_id, category_id}],
                                                 categories [{id, name, supercategory}], licenses
    DATA/2018/<Supercategory>/<category_id>/<32-hex>.jpg     train and val images in one tree; the JSON file_name
                                                             is `train_val2018/<Supercategory>/<id>/<hex>.jpg`

Image ids are unique random ints (not positions) and the `images` and `annotations` lists are shuffled
independently, so a loader that pairs them by position, or keeps JSON order, is caught. Category ids are
contiguous from 0 (as in the real files) but the supercategory folders interleave them.

2021 (train_mini.tar.gz / train.tar.gz / val.tar.gz, stored under torchvision's names 2021_train_mini/ ...):

    DATA/2021_train_mini/NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_epithet/<uuid4>.jpg

with contiguous 5-digit prefixes from 00000 and exactly 8 underscore pieces, plus a stray .DS_Store.

Every image is a flat colour at its own size; one in four is a grayscale (L) JPEG and one in four a CMYK JPEG,
so a loader that does not convert to RGB is caught. `Img` records what was written for each file.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------------------------------
# What the fixtures hold. Train counts are chosen to hit each rounding case of the 10% hold-out:
# round(0.1 n) for n = 11, 12, 14 -> 1; n = 15, 16 -> 2; n = 25 -> 2 (2.5 rounds to even); n = 8, 6, 5, 3, 2 -> 0
# or 1, lifted to 1; n = 1 -> none held out. The VAL_COUNTS are written out by hand: the expectation, not a
# computation.

CATEGORIES_2018 = [  # (id, name, supercategory)
    (0, "Quercus agrifolia", "Plantae"),
    (1, "Apis mellifera", "Insecta"),
    (2, "Yucca schidigera", "Plantae"),
    (3, "Turdus migratorius", "Aves"),
    (4, "Danaus plexippus", "Insecta"),
]
TRAIN_COUNTS_2018 = {0: 12, 1: 5, 2: 2, 3: 1, 4: 15}
VAL_COUNTS_2018 = {0: 1, 1: 1, 2: 1, 3: 0, 4: 2}
TEST_COUNTS_2018 = {0: 2, 1: 2, 2: 3, 3: 2, 4: 1}

CATEGORIES_2019 = [
    (0, "Turdus migratorius", "Birds"),
    (1, "Quercus agrifolia", "Plants"),
    (2, "Amanita muscaria", "Fungi"),
    (3, "Yucca schidigera", "Plants"),
]
TRAIN_COUNTS_2019 = {0: 11, 1: 3, 2: 25, 3: 2}
VAL_COUNTS_2019 = {0: 1, 1: 1, 2: 2, 3: 1}
TEST_COUNTS_2019 = {0: 3, 1: 3, 2: 3, 3: 3}

CLASSES_2021 = [
    "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris",
    "00001_Animalia_Arthropoda_Insecta_Hymenoptera_Apidae_Apis_mellifera",
    "00002_Fungi_Basidiomycota_Agaricomycetes_Agaricales_Amanitaceae_Amanita_muscaria",
    "00003_Plantae_Tracheophyta_Magnoliopsida_Fagales_Fagaceae_Quercus_agrifolia",
]
TRAIN_MINI_COUNTS = {0: 10, 1: 6, 2: 3, 3: 2}
TRAIN_MINI_VAL_COUNTS = {0: 1, 1: 1, 2: 1, 3: 1}
TRAIN_COUNTS_2021 = {0: 14, 1: 8, 2: 5, 3: 16}
TRAIN_VAL_COUNTS_2021 = {0: 1, 1: 1, 2: 1, 3: 2}
VALID_COUNTS_2021 = {0: 2, 1: 2, 2: 2, 3: 2}


@dataclass
class Img:
    file_name: str  # the official relative name (JSON file_name; for 2021 <tarball folder>/<class>/<file>)
    label: int
    mode: str  # the JPEG's own mode: RGB, L or CMYK
    size: tuple[int, int]
    rgb: tuple[int, int, int]  # what it decodes to as RGB (up to JPEG error)
    image_id: int | None = None


@dataclass
class Year:
    root: Path
    year: str
    folder: Path  # the image tree, DATA/<year>
    train: list[Img]  # in JSON order
    val: list[Img]
    categories: list[tuple[int, str, str]]
    train_json: dict = field(repr=False, default_factory=dict)
    val_json: dict = field(repr=False, default_factory=dict)


@dataclass
class Folder2021:
    root: Path
    folder: Path
    official: str  # train | train_mini | val
    images: list[Img]  # in walk order: class folder, then file name


# --------------------------------------------------------------------------------------------------------------


class _Counter:
    """Gives each written image its mode, size and colour."""

    def __init__(self):
        self.i = 0

    def write(self, path: Path) -> tuple[str, tuple[int, int], tuple[int, int, int]]:
        i = self.i
        self.i += 1
        mode = {1: "L", 2: "CMYK"}.get(i % 4, "RGB")
        size = (12 + i % 5, 10 + i % 3)
        rgb = (30 + (i * 53) % 190, 30 + (i * 97) % 190, 30 + (i * 31) % 190)
        if mode == "L":
            grey = 30 + (i * 71) % 190
            img, rgb = Image.new("L", size, grey), (grey, grey, grey)
        else:
            img = Image.new("RGB", size, rgb).convert(mode)
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, "JPEG", quality=95)
        return mode, size, rgb


def write_year(root: Path, year: str) -> Year:
    """DATA/train<year>.json, DATA/val<year>.json and DATA/<year>/<Supercategory>/<id>/<hex>.jpg."""
    categories = CATEGORIES_2018 if year == "2018" else CATEGORIES_2019
    counts = {"train": TRAIN_COUNTS_2018 if year == "2018" else TRAIN_COUNTS_2019,
              "val": TEST_COUNTS_2018 if year == "2018" else TEST_COUNTS_2019}
    rng = np.random.default_rng(int(year))
    counter = _Counter()
    image_ids = iter(rng.choice(10**6, size=200, replace=False).tolist())
    folder = root / year
    out = {}
    for which in ("train", "val"):
        imgs = []
        for cat, _, sup in categories:
            for k in range(counts[which][cat]):
                name = hashlib.md5(f"{year}/{which}/{cat}/{k}".encode()).hexdigest()  # 32 hex, like the originals
                rel = f"{sup}/{cat}/{name}.jpg"
                mode, size, rgb = counter.write(folder / rel)
                imgs.append(Img(f"train_val{year}/{rel}", cat, mode, size, rgb, next(image_ids)))
        order = rng.permutation(len(imgs))
        imgs = [imgs[j] for j in order]  # JSON order: neither by file name nor by class
        ann_order = rng.permutation(len(imgs))
        doc = {
            "info": {"year": int(year), "version": "1.0", "description": f"iNat{year} {which} (miniature)",
                     "contributor": "fixture", "url": "https://github.com/visipedia/inat_comp",
                     "date_created": f"{year}-03-01 00:00:00"},
            "images": [{"license": 3, "file_name": im.file_name, "rights_holder": "someone", "height": im.size[1],
                        "width": im.size[0], "id": im.image_id} for im in imgs],
            "annotations": [{"id": 7 * int(j) + 1, "image_id": imgs[j].image_id, "category_id": imgs[j].label}
                            for j in ann_order],
            "categories": [{"id": c, "name": n, "supercategory": s} for c, n, s in categories],
            "licenses": [{"id": 3, "name": "Attribution-NonCommercial License",
                          "url": "http://creativecommons.org/licenses/by-nc/4.0/"}],
        }
        (root / f"{which}{year}.json").write_text(json.dumps(doc))
        out[which] = (imgs, doc)
    return Year(root, year, folder, out["train"][0], out["val"][0], list(categories), out["train"][1], out["val"][1])


def write_2021(root: Path, official: str, counts: dict[int, int], disk_name: str | None = None,
               classes=CLASSES_2021) -> Folder2021:
    """DATA/<disk_name>/NNNNN_..._epithet/<uuid4>.jpg (disk_name defaults to torchvision's 2021_<official>),
    plus a .DS_Store at the top and in one class folder."""
    disk_name = disk_name or {"train": "2021_train", "train_mini": "2021_train_mini", "val": "2021_valid"}[official]
    folder = root / disk_name
    rng = np.random.default_rng(len(official) * 1000 + sum(counts.values()))
    counter = _Counter()
    imgs = []
    for cls in classes:
        label = int(cls[:5])
        names = sorted(f"{uuid.UUID(bytes=rng.bytes(16), version=4)}.jpg" for _ in range(counts.get(label, 0)))
        for n in names:
            mode, size, rgb = counter.write(folder / cls / n)
            imgs.append(Img(f"{official}/{cls}/{n}", label, mode, size, rgb))
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (folder / classes[0] / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    return Folder2021(root, folder, official, imgs)
