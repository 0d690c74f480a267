"""cifar10 / cifar100 tasks over miniature copies of the official pickles (see fixtures/cifar.py).

Covers the labels and ids of each split (val = a stratified 10% hold-out of train, recomputed here from its
rule), image decoding (R|G|B planes, row-major), the errors for unverifiable, missing, incomplete and corrupt
data, and one end-to-end CLI run per task plus a CLI run on a missing data folder.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import pickletools
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from transfer_eval import tasks
from transfer_eval.errors import UserError
from transfer_eval.tasks import LoadContext

sys.path.insert(0, str(Path(__file__).parent.parent))
import conftest  # noqa: E402
from fixtures import cifar as F  # noqa: E402

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
VAL_COUNTS = {"cifar10": dict(enumerate(F.CIFAR10_VAL_COUNTS)), "cifar100": F.CIFAR100_VAL_COUNTS}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One --data-dir holding both cifar-10-batches-py/ and cifar-100-python/."""
    return tmp_path_factory.mktemp("cifar_data")


@pytest.fixture(scope="session")
def written(data_root) -> dict[str, F.Written]:
    return {"cifar10": F.write_cifar10(data_root), "cifar100": F.write_cifar100(data_root)}


@pytest.fixture(scope="session")
def found():
    return tasks.discover()


def load(found, name: str, split: str, root: Path, verify: bool = False):
    return found[name].dataset(split, LoadContext(Path(root), verify=verify))


def expected_holdout(labels: list[int], fraction: float = 0.1, seed: int = 0) -> list[int]:
    return conftest.expected_holdout(labels, fraction, seed)


def index_of(sample_id: str) -> int:
    prefix, _, i = sample_id.partition("/")
    return int(i)


# --------------------------------------------------------------------------------------------------------------
# The fixture itself is in the real format


@pytest.mark.parametrize(
    "name,files",
    [
        (
            "cifar10",
            [
                "data_batch_1",
                "data_batch_2",
                "data_batch_3",
                "data_batch_4",
                "data_batch_5",
                "test_batch",
                "batches.meta",
            ],
        ),
        ("cifar100", ["train", "test", "meta"]),
    ],
)
def test_fixture_pickles_are_python2_style(written, name, files):
    folder = written[name].folder
    assert sorted(p.name for p in folder.iterdir() if p.name != "readme.html") == sorted(files)
    for f in files:
        raw = (folder / f).read_bytes()
        assert raw[:2] == b"\x80\x02", f  # protocol 2
        ops = {op.name for op, _, _ in pickletools.genops(raw)}
        globals_ = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
        if not f.endswith("meta"):  # numpy arrays under the module names Python 2's numpy wrote
            assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}, globals_
        assert "SHORT_BINSTRING" in ops and not ops & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES"}, (f, ops)
        as_bytes = pickle.loads(raw, encoding="bytes")
        as_str = pickle.loads(raw, encoding="latin1")
        assert all(isinstance(k, bytes) for k in as_bytes), f
        assert all(isinstance(k, str) for k in as_str), f
        assert {k.decode() for k in as_bytes} == set(as_str)
        if f.endswith("meta"):
            continue
        label_key = "labels" if name == "cifar10" else "fine_labels"
        assert {b"data", b"batch_label", b"filenames", label_key.encode()} <= set(as_bytes)
        assert isinstance(as_bytes[b"filenames"][0], bytes) and isinstance(as_str["filenames"][0], str)
        for d in (as_bytes, as_str):
            data = d[b"data" if d is as_bytes else "data"]
            assert data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
        labels = as_str[label_key]
        assert type(labels) is list and all(type(y) is int for y in labels)
        assert np.array_equal(as_bytes[b"data"], as_str["data"])


def test_fixture_meta_contents(written):
    meta10 = pickle.loads((written["cifar10"].folder / "batches.meta").read_bytes(), encoding="latin1")
    assert meta10["label_names"] == F.CIFAR10_NAMES and meta10["num_vis"] == 3072
    meta100 = pickle.loads((written["cifar100"].folder / "meta").read_bytes(), encoding="bytes")
    assert len(meta100[b"fine_label_names"]) == 100 and len(meta100[b"coarse_label_names"]) == 20
    train100 = pickle.loads((written["cifar100"].folder / "train").read_bytes(), encoding="latin1")
    assert max(train100["coarse_labels"]) < 20 and train100["coarse_labels"] != train100["fine_labels"]


