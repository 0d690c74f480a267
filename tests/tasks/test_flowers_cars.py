"""flowers102 and stanford_cars over miniature copies of the real files (see fixtures/flowers_cars.py).

Covers the labels and ids of each split (flowers: the official setid.mat ids; cars: val = a stratified 20%
hold-out of train, recomputed here from its rule), agreement with torchvision's own classes on the same files,
image decoding of every PIL mode the real data has (grayscale, CMYK, palette PNG behind a .jpg name), the
re-packed Stanford Cars layouts, the errors for missing, unverifiable and incomplete data, and the CLI end to end:
good runs, the unreadable-image policy (--bad-images stop / skip, data check --deep) and an empty data folder.
"""

from __future__ import annotations

import ast
import shutil
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from transfer_eval import tasks
from transfer_eval.errors import UserError
from transfer_eval.tasks import LoadContext

sys.path.insert(0, str(Path(__file__).parent.parent))
import conftest  # noqa: E402
from conftest import assert_one_line_error, assert_vit_recipe, cli_process, json_lines, stored_rows  # noqa: E402
from fixtures import flowers_cars as F  # noqa: E402

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="session")
def found():
    return tasks.discover()


@pytest.fixture(scope="session")
def good(tmp_path_factory):
    """One --data-dir holding flowers-102/ and stanford_cars/ (torchvision's layouts)."""
    root = tmp_path_factory.mktemp("flowers_cars")
    return root, F.write_flowers(root), F.write_cars(root)


@pytest.fixture(scope="session")
def flowers(good) -> F.FlowersWritten:
    return good[1]


@pytest.fixture(scope="session")
def cars(good) -> F.CarsWritten:
    return good[2]


def load(found, name: str, split: str, root: Path, verify: bool = False, bad_images: str = "stop"):
    return found[name].dataset(split, LoadContext(Path(root), verify=verify, bad_images=bad_images))


def user_error(found, name: str, split: str, root: Path, **kw) -> str:
    with pytest.raises(UserError) as e:
        load(found, name, split, root, **kw)
    msg = str(e.value)
    assert "\n" not in msg and name in msg, msg
    return msg


def assert_pixel(img, expected):
    assert img.mode == "RGB" and img.size == F.SIZE
    for xy in ((0, 0), (10, 10), (19, 19)):
        got = img.getpixel(xy)
        assert all(abs(a - b) <= F.TOL for a, b in zip(got, expected)), (got, expected)


# --------------------------------------------------------------------------------------------------------------
# Flowers-102


def test_flowers_fixture_is_in_the_real_format(flowers):
    labels = loadmat(flowers.folder / "imagelabels.mat")["labels"]
    assert labels.shape == (1, 20) and labels.dtype == np.uint8
    setid = loadmat(flowers.folder / "setid.mat")
    for key in ("trnid", "valid", "tstid"):
        assert setid[key].dtype == np.uint16 and setid[key].shape == (1, len(F.FLOWERS_SETID[key]))
        assert setid[key].shape[1] >= 2  # squeeze_me turns a single id into a scalar
    assert sorted(p.name for p in (flowers.folder / "jpg").iterdir())[:2] == ["image_00001.jpg", "image_00002.jpg"]
    with Image.open(flowers.folder / "jpg" / "image_00004.jpg") as im:  # palette PNG behind a .jpg name
        assert (im.format, im.mode) == ("PNG", "P")
    with Image.open(flowers.folder / "jpg" / "image_00002.jpg") as im:
        assert (im.format, im.mode) == ("JPEG", "CMYK")
    with Image.open(flowers.folder / "jpg" / "image_00001.jpg") as im:
        assert (im.format, im.mode) == ("JPEG", "L")


