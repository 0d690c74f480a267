"""inat2018 / inat2019 / inat2021 / inat2021_mini over miniature copies of the official formats (fixtures/inat.py).

Covers the labels and ids of each split (test = the official val annotations; val = a stratified 10% hold-out
of the official train set, recomputed here from its rule; official val images never in train or val), both
image-folder names, the 2021 class-folder walk (labels = folder prefix, .DS_Store ignored), RGB decoding of
grayscale and CMYK JPEGs, the JSON cache, the errors for missing or malformed data, and the CLI end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import conftest
import numpy as np
import pytest
from conftest import assert_one_line_error, cli, json_lines, stored_rows

from transfer_eval import tasks
from transfer_eval.errors import UserError
from transfer_eval.tasks import LoadContext

sys.path.insert(0, str(Path(__file__).parent.parent))
from fixtures import inat as F  # noqa: E402

YEARS = {"inat2018": "2018", "inat2019": "2019"}
NUM_CLASSES = {"inat2018": 8142, "inat2019": 1010, "inat2021": 10000, "inat2021_mini": 10000}
VAL_COUNTS = {
    "inat2018": F.VAL_COUNTS_2018,
    "inat2019": F.VAL_COUNTS_2019,
    "inat2021": F.TRAIN_VAL_COUNTS_2021,
    "inat2021_mini": F.TRAIN_MINI_VAL_COUNTS,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One --data-dir: 2018, 2019, 2021_train_mini and 2021_valid (no 2021_train: inat2021 is not ready)."""
    return tmp_path_factory.mktemp("inat_data")


@pytest.fixture(scope="module")
def written(data_root):
    return {
        "inat2018": F.write_year(data_root, "2018"),
        "inat2019": F.write_year(data_root, "2019"),
        "inat2021_mini": F.write_2021(data_root, "train_mini", F.TRAIN_MINI_COUNTS),
        "valid": F.write_2021(data_root, "val", F.VALID_COUNTS_2021),
    }


@pytest.fixture(scope="module")
def root_2021(tmp_path_factory, written) -> Path:
    """A second --data-dir for inat2021: 2021_train and the same 2021_valid."""
    root = tmp_path_factory.mktemp("inat2021_data")
    F.write_2021(root, "train", F.TRAIN_COUNTS_2021)
    shutil.copytree(written["valid"].folder, root / "2021_valid")
    return root


@pytest.fixture(scope="module")
def found():
    return tasks.discover()


def load(found, name: str, split: str, root: Path):
    return found[name].dataset(split, LoadContext(Path(root)))


def plugin(found):
    return sys.modules[found["inat2018"].load.__module__]


def expected_holdout(labels: list[int], fraction: float = 0.1, seed: int = 0) -> list[int]:
    return conftest.expected_holdout(labels, fraction, seed)


def by_name(imgs) -> dict[str, F.Img]:
    return {im.file_name: im for im in imgs}


def official_train_images(written, name) -> list[F.Img]:
    return written[name].train if name in YEARS else written[name].images


def official_val_images(written, name) -> list[F.Img]:
    return written[name].val if name in YEARS else written["valid"].images


# --------------------------------------------------------------------------------------------------------------
# The fixture itself is in the real format


@pytest.mark.parametrize("name", ["inat2018", "inat2019"])
def test_fixture_is_coco_style_in_the_official_tree(written, name):
    w = written[name]
    for which, imgs in (("train", w.train), ("val", w.val)):
        doc = json.loads((w.root / f"{which}{w.year}.json").read_text())
        assert set(doc) == {"info", "images", "annotations", "categories", "licenses"}
        assert all({"id", "file_name", "width", "height"} <= set(im) for im in doc["images"])
        assert all(set(a) == {"id", "image_id", "category_id"} for a in doc["annotations"])
        assert [set(c) for c in doc["categories"]] == [{"id", "name", "supercategory"}] * len(w.categories)
        assert [c["id"] for c in doc["categories"]] == list(range(len(w.categories)))  # contiguous, as real
        names = [im["file_name"] for im in doc["images"]]
        assert names != sorted(names)  # JSON order is not file-name order
        assert [a["image_id"] for a in doc["annotations"]] != [im["id"] for im in doc["images"]]
        for im in doc["images"]:
            top, sup, cat, base = im["file_name"].split("/")
            assert top == f"train_val{w.year}" and len(base) == 36 and base.endswith(".jpg")
            int(base[:32], 16)
            assert (w.folder / sup / cat / base).is_file()
            assert cat == str(by_name(imgs)[im["file_name"]].label)
    modes = Counter(im.mode for im in w.train + w.val)
    assert modes["L"] and modes["CMYK"] and modes["RGB"]
    from PIL import Image

    for im in (w.train + w.val)[:4]:
        with Image.open(w.folder / im.file_name.partition("/")[2]) as f:
            assert f.format == "JPEG" and f.mode == im.mode