# --------------------------------------------------------------------------------------------------------------
# Labels and ids of each split


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_test_split_is_the_official_test_file(found, written, name):
    w = written[name]
    test = load(found, name, "test", w.root)
    assert found[name].num_classes == NUM_CLASSES[name]
    assert test.labels.dtype == np.int64
    assert test.labels.tolist() == w.test_labels
    assert test.ids == [f"test/{i}" for i in range(len(w.test_labels))]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_train_and_val_partition_the_official_train_files(found, written, name):
    w = written[name]
    train, val = load(found, name, "train", w.root), load(found, name, "val", w.root)
    all_ids = {f"train/{i}" for i in range(len(w.train_labels))}
    assert set(train.ids) | set(val.ids) == all_ids
    assert not set(train.ids) & set(val.ids)
    assert len(train) + len(val) == len(w.train_labels)
    for split in (train, val):  # every sample keeps the label written for it
        assert split.labels.tolist() == [w.train_labels[index_of(s)] for s in split.ids]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_val_is_the_stratified_holdout(found, written, name):
    w = written[name]
    val, train = load(found, name, "val", w.root), load(found, name, "train", w.root)
    held = expected_holdout(w.train_labels)
    assert val.ids == [f"train/{i}" for i in held]
    assert val.labels.tolist() == [w.train_labels[i] for i in held]
    kept = [i for i in range(len(w.train_labels)) if i not in set(held)]
    assert train.ids == [f"train/{i}" for i in kept]
    # ~10% of each class, per the hand-written table (covers round-down, round-up, the at-least-one rule and n=1)
    per_class = Counter(val.labels.tolist())
    assert {c: per_class.get(c, 0) for c in VAL_COUNTS[name]} == VAL_COUNTS[name]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_splits_are_deterministic_across_loads_and_layouts(found, written, tmp_path_factory, name):
    w = written[name]
    # A second copy under the alternative layout DATA/<task>/<folder>: a separate root, so no cached dataset
    # is shared between the two loads.
    other = tmp_path_factory.mktemp(f"{name}_alt")
    shutil.copytree(w.folder, other / name / w.folder.name)
    for split in ("train", "val", "test"):
        a, b = load(found, name, split, w.root), load(found, name, split, other)
        assert a.ids == b.ids and a.labels.tolist() == b.labels.tolist()
        assert a.manifest() == b.manifest()
    assert load(found, name, "train", w.root).manifest() != load(found, name, "val", w.root).manifest()


def test_manifest_is_digest_of_ids_and_labels(found, written):
    w = written["cifar10"]
    test = load(found, "cifar10", "test", w.root)
    h = hashlib.sha256("".join(f"test/{i}\t{y}\n" for i, y in enumerate(w.test_labels)).encode())
    assert test.manifest() == h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Image decoding


def assert_image(img, split: str, index: int, label: int):
    assert img.mode == "RGB" and img.size == (32, 32)
    r, g, b = F.colour(split, index, label)
    assert img.getpixel((0, 0)) == (r, g, b)
    assert img.getpixel((31, 31)) == (r, g, b)
    assert img.getpixel((F.MARK_COL, F.MARK_ROW)) == (255, g, b)  # PIL takes (x, y) = (column, row)
    assert img.getpixel((F.MARK_ROW, F.MARK_COL)) == (r, g, b)  # the transposed position is not marked


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_every_image_is_the_one_written(found, written, name):
    w = written[name]
    for split in ("train", "val", "test"):
        ds = load(found, name, split, w.root)
        for i, sid in enumerate(ds.ids):
            assert_image(ds.image(i), sid.split("/")[0], index_of(sid), int(ds.labels[i]))


def test_cifar10_sample_from_data_batch_3_and_test(found, written):
    w = written["cifar10"]
    g = w.batch_sizes[0] + w.batch_sizes[1] + 4  # the fifth image of data_batch_3
    batch3 = pickle.loads((w.folder / "data_batch_3").read_bytes(), encoding="latin1")
    label = batch3["labels"][4]
    row = batch3["data"][4]
    expected_rgb = (int(row[0]), int(row[1024]), int(row[2048]))  # first pixel of the R, G and B planes
    assert expected_rgb == F.colour("train", g, label)
    split = next(s for s in ("train", "val") if f"train/{g}" in load(found, "cifar10", s, w.root).ids)
    ds = load(found, "cifar10", split, w.root)
    j = ds.ids.index(f"train/{g}")
    assert int(ds.labels[j]) == label
    assert ds.image(j).getpixel((0, 0)) == expected_rgb
    assert ds.image(j).getpixel((F.MARK_COL, F.MARK_ROW))[0] == 255

    test = load(found, "cifar10", "test", w.root)
    k = len(w.test_labels) - 1
    assert test.image(k).getpixel((1, 1)) == F.colour("test", k, w.test_labels[k])