def test_flowers_official_splits(found, flowers):
    for split in SPLITS:
        image_ids = F.FLOWERS_SETID[F.FLOWERS_SPLIT_KEY[split]]
        ds = load(found, "flowers102", split, flowers.root)
        assert ds.ids == [f"jpg/image_{i:05d}.jpg" for i in image_ids]  # setid.mat order
        assert ds.labels.tolist() == [F.FLOWERS_LABELS[i - 1] - 1 for i in image_ids]
        assert ds.paths == [str(flowers.folder / "jpg" / f"image_{i:05d}.jpg") for i in image_ids]
    # the same, written out by hand (1-based 3, 17, 102 -> 2, 16, 101)
    assert load(found, "flowers102", "train", flowers.root).labels.tolist() == [101, 101, 2, 2, 2, 16]
    assert load(found, "flowers102", "val", flowers.root).labels.tolist() == [16, 101, 101, 16]
    assert load(found, "flowers102", "test", flowers.root).labels.tolist() == [16, 2, 101, 2, 16, 16, 2, 16, 2, 101]


def test_flowers_agrees_with_torchvision(flowers, found):
    from unittest import mock

    from torchvision.datasets import Flowers102

    with mock.patch("torchvision.datasets.flowers102.check_integrity", return_value=True):
        for split in SPLITS:
            tv = Flowers102(str(flowers.root), split=split)
            ds = load(found, "flowers102", split, flowers.root)
            assert ds.labels.tolist() == list(tv._labels)
            assert ds.paths == [str(p) for p in tv._image_files]


def test_flowers_alternative_layout_gives_the_same_splits(found, flowers, tmp_path):
    F.write_flowers(tmp_path, sub="flowers102")  # DATA/flowers102/flowers-102/
    for split in SPLITS:
        a, b = load(found, "flowers102", split, flowers.root), load(found, "flowers102", split, tmp_path)
        assert a.ids == b.ids and a.labels.tolist() == b.labels.tolist() and a.manifest() == b.manifest()
        assert b.paths[0].startswith(str(tmp_path / "flowers102" / "flowers-102"))


def test_flowers_images_of_every_mode_load_as_rgb(found, flowers):
    kinds = Counter()
    for split in SPLITS:
        ds = load(found, "flowers102", split, flowers.root)
        for i, sid in enumerate(ds.ids):
            image_id = int(sid[len("jpg/image_") : -len(".jpg")])
            kinds[flowers.kind(image_id)] += 1
            assert_pixel(ds.image(i), F.expected_pixel(flowers.kind(image_id), image_id))
    assert set(kinds) == {"rgb", "L", "CMYK", "P", "png"}


def test_flowers_verify_rejects_fixture_md5(found, flowers):
    msg = user_error(found, "flowers102", "train", flowers.root, verify=True)
    assert "md5" in msg and "--skip-verify" in msg and str(flowers.folder) in msg


def test_flowers_missing_folder_names_the_path(found, tmp_path):
    msg = user_error(found, "flowers102", "train", tmp_path)
    assert str(tmp_path) in msg and "flowers-102" in msg and "--download" in msg


def test_flowers_missing_mat_file(found, flowers, tmp_path):
    shutil.copytree(flowers.folder, tmp_path / "flowers-102")
    (tmp_path / "flowers-102" / "setid.mat").unlink()
    msg = user_error(found, "flowers102", "test", tmp_path)
    assert str(tmp_path / "flowers-102") in msg and "setid.mat" in msg and "imagelabels.mat" in msg.split(";")[1]


def test_flowers_missing_image_file_is_named(found, flowers, tmp_path):
    shutil.copytree(flowers.folder, tmp_path / "flowers-102")
    (tmp_path / "flowers-102" / "jpg" / "image_00003.jpg").unlink()  # in trnid
    msg = user_error(found, "flowers102", "train", tmp_path)
    assert "1 of the 6 train images" in msg and str(tmp_path / "flowers-102" / "jpg" / "image_00003.jpg") in msg
    assert len(load(found, "flowers102", "val", tmp_path)) == 4  # the other splits are whole


def test_flowers_task_definition(found):
    from torchvision.datasets import Flowers102

    t = found["flowers102"]
    assert t.num_classes == 102 and t.version == 1 and t.val_holdout is None and t.download is not None
    if hasattr(Flowers102, "classes"):
        assert list(t.classes) == list(Flowers102.classes)
    assert_vit_recipe(t, steps=500, warmup=100)
    doc = ast.get_docstring(ast.parse(Path(t.source).read_text()))
    assert "flowers-102/jpg/image_00001.jpg" in doc and "setid.mat" in doc and "transfer-eval run" in doc
    assert "--download" in t.data_help and t.description