def test_fixture_2021_folders(written):
    w = written["inat2021_mini"]
    dirs = sorted(p.name for p in w.folder.iterdir() if p.is_dir())
    assert dirs == F.CLASSES_2021
    assert [int(d[:5]) for d in dirs] == list(range(len(dirs)))  # contiguous prefixes from 00000
    assert all(len(d.split("_")) == 8 for d in dirs)
    assert (w.folder / ".DS_Store").is_file()
    for im in w.images:
        base = im.file_name.rsplit("/", 1)[1]
        assert len(base) == 40 and base[14] == "4"  # uuid4
    assert {"L", "CMYK"} <= {im.mode for im in w.images}


def test_fixture_ds_store_breaks_torchvision(written, tmp_path):
    """The stray .DS_Store is the real-world hazard: torchvision's own walk crashes on it."""
    from torchvision.datasets import INaturalist

    shutil.copytree(written["inat2021_mini"].folder, tmp_path / "2021_train_mini")
    with pytest.raises(RuntimeError, match="DS_Store"):
        INaturalist(str(tmp_path), version="2021_train_mini")


# --------------------------------------------------------------------------------------------------------------
# Labels and ids of each split


@pytest.mark.parametrize("name", ["inat2018", "inat2019", "inat2021_mini"])
def test_test_split_is_the_official_val_set(found, written, data_root, name):
    test = load(found, name, "test", data_root)
    expected = by_name(official_val_images(written, name))
    assert found[name].num_classes == NUM_CLASSES[name]
    assert test.labels.dtype == np.int64
    assert test.ids == sorted(expected)  # sorted by official file name
    assert test.labels.tolist() == [expected[i].label for i in test.ids]


@pytest.mark.parametrize("name", ["inat2018", "inat2019", "inat2021_mini"])
def test_train_and_val_partition_the_official_train_set(found, written, data_root, name):
    train, val, test = (load(found, name, s, data_root) for s in ("train", "val", "test"))
    expected = by_name(official_train_images(written, name))
    assert set(train.ids) | set(val.ids) == set(expected)
    assert not set(train.ids) & set(val.ids)
    assert len(train) + len(val) == len(expected)
    for split in (train, val):
        assert split.labels.tolist() == [expected[i].label for i in split.ids]
    official_val = {im.file_name for im in official_val_images(written, name)}
    assert not official_val & (set(train.ids) | set(val.ids))
    assert not set(test.paths) & (set(train.paths) | set(val.paths))


@pytest.mark.parametrize("name", ["inat2018", "inat2019", "inat2021_mini"])
def test_val_is_the_stratified_holdout(found, written, data_root, name):
    val, train = load(found, name, "val", data_root), load(found, name, "train", data_root)
    ordered = sorted(official_train_images(written, name), key=lambda im: im.file_name)  # the documented order
    held = expected_holdout([im.label for im in ordered])
    assert val.ids == [ordered[i].file_name for i in held]
    assert val.labels.tolist() == [ordered[i].label for i in held]
    assert train.ids == [im.file_name for i, im in enumerate(ordered) if i not in set(held)]
    per_class = Counter(val.labels.tolist())
    assert {c: per_class.get(c, 0) for c in VAL_COUNTS[name]} == VAL_COUNTS[name]
    assert found[name].val_holdout == {"fraction": 0.1, "seed": 0}


def test_inat2021_reads_the_full_train_folder(found, written, root_2021):
    train, val, test = (load(found, "inat2021", s, root_2021) for s in ("train", "val", "test"))
    counts = Counter(train.labels.tolist() + val.labels.tolist())
    assert counts == Counter(F.TRAIN_COUNTS_2021)
    assert all(i.startswith("train/") for i in train.ids + val.ids)
    assert dict(Counter(val.labels.tolist())) == {c: n for c, n in F.TRAIN_VAL_COUNTS_2021.items() if n}
    assert test.ids == sorted(im.file_name for im in written["valid"].images)
    # inat2021_mini does not see 2021_train, and inat2021 does not see 2021_train_mini
    with pytest.raises(UserError, match="2021_train_mini"):
        load(found, "inat2021_mini", "train", root_2021)