# --------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_verify_rejects_fixture_md5(found, written, name):
    w = written[name]
    with pytest.raises(UserError) as e:
        load(found, name, "test", w.root, verify=True)
    msg = str(e.value)
    assert str(w.folder) in msg and "--skip-verify" in msg and name in msg


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_folder_names_task_and_path(found, tmp_path, name, folder):
    with pytest.raises(UserError) as e:
        load(found, name, "train", tmp_path)
    msg = str(e.value)
    assert name in msg and str(tmp_path) in msg and folder in msg


@pytest.mark.parametrize(
    "name,missing,split",
    [
        ("cifar10", "data_batch_3", "test"),  # torchvision checks every file, whatever the split
        ("cifar10", "batches.meta", "train"),
        ("cifar100", "train", "test"),
    ],
)
def test_missing_file_is_a_user_error(found, written, tmp_path, name, missing, split):
    w = written[name]
    shutil.copytree(w.folder, tmp_path / w.folder.name)
    (tmp_path / w.folder.name / missing).unlink()
    with pytest.raises(UserError) as e:
        load(found, name, split, tmp_path)
    assert str(tmp_path / w.folder.name) in str(e.value)


def test_missing_file_error_names_the_file_when_not_verifying(found, written, tmp_path):
    w = written["cifar10"]
    shutil.copytree(w.folder, tmp_path / w.folder.name)
    (tmp_path / w.folder.name / "data_batch_3").unlink()
    with pytest.raises(UserError) as e:
        load(found, "cifar10", "test", tmp_path, verify=False)
    assert "data_batch_3" in str(e.value) and "--skip-verify" not in str(e.value)


def test_truncated_pickle_is_a_user_error(found, written, tmp_path):
    w = written["cifar10"]
    shutil.copytree(w.folder, tmp_path / w.folder.name)
    path = tmp_path / w.folder.name / "test_batch"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError) as e:
        load(found, "cifar10", "test", tmp_path)
    assert str(tmp_path / w.folder.name) in str(e.value)


# --------------------------------------------------------------------------------------------------------------
# Through the CLI


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return conftest.cli(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})


def db_rows(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return con.execute("SELECT COUNT(*) FROM results").fetchone()[0] if "results" in tables else 0


@pytest.mark.slow
def test_cli_linear_run_on_both_tasks(written, data_root, tmp_path):
    db = tmp_path / "results.sqlite"
    out = cli(
        "run",
        "-c",
        "vit_demo",
        "-t",
        "cifar10,cifar100",
        "-m",
        "linear",
        "--device",
        "cpu",
        "--data-dir",
        str(data_root),
        "--skip-verify",
        "--results",
        str(db),
        "--json",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["task"] for r in rows] == ["cifar10", "cifar100"]
    for r in rows:
        w = written[r["task"]]
        assert r["status"] == "ok" and r["mode"] == "linear" and r["checkpoint"] == "vit_demo"
        assert r["n_test"] == len(w.test_labels)
        h = hashlib.sha256("".join(f"test/{i}\t{y}\n" for i, y in enumerate(w.test_labels)).encode())
        assert r["split_manifest"] == h.hexdigest()
        assert 0.0 <= r["top1"] <= 1.0 and r["top1"] <= r["top5"] <= 1.0
        assert r["val_holdout"] == {"fraction": 0.1, "seed": 0}
    assert db_rows(db) == 2


@pytest.mark.slow
def test_cli_missing_data_dir_exits_2_and_stores_nothing(tmp_path):
    db = tmp_path / "results.sqlite"
    missing = tmp_path / "no_such_data"
    out = cli(
        "run",
        "-c",
        "vit_demo",
        "-t",
        "cifar10",
        "-m",
        "linear",
        "--device",
        "cpu",
        "--data-dir",
        str(missing),
        "--skip-verify",
        "--results",
        str(db),
        "--json",
        cwd=tmp_path,
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
    errors = [line for line in out.stderr.splitlines() if line.startswith("transfer-eval: error:")]
    assert len(errors) == 1, out.stderr
    assert out.stderr.rstrip("\n").splitlines()[-1] == errors[0]  # the error is the last thing said
    assert "Traceback" not in out.stderr
    assert "cifar10" in errors[0] and str(missing) in errors[0]
    assert out.stdout == ""
    assert db_rows(db) == 0