def test_flowers_download_is_skipped_when_present(found, flowers, monkeypatch):
    from torchvision.datasets import Flowers102

    def no_network(*a, **k):
        raise AssertionError("download attempted")

    monkeypatch.setattr(Flowers102, "download", no_network)
    found["flowers102"].fetch(LoadContext(flowers.root, download=True))


def test_flowers_download_failure_is_one_user_error(found, tmp_path, monkeypatch):
    import urllib.error

    calls = []

    def offline(url, *a, **k):  # torchvision's fetch of 102flowers.tgz, stopped before any network access
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("torchvision.datasets.flowers102.download_and_extract_archive", offline)
    monkeypatch.setattr("torchvision.datasets.flowers102.download_url", offline)
    with pytest.raises(UserError) as e:
        found["flowers102"].fetch(LoadContext(tmp_path / "new", download=True))
    assert calls == ["https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz"]
    assert "flowers102" in str(e.value) and "offline" in str(e.value) and str(tmp_path / "new") in str(e.value)


# --------------------------------------------------------------------------------------------------------------
# Stanford Cars


def expected_holdout(labels: list[int], fraction: float = 0.2, seed: int = 0) -> list[int]:
    return conftest.expected_holdout(labels, fraction, seed)


def test_cars_fixture_is_in_the_real_format(cars):
    raw = loadmat(cars.base / "devkit" / "cars_train_annos.mat")["annotations"]
    assert raw.shape == (1, 18) and raw.dtype.names == ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    assert raw[0, 0]["class"].dtype == np.uint8 and raw[0, 0]["bbox_x1"].dtype == np.uint16
    squeezed = loadmat(cars.base / "cars_test_annos_withlabels.mat", squeeze_me=True)["annotations"]
    assert [int(a["class"]) for a in squeezed] == F.CARS_TEST_CLASSES and squeezed[0]["fname"] == "00001.jpg"
    names = loadmat(cars.base / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"]
    assert names.dtype == object and names.tolist()[0] == "AM General Hummer SUV 2000"  # a cell array, unpadded
    assert "class" not in loadmat(cars.base / "devkit" / "cars_test_annos.mat")["annotations"].dtype.names


def test_cars_agrees_with_torchvision(found, cars):
    from torchvision.datasets import StanfordCars

    tv_train = dict(StanfordCars(str(cars.root), split="train")._samples)
    ours = [load(found, "stanford_cars", s, cars.root) for s in ("train", "val")]
    assert {p: int(y) for ds in ours for p, y in zip(ds.paths, ds.labels)} == tv_train
    tv_test = StanfordCars(str(cars.root), split="test")
    test = load(found, "stanford_cars", "test", cars.root)
    assert list(zip(test.paths, test.labels.tolist())) == list(tv_test._samples)
    assert len(tv_test.classes) == 196


def test_cars_splits(found, cars):
    train_labels = [c - 1 for c in F.CARS_TRAIN_CLASSES]
    held = expected_holdout(train_labels)
    kept = [i for i in range(len(train_labels)) if i not in held]
    val, train = load(found, "stanford_cars", "val", cars.root), load(found, "stanford_cars", "train", cars.root)
    assert val.ids == [f"cars_train/{cars.train_fnames[i]}" for i in held]
    assert val.labels.tolist() == [train_labels[i] for i in held]
    assert train.ids == [f"cars_train/{cars.train_fnames[i]}" for i in kept]
    assert train.labels.tolist() == [train_labels[i] for i in kept]
    per_class = Counter(val.labels.tolist())
    assert {c: per_class.get(c, 0) for c in F.CARS_VAL_COUNTS} == F.CARS_VAL_COUNTS
    test = load(found, "stanford_cars", "test", cars.root)
    assert test.ids == [f"cars_test/{f}" for f in cars.test_fnames]
    assert test.labels.tolist() == [195, 0, 49, 6, 0, 49, 195, 49]  # CARS_TEST_CLASSES - 1, by hand
    assert found["stanford_cars"].val_holdout == {"fraction": 0.2, "seed": 0}
    # no official checksums: verifying changes nothing
    assert load(found, "stanford_cars", "val", cars.root, verify=True).ids == val.ids


def test_cars_kaggle_nested_layout_gives_the_same_splits(found, cars, tmp_path):
    F.write_cars(tmp_path, nested=True)
    assert (tmp_path / "stanford_cars" / "cars_train" / "cars_train" / "00001.jpg").is_file()
    for split in SPLITS:
        a, b = load(found, "stanford_cars", split, cars.root), load(found, "stanford_cars", split, tmp_path)
        assert a.ids == b.ids and a.labels.tolist() == b.labels.tolist() and a.manifest() == b.manifest()
        folder = "cars_test/cars_test" if split == "test" else "cars_train/cars_train"
        assert all(p.startswith(str(tmp_path / "stanford_cars" / folder) + "/") for p in b.paths)
        assert_pixel(
            b.image(len(b) - 1),
            F.expected_pixel(
                "rgb", F.cars_colour_index("test" if split == "test" else "train", int(b.ids[-1].split("/")[1][:5]))
            ),
        )


def test_cars_test_annotations_inside_devkit(found, cars, tmp_path):
    F.write_cars(tmp_path, test_annos_in_devkit=True)
    assert not (tmp_path / "stanford_cars" / "cars_test_annos_withlabels.mat").exists()
    test = load(found, "stanford_cars", "test", tmp_path)
    assert test.labels.tolist() == [c - 1 for c in F.CARS_TEST_CLASSES]


def test_cars_images_of_every_mode_load_as_rgb(found, cars):
    kinds = set()
    for split in SPLITS:
        ds = load(found, "stanford_cars", split, cars.root)
        for i, sid in enumerate(ds.ids):
            folder, fname = sid.split("/")
            source = "test" if folder == "cars_test" else "train"
            n = int(fname[:5])
            kinds.add(F.cars_kind(source, n))
            assert_pixel(ds.image(i), F.expected_pixel(F.cars_kind(source, n), F.cars_colour_index(source, n)))
    assert kinds == {"rgb", "L", "CMYK", "P", "png"}


def test_cars_all_in_one_release(found, tmp_path):
    base = F.write_cars_all_in_one(tmp_path)
    train_idx = [i for i, t in enumerate(F.ALL_IN_ONE_TEST) if not t]
    test_idx = [i for i, t in enumerate(F.ALL_IN_ONE_TEST) if t]
    test = load(found, "stanford_cars", "test", tmp_path)
    assert test.ids == [f"car_ims/{i + 1:06d}.jpg" for i in test_idx]
    assert test.labels.tolist() == [F.ALL_IN_ONE_CLASSES[i] - 1 for i in test_idx]
    assert test.paths[0] == str(base / "car_ims" / f"{test_idx[0] + 1:06d}.jpg")
    train_labels = [F.ALL_IN_ONE_CLASSES[i] - 1 for i in train_idx]
    held = expected_holdout(train_labels)
    val = load(found, "stanford_cars", "val", tmp_path)
    assert val.ids == [f"car_ims/{train_idx[i] + 1:06d}.jpg" for i in held]
    assert val.labels.tolist() == [train_labels[i] for i in held]
    train = load(found, "stanford_cars", "train", tmp_path)
    assert len(train) + len(val) == len(train_idx) and not set(train.ids) & set(val.ids)
    assert_pixel(train.image(0), F.colour(int(train.ids[0][8:14]) - 1))


def test_cars_missing_folder_says_how_to_get_the_data(found, tmp_path):
    msg = user_error(found, "stanford_cars", "train", tmp_path)
    assert str(tmp_path) in msg and "stanford_cars/" in msg and "rickyyyyyyy/torchvision-stanford-cars" in msg


def test_cars_missing_devkit(found, cars, tmp_path):
    shutil.copytree(cars.base, tmp_path / "stanford_cars")
    shutil.rmtree(tmp_path / "stanford_cars" / "devkit")
    for split in ("train", "test"):
        msg = user_error(found, "stanford_cars", split, tmp_path)
        assert str(tmp_path / "stanford_cars") in msg and "devkit/" in msg and "Kaggle" in msg
        assert "car_devkit.tgz" in msg


def test_cars_missing_test_annotations(found, cars, tmp_path):
    shutil.copytree(cars.base, tmp_path / "stanford_cars")
    (tmp_path / "stanford_cars" / "cars_test_annos_withlabels.mat").unlink()
    msg = user_error(found, "stanford_cars", "test", tmp_path)
    assert "cars_test_annos_withlabels.mat" in msg and "7545" in msg and str(tmp_path / "stanford_cars") in msg
    assert len(load(found, "stanford_cars", "train", tmp_path)) > 0  # train does not need it


def test_cars_missing_image_files_are_named_and_counted(found, cars, tmp_path):
    shutil.copytree(cars.base, tmp_path / "stanford_cars")
    for f in ("00004.jpg", "00011.jpg"):
        (tmp_path / "stanford_cars" / "cars_train" / f).unlink()
    for split in ("train", "val"):
        msg = user_error(found, "stanford_cars", split, tmp_path)
        assert "2 of the 18 train images" in msg
        assert str(tmp_path / "stanford_cars" / "cars_train" / "00004.jpg") in msg and "00011.jpg" in msg
    assert len(load(found, "stanford_cars", "test", tmp_path)) == 8


def test_cars_task_definition(found):
    t = found["stanford_cars"]
    assert t.num_classes == 196 and t.version == 1 and t.download is None and t.description
    doc = ast.get_docstring(ast.parse(Path(t.source).read_text()))
    for layout in (
        "cars_train/00001.jpg",
        "cars_train/cars_train/",
        "devkit/cars_train_annos.mat",
        "car_ims/000001.jpg",
        "transfer-eval run",
        "20%",
    ):
        assert layout in doc, layout
    assert_vit_recipe(t, steps=2500, warmup=200)
    with pytest.raises(UserError) as e:
        t.fetch(LoadContext(Path("unused"), download=True))
    for hint in (
        "7545",
        "rickyyyyyyy/torchvision-stanford-cars",
        "jessicali9530/stanford-cars-dataset",
        "https://github.com/pytorch/vision/files/11644847/car_devkit.tgz",
        "cars_test_annos_withlabels",
    ):
        assert hint in t.data_help and hint in str(e.value)


# --------------------------------------------------------------------------------------------------------------
# Through the CLI
#
# Each test below checks one invocation of the real program. The invocations are independent (each has its own
# results file and its own feature cache, so no run is served features another run extracted), so they are
# started together, two at a time, the first time a test asks for one: their start-up (importing torch, timm,
# scikit-learn) is most of their time.


def run_args(task: str, root: Path, db: Path, *extra) -> list:
    return [
        "run",
        "-c",
        "vit_demo",
        "-t",
        task,
        "-m",
        "linear",
        "--device",
        "cpu",
        "--data-dir",
        root,
        "--skip-verify",
        "--results",
        db,
        "--json",
        *extra,
    ]


@pytest.fixture(scope="module")
def cli_runs(good, tmp_path_factory):
    """name -> (future CompletedProcess, dict of the paths it used)."""
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path_factory.mktemp("cli")
    corrupt = base / "corrupt"  # flowers with image_00007.jpg (in trnid) cut short
    F.write_flowers(corrupt, corrupt=F.FLOWERS_CORRUPT_ID)
    empty = base / "empty"
    empty.mkdir()
    good_root = good[0]
    db = {name: base / f"{name}.sqlite" for name in ("both", "stop", "skip", "empty_flowers", "empty_cars")}
    commands = {  # the slowest first
        "both": run_args("flowers102,stanford_cars", good_root, db["both"]),
        "stop": run_args("flowers102", corrupt, db["stop"]),
        "skip": run_args("flowers102", corrupt, db["skip"], "--bad-images", "skip"),
        "check": ["data", "check", "flowers102,stanford_cars", "--data-dir", good_root, "--skip-verify", "--json"],
        "deep": ["data", "check", "flowers102", "--data-dir", corrupt, "--skip-verify", "--deep", "--json"],
        "empty_flowers": run_args("flowers102", empty, db["empty_flowers"]),
        "empty_cars": run_args("stanford_cars", empty, db["empty_cars"]),
    }
    pool = ThreadPoolExecutor(2)
    futures = {
        name: pool.submit(
            cli_process,
            *args,
            env={"TRANSFER_EVAL_CACHE": str(base / f"cache_{name}"), "OMP_NUM_THREADS": "1"},
            cwd=base,
        )
        for name, args in commands.items()
    }
    yield {
        name: (f, {"db": db.get(name), "corrupt": corrupt, "empty": empty, "good": good_root})
        for name, f in futures.items()
    }
    pool.shutdown(wait=True)


def db_row(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        (row,) = con.execute("SELECT * FROM results").fetchall()
        return dict(row)


@pytest.mark.slow
def test_cli_runs_both_tasks(cli_runs):
    future, at = cli_runs["both"]
    proc = future.result()
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert [r["task"] for r in rows] == ["flowers102", "stanford_cars"]
    assert all(r["status"] == "ok" and r["skipped_images"] == 0 for r in rows)
    assert rows[0]["n_test"] == len(F.FLOWERS_SETID["tstid"]) and rows[0]["val_holdout"] is None
    assert rows[1]["n_test"] == len(F.CARS_TEST_CLASSES) and rows[1]["val_holdout"] == {"fraction": 0.2, "seed": 0}
    assert stored_rows(at["db"]) == 2


@pytest.mark.slow
def test_cli_data_check_lists_every_split(cli_runs):
    proc = cli_runs["check"][0].result()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {(r["task"], r["split"]): r for r in json_lines(proc.stdout)}
    n_val = sum(F.CARS_VAL_COUNTS.values())
    assert {k: (r["status"], r["images"]) for k, r in rows.items()} == {
        ("flowers102", "train"): ("ok", 6),
        ("flowers102", "val"): ("ok", 4),
        ("flowers102", "test"): ("ok", 10),
        ("stanford_cars", "train"): ("ok", 18 - n_val),
        ("stanford_cars", "val"): ("ok", n_val),
        ("stanford_cars", "test"): ("ok", 8),
    }


@pytest.mark.slow
@pytest.mark.parametrize("task,folder", [("flowers102", "flowers-102"), ("stanford_cars", "stanford_cars")])
def test_cli_empty_data_dir_is_one_error_line(cli_runs, task, folder):
    future, at = cli_runs["empty_flowers" if task == "flowers102" else "empty_cars"]
    proc = future.result()
    assert_one_line_error(proc, task, str(at["empty"]), folder)
    assert proc.stdout == "" and stored_rows(at["db"]) == 0


@pytest.mark.slow
def test_cli_unreadable_image_fails_the_run_naming_it(cli_runs):
    future, at = cli_runs["stop"]
    proc = future.result()
    bad = at["corrupt"] / "flowers-102" / "jpg" / "image_00007.jpg"
    assert proc.returncode == 1, proc.stderr
    (row,) = json_lines(proc.stdout)
    assert row["status"] == "failed" and str(bad) in row["error"]
    stored = db_row(at["db"])
    assert stored["status"] == "failed" and str(bad) in stored["error"]
    said = [line for line in proc.stderr.splitlines() if str(bad) in line]
    assert (
        len(said) == 1
        and said[0].startswith("transfer-eval: run failed: unreadable image")
        and "--bad-images skip" in said[0]
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_unreadable_image_skipped_on_request(cli_runs):
    future, at = cli_runs["skip"]
    proc = future.result()
    assert proc.returncode == 0, proc.stderr
    (row,) = json_lines(proc.stdout)
    assert row["status"] == "ok" and row["skipped_images"] == 1
    assert row["skipped_files"] == ["jpg/image_00007.jpg"]
    assert row["n_test"] == len(F.FLOWERS_SETID["tstid"])
    assert db_row(at["db"])["status"] == "ok"


@pytest.mark.slow
def test_cli_data_check_deep_reports_the_unreadable_file(cli_runs):
    future, at = cli_runs["deep"]
    proc = future.result()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {r["split"]: r for r in json_lines(proc.stdout)}
    assert rows["train"]["status"] == "unreadable images"
    assert str(at["corrupt"] / "flowers-102" / "jpg" / "image_00007.jpg") in rows["train"]["detail"]
    assert rows["val"]["status"] == rows["test"]["status"] == "ok"