@pytest.mark.parametrize("name", ["inat2018", "inat2019"])
def test_order_does_not_depend_on_json_order(found, written, tmp_path, name):
    w = written[name]
    shutil.copytree(w.folder, tmp_path / w.year)
    for which, doc in (("train", w.train_json), ("val", w.val_json)):
        doc = {**doc, "images": doc["images"][::-1], "annotations": doc["annotations"][::-1]}
        (tmp_path / f"{which}{w.year}.json").write_text(json.dumps(doc, indent=1))
    for split in ("train", "val", "test"):
        a, b = load(found, name, split, w.root), load(found, name, split, tmp_path)
        assert a.ids == b.ids and a.labels.tolist() == b.labels.tolist() and a.manifest() == b.manifest()


@pytest.mark.parametrize("name", ["inat2018", "inat2019"])
def test_both_image_folder_names_give_the_same_splits(found, written, tmp_path, name):
    w = written[name]
    shutil.copytree(w.folder, tmp_path / f"train_val{w.year}")  # the tarball's own folder name
    for which in ("train", "val"):
        shutil.copy(w.root / f"{which}{w.year}.json", tmp_path)
    for split in ("train", "val", "test"):
        a, b = load(found, name, split, w.root), load(found, name, split, tmp_path)
        assert a.ids == b.ids and a.labels.tolist() == b.labels.tolist() and a.manifest() == b.manifest()
        assert all(p.startswith(str(tmp_path / f"train_val{w.year}") + os.sep) for p in b.paths)
        assert all(p.startswith(str(w.folder) + os.sep) for p in a.paths)
        assert b.image(0).size == a.image(0).size


def test_2021_tarball_folder_names_give_the_same_splits(found, written, tmp_path):
    shutil.copytree(written["inat2021_mini"].folder, tmp_path / "train_mini")
    shutil.copytree(written["valid"].folder, tmp_path / "val")
    for split in ("train", "val", "test"):
        a, b = load(found, "inat2021_mini", split, written["valid"].root), load(found, "inat2021_mini", split, tmp_path)
        assert a.ids == b.ids and a.manifest() == b.manifest()
        assert all(p.startswith(str(tmp_path) + os.sep) for p in b.paths)


def test_2021_labels_are_the_folder_prefix_and_ds_store_is_ignored(found, written, data_root):
    train = load(found, "inat2021_mini", "train", data_root)
    test = load(found, "inat2021_mini", "test", data_root)
    for split in (train, test):
        assert split.labels.tolist() == [int(i.split("/")[1][:5]) for i in split.ids]
        assert not any(".DS_Store" in p for p in split.paths)


def test_2021_sparse_prefixes_keep_their_ids(found, tmp_path):
    """A copy holding only some species: the label is int(prefix), not the folder's rank."""
    classes = [
        F.CLASSES_2021[0],
        "00002_Fungi_Basidiomycota_Agaricomycetes_Agaricales_Amanitaceae_Amanita_muscaria",
        "00011_Plantae_Tracheophyta_Magnoliopsida_Fagales_Fagaceae_Quercus_agrifolia",
        "09999_Plantae_Tracheophyta_Liliopsida_Asparagales_Asparagaceae_Yucca_schidigera",
    ]
    F.write_2021(tmp_path, "train_mini", {0: 2, 2: 3, 11: 2, 9999: 2}, classes=classes)
    F.write_2021(tmp_path, "val", {0: 1, 2: 1, 11: 1, 9999: 1}, classes=classes)
    test = load(found, "inat2021_mini", "test", tmp_path)
    assert test.labels.tolist() == [0, 2, 11, 9999]
    train, val = load(found, "inat2021_mini", "train", tmp_path), load(found, "inat2021_mini", "val", tmp_path)
    assert sorted(train.labels.tolist() + val.labels.tolist()) == [0, 0, 2, 2, 2, 11, 11, 9999, 9999]


def test_class_names(found, written, data_root):
    mod = plugin(found)
    assert mod.class_names("inat2018", data_root) == {c: n for c, n, _ in F.CATEGORIES_2018}
    assert (
        mod.class_names("inat2021_mini", data_root)[2] == "Fungi_Basidiomycota_Agaricomycetes_Agaricales_"
        "Amanitaceae_Amanita_muscaria"
    )


# --------------------------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize("name", ["inat2018", "inat2021_mini"])
def test_every_image_is_the_one_written_as_rgb(found, written, data_root, name):
    expected = by_name(official_train_images(written, name) + official_val_images(written, name))
    for split in ("train", "val", "test"):
        ds = load(found, name, split, data_root)
        assert ds.paths is not None  # from_files: --bad-images and data check --deep can find the files
        for i, sid in enumerate(ds.ids):
            img, want = ds.image(i), expected[sid]
            assert img.mode == "RGB" and img.size == want.size, (sid, want.mode)
            px = img.getpixel((img.size[0] // 2, img.size[1] // 2))
            assert max(abs(a - b) for a, b in zip(px, want.rgb)) <= 6, (sid, want.mode, px, want.rgb)


def test_unreadable_image_is_named_and_can_be_skipped(found, written, tmp_path):
    w = written["inat2019"]
    shutil.copytree(w.folder, tmp_path / "2019")
    shutil.copy(w.root / "val2019.json", tmp_path)
    bad = sorted(im.file_name for im in w.val)[1]
    path = tmp_path / "2019" / bad.partition("/")[2]
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    test = load(found, "inat2019", "test", tmp_path)
    with pytest.raises(tasks.UnreadableImage, match=str(path)):
        test.image(1)
    skipped = found["inat2019"].dataset("test", LoadContext(tmp_path, bad_images="skip"))
    assert skipped.skipped == [bad] and bad not in skipped.ids and len(skipped) == len(w.val) - 1


# --------------------------------------------------------------------------------------------------------------
# The JSON cache


def test_json_is_parsed_once_and_reparsed_when_changed(found, written, tmp_path):
    w = written["inat2019"]
    shutil.copytree(w.folder, tmp_path / "2019")
    for which in ("train", "val"):
        shutil.copy(w.root / f"{which}2019.json", tmp_path)
    parse = plugin(found)._parse
    before = parse.cache_info().misses
    for _ in range(2):
        for split in ("train", "val", "test"):
            load(found, "inat2019", split, tmp_path)
    assert parse.cache_info().misses == before + 2  # train2019.json and val2019.json, once each
    doc = dict(w.val_json, images=w.val_json["images"][1:])  # one image fewer (its annotation stays)
    (tmp_path / "val2019.json").write_text(json.dumps(doc))
    assert len(load(found, "inat2019", "test", tmp_path)) == len(w.val) - 1


# --------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name,year", [("inat2018", "2018"), ("inat2019", "2019")])
def test_missing_json_names_task_path_and_files(found, tmp_path, name, year):
    with pytest.raises(UserError) as e:
        load(found, name, "train", tmp_path)
    msg = str(e.value)
    assert name in msg and str(tmp_path) in msg and f"train{year}.json" in msg and f"val{year}.json" in msg
    assert f"train_val{year}" in msg and "\n" not in msg


def test_missing_image_folder(found, written, tmp_path):
    shutil.copy(written["inat2018"].root / "val2018.json", tmp_path)
    with pytest.raises(UserError) as e:
        load(found, "inat2018", "test", tmp_path)
    msg = str(e.value)
    assert "inat2018" in msg and str(tmp_path / "2018") in msg and "train_val2018" in msg


@pytest.mark.parametrize(
    "content,fragment",
    [
        (lambda text: text[: len(text) // 2], "JSONDecodeError"),  # truncated download
        (lambda text: json.dumps({"images": json.loads(text)["images"]}), "annotations"),  # no annotations
        (
            lambda text: text.replace('"category_id": 1,', '"category_id": 5000,', 1).replace(
                '"category_id": 1}', '"category_id": 5000}', 1
            ),
            "5000",
        ),  # not this year's label space
    ],
)
def test_malformed_json_names_the_file(found, written, tmp_path, content, fragment):
    w = written["inat2019"]
    shutil.copytree(w.folder, tmp_path / "2019")
    (tmp_path / "train2019.json").write_text(content((w.root / "train2019.json").read_text()))
    with pytest.raises(UserError) as e:
        load(found, "inat2019", "val", tmp_path)
    msg = str(e.value)
    assert "inat2019" in msg and str(tmp_path / "train2019.json") in msg and fragment in msg, msg


def test_missing_image_file_names_one_and_counts(found, written, tmp_path):
    w = written["inat2018"]
    shutil.copytree(w.folder, tmp_path / "train_val2018")
    shutil.copy(w.root / "train2018.json", tmp_path)
    gone = sorted(im.file_name for im in w.train)[:2]
    for fn in gone:
        (tmp_path / fn).unlink()
    with pytest.raises(UserError) as e:
        load(found, "inat2018", "train", tmp_path)
    msg = str(e.value)
    assert "inat2018" in msg and str(tmp_path / "train2018.json") in msg
    assert f"2 of the {len(w.train)} images" in msg and str(tmp_path / gone[0]) in msg


@pytest.mark.parametrize(
    "layout,fragment",
    [
        (None, "2021_train_mini"),  # nothing there
        ("nested", "is not a class folder"),  # train_mini.tar.gz extracted one level too deep
        ("empty", "has no class folders"),
    ],
)
def test_2021_missing_or_misplaced_folder(found, written, tmp_path, layout, fragment):
    if layout == "nested":
        shutil.copytree(written["inat2021_mini"].folder, tmp_path / "2021_train_mini" / "train_mini")
    elif layout == "empty":
        (tmp_path / "train_mini").mkdir()
        (tmp_path / "train_mini" / ".DS_Store").write_bytes(b"")
    with pytest.raises(UserError) as e:
        load(found, "inat2021_mini", "train", tmp_path)
    msg = str(e.value)
    assert "inat2021_mini" in msg and str(tmp_path) in msg and fragment in msg, msg


def test_no_automatic_download(found):
    for name in NUM_CLASSES:
        with pytest.raises(UserError) as e:
            found[name].fetch(LoadContext(Path("unused"), download=True))
        assert name in str(e.value) and "visipedia/inat_comp" in str(e.value)


# --------------------------------------------------------------------------------------------------------------
# Through the CLI


@pytest.mark.slow
def test_cli_linear_run(written, data_root, tmp_path):
    db = tmp_path / "results.sqlite"
    proc = cli(
        "run",
        "-c",
        "vit_demo",
        "-t",
        "inat2019,inat2021_mini",
        "-m",
        "linear",
        "--device",
        "cpu",
        "--data-dir",
        data_root,
        "--results",
        db,
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert [r["task"] for r in rows] == ["inat2019", "inat2021_mini"]
    for r, n_test in zip(rows, (len(written["inat2019"].val), len(written["valid"].images))):
        assert r["status"] == "ok" and r["mode"] == "linear"
        assert r["n_test"] == n_test
        assert r["val_holdout"] == {"fraction": 0.1, "seed": 0}
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
    assert stored_rows(db) == 2


@pytest.mark.slow
def test_cli_data_check(written, data_root):
    proc = cli("data", "check", "inat2018,inat2019,inat2021,inat2021_mini", "--data-dir", data_root, "--json")
    assert proc.returncode == 1, proc.stderr  # inat2021 has no 2021_train here
    rows = {(r["task"], r["split"]): r for r in json_lines(proc.stdout)}
    expected = {}
    for name, counts, val_counts, test_counts in (
        ("inat2018", F.TRAIN_COUNTS_2018, F.VAL_COUNTS_2018, F.TEST_COUNTS_2018),
        ("inat2019", F.TRAIN_COUNTS_2019, F.VAL_COUNTS_2019, F.TEST_COUNTS_2019),
        ("inat2021_mini", F.TRAIN_MINI_COUNTS, F.TRAIN_MINI_VAL_COUNTS, F.VALID_COUNTS_2021),
    ):
        n_val = sum(val_counts.values())
        expected[(name, "train")] = (sum(counts.values()) - n_val, len(counts))
        expected[(name, "val")] = (n_val, sum(1 for n in val_counts.values() if n))
        expected[(name, "test")] = (sum(test_counts.values()), len(test_counts))
    expected[("inat2021", "test")] = (sum(F.VALID_COUNTS_2021.values()), len(F.VALID_COUNTS_2021))
    for key, (images, classes) in expected.items():
        assert rows[key]["status"] == "ok" and (rows[key]["images"], rows[key]["classes"]) == (images, classes), key
    for split in ("train", "val"):
        r = rows[("inat2021", split)]
        assert r["status"] == "missing" and "inat2021" in r["detail"] and str(data_root / "2021_train") in r["detail"]
    assert len(rows) == 12


@pytest.mark.slow
def test_cli_empty_data_dir_exits_2_and_stores_nothing(tmp_path):
    db, empty = tmp_path / "results.sqlite", tmp_path / "data"
    empty.mkdir()
    proc = cli(
        "run",
        "-c",
        "vit_demo",
        "-t",
        "inat2018",
        "-m",
        "linear",
        "--device",
        "cpu",
        "--data-dir",
        empty,
        "--results",
        db,
        "--json",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "inat2018", str(empty), "train2018.json")
    assert proc.stdout == "" and stored_rows(db) == 0
