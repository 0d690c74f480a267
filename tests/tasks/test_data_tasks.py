"""Any labelled image data as a task from the command line: `folder:PATH` (torchvision ImageFolder's layout and
order) and `hf:PATH` (a Hugging Face dataset: save_to_disk or Parquet, with real image bytes). Built from the real
digits images, so the demo checkpoint learns from them end to end."""

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, cli, json_lines, stored_rows
from PIL import Image

from transfer_eval.errors import UserError
from transfer_eval.methods import deltas
from transfer_eval.run import serve
from transfer_eval.tasks import LoadContext, folder, hf, names

NAMES = ["zero", "one", "two", "three", "four"]  # five digit classes: quick, and above chance is clear
# Lower bounds for the 30-step attention fine-tuning of the end-to-end tests: the lowest test top-1 measured on the
# 2-core VM (2026-12-05; seed 0 with 2 threads, seed 0 with 1 thread, seed 1 with 1 thread) less that spread once
# more. Folder: 0.81, 0.81, 0.74, so 0.74 - 0.07. Hugging Face: 0.90, 0.90, 0.85, so 0.85 - 0.05.
FOLDER_ATTENTION = 0.67
HF_ATTENTION = 0.80
# The probes' figures, deterministic on a CPU (2026-12-05, the 2-core VM: folder 98 and 93 with seeds 0 and 1 and
# 2 and 1 threads alike; Hugging Face 97 and 93, this test's own run twice): test images right of the 100
FOLDER_LINEAR, FOLDER_KNN, HF_LINEAR, HF_KNN = 98, 93, 97, 93


def _digits(split: str, per_class: int):
    """(image, label) pairs of the first five digit classes from the digits task's split."""
    from transfer_eval import tasks

    ds = tasks.discover()["digits"].dataset(split, LoadContext(Path(".")))
    out, seen = [], {}
    for i, y in enumerate(ds.labels.tolist()):
        if y < 5 and seen.get(y, 0) < per_class:
            seen[y] = seen.get(y, 0) + 1
            out.append((ds.image(i), y))
    return out


def _folder(root: Path, splits=("train", "test"), per_class=(60, 20)) -> Path:
    for split, n in zip(splits, per_class):
        for j, (img, y) in enumerate(_digits("test" if split == "test" else "train", n)):
            d = root / split / NAMES[y]
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"{j:04d}.{'png' if j % 2 else 'jpg'}")
    return root


def _png(img) -> bytes:
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


def _hf(splits: dict, label="label", image="image", classes=NAMES):
    import datasets

    features = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=list(classes))})
    return datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict(
                {image: [{"bytes": _png(i), "path": None} for i, _ in rows], label: [y for _, y in rows]},
                features=features,
            )
            for s, rows in splits.items()
        }
    )


def _three_modes(task: str, db) -> dict:
    """linear, knn and a short attention fine-tuning of the demo checkpoint on `task`: each mode's record. Their
    deltas are kept (--save-delta) in a `deltas` folder beside `db`, under a safe form of the task's name."""
    proc = cli(
        "run", "-c", "vit_demo_shapes", "-t", task, "-m", "linear,knn,attention",
        "--set", "steps=30", "--set", "warmup_steps=5", "--set", "lr_grid=[]", "--set", "lr=0.002",
        "--set", "optimizer=adamw", "--set", "batch_size=64", "--results", db, "--json",
        "--save-delta", Path(db).parent / "deltas",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["mode"]: r for r in json_lines(proc.stdout)}
    assert set(rows) == {"linear", "knn", "attention"}
    files = sorted((Path(db).parent / "deltas").iterdir())
    assert len(files) == 3 and all(f.is_file() for f in files), files  # flat: no folders made of the task's path
    kind, base = task.split(":")[0], Path(task.split(":", 1)[1]).name
    for f, mode in zip(files, ("attention", "knn", "linear")):
        assert re.fullmatch(
            rf"vit_demo_shapes__{kind}-{base}-[0-9a-f]{{8}}__{mode}__seed0__[0-9a-f]+\.safetensors", f.name
        )
        assert deltas.read(f)[0]["task"] == rows[mode]["task"]  # the file still names the task in full
    return rows


# ------------------------------------------------------------------------------------------------------ folders


def test_folder_classes_in_imagefolder_order_nested_files_included(tmp_path):
    img = Image.new("RGB", (4, 4))
    for cls in ("10", "2", "B", "a"):
        for split in ("train", "test"):
            (tmp_path / split / cls / "deep").mkdir(parents=True)
            img.save(tmp_path / split / cls / "x.png")
            img.save(tmp_path / split / cls / "deep" / "y.JPG")  # nested, upper-case extension: both count
            (tmp_path / split / cls / "notes.txt").write_text("not an image")
    task = folder.task(str(tmp_path))
    assert task.classes == ("10", "2", "B", "a")  # plain string order, as torchvision's ImageFolder
    assert task.name == f"folder:{tmp_path.resolve()}" and task.val_holdout == {"fraction": 0.1, "seed": 0}
    test = task.dataset("test", LoadContext(tmp_path))
    assert test.ids == [f"test/{c}/{f}" for c in ("10", "2", "B", "a") for f in ("x.png", "deep/y.JPG")]
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    from torchvision.datasets import ImageFolder

    reference = ImageFolder(str(tmp_path / "test"))  # the library itself agrees, file by file
    assert [(str(Path(p).relative_to(tmp_path)), y) for p, y in reference.samples] == list(zip(test.ids, test.labels))


def test_folder_name_is_the_absolute_path_and_val_folder_is_used(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data", ("train", "val", "test"), (3, 2, 2))
    monkeypatch.chdir(tmp_path)
    task = names.resolve("folder:data", {})
    assert task.name == f"folder:{root.resolve()}" == names.resolve(f"folder:{root}", {}).name
    assert task.val_holdout is None
    val = task.dataset("val", LoadContext(tmp_path))
    assert len(val) == 10 and all(i.startswith("val/") for i in val.ids)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda r: None, "is not a folder"),
        (lambda r: _folder(r, ("train",), (2,)), "no test/ folder (it has train/)"),
        (lambda r: (r / "train").mkdir(parents=True) or (r / "test").mkdir(), "has no class folders"),
        (lambda r: _folder(r, ("train", "test"), (2, 2)) and (r / "test" / "seven").mkdir(), "classes not in train/"),
        (lambda r: _folder(r, ("train", "test"), (2, 2)) and (r / "train" / "seven").mkdir(), "lacks train's"),
    ],
)
def test_folder_errors_are_one_line(tmp_path, make, fragment):
    root = tmp_path / "d"
    make(root)
    proc = cli("data", "check", f"folder:{root}")
    assert_one_line_error(proc, fragment)


def test_a_class_folder_without_images_is_named(tmp_path):
    """The layout is right, one class is empty: named as such (not "missing"), and a refused run leaves no store,
    no delta folder and no cache entry behind."""
    root = _folder(tmp_path / "d", ("train", "test"), (2, 2))
    for split in ("train", "test"):
        (root / split / "seven").mkdir()
    checked = cli("data", "check", f"folder:{root}", "--json")  # data check reports it per split, exit status 1
    assert checked.returncode == 1
    details = {r["split"]: (r["status"], r["detail"]) for r in json_lines(checked.stdout)}
    said = f"task folder:{root}: test/seven/ holds no images ({IMAGE_SUFFIXES}); put images of that class there, "
    assert details["test"] == ("empty class", said + "or remove its folder from every split")
    text = cli("data", "check", f"folder:{root}")
    assert "missing" not in text.stdout and "should hold" not in text.stdout  # no layout help: the layout is right
    out, cache = tmp_path / "out", tmp_path / "cache"
    ran = cli(
        "run", "-c", "vit_demo", "-t", f"folder:{root}", "-m", "linear", "--results", out / "r.sqlite",
        "--save-delta", out / "deltas", env={"TRANSFER_EVAL_CACHE": cache},
    )  # fmt: skip
    assert_one_line_error(ran, "/seven/ holds no images")
    assert not out.exists() and not cache.exists()


IMAGE_SUFFIXES = ".jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp"  # torchvision's IMG_EXTENSIONS


def test_folder_task_runs_linear_knn_and_attention_end_to_end(tmp_path):
    root = _folder(tmp_path / "digits5")
    db = tmp_path / "r.sqlite"
    listed = cli("list", "tasks", "-t", f"folder:{root}", "--json")
    assert listed.returncode == 0, listed.stderr
    row = [r for r in json_lines(listed.stdout) if r["name"].startswith("folder:")][0]
    assert row["num_classes"] == 5 and row["name"] == f"folder:{root}"
    checked = cli("data", "check", f"folder:{root}", "--json")
    assert checked.returncode == 0, checked.stderr
    assert {(r["split"], r["images"]) for r in json_lines(checked.stdout)} == {
        ("train", 270),
        ("val", 30),
        ("test", 100),
    }
    rows = _three_modes(f"folder:{root}", db)
    for r in rows.values():
        assert r["task"] == f"folder:{root}" and r["status"] == "ok" and r["n_test"] == 100
    # five digit classes, chance 0.2. The probes are deterministic on a CPU: pinned to what this command gave on
    # the 2-core VM (2026-12-05). Fine-tuning is bounded below by its measured spread (see FOLDER_ATTENTION)
    assert {m: round(100 * rows[m]["top1"]) for m in ("linear", "knn")} == {"linear": FOLDER_LINEAR, "knn": FOLDER_KNN}
    assert rows["attention"]["top1"] >= FOLDER_ATTENTION, rows["attention"]["top1"]
    assert rows["knn"]["selection"]["features_cached"] is True  # linear's features
    board = cli("leaderboard", "--results", db)
    assert board.returncode == 0 and "folder:" in board.stdout, board.stderr
    import transfer_eval as te

    (again,) = te.evaluate(
        "vit_demo_shapes", f"folder:{root}", "knn", settings={"batch_size": 64}, results=db
    )  # the same task from Python
    assert again.run_id == rows["knn"]["run_id"]  # stored: found under the same name, not run again
    # a delta written under the names of earlier versions (the task's path as folders) still serves
    (new,) = (tmp_path / "deltas").glob("*__linear__*")
    old = tmp_path / "deltas" / new.name.replace(deltas.safe_name(f"folder:{root}"), f"folder:{root}")
    old.parent.mkdir(parents=True)
    new.rename(old)
    assert serve.open_delta("vit_demo_shapes", old).info["task"] == f"folder:{root}"


# ------------------------------------------------------------------------------------------- Hugging Face datasets


def test_hf_save_to_disk_and_parquet_read_alike(tmp_path):
    data = _hf({"train": _digits("train", 4), "validation": _digits("val", 2), "test": _digits("test", 2)})
    data.save_to_disk(str(tmp_path / "disk"))
    for split, ds in data.items():
        ds.to_parquet(str(tmp_path / "pq" / "data" / f"{split}-00000-of-00001.parquet"))
    disk, pq = hf.task(str(tmp_path / "disk")), hf.task(str(tmp_path / "pq"))
    assert disk.classes == pq.classes == tuple(NAMES) and disk.num_classes == 5
    assert disk.val_holdout is None  # its own validation split
    ctx = LoadContext(tmp_path)
    for split in ("train", "val", "test"):
        a, b = disk.dataset(split, ctx), pq.dataset(split, ctx)
        assert a.manifest() == b.manifest() and len(a) == {"train": 20, "val": 10, "test": 10}[split]
        assert np.array_equal(np.asarray(a.image(3)), np.asarray(b.image(3)))
        assert a.files_signature() is not None  # the feature cache keys on what the dataset holds


def test_hf_columns_found_named_and_checked(tmp_path):
    import datasets

    rows = {"train": _digits("train", 2), "test": _digits("test", 1)}
    _hf(rows, label="fine_label", image="img").save_to_disk(str(tmp_path / "named"))
    task = hf.task(str(tmp_path / "named"))  # found by their features
    assert task.num_classes == 5 and task.val_holdout == {"fraction": 0.1, "seed": 0}
    two = _hf(rows)
    two = datasets.DatasetDict({s: d.add_column("coarse", [0] * len(d)).cast_column("coarse", datasets.ClassLabel(
        names=["a"])) for s, d in two.items()})  # fmt: skip
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(UserError, match="several .label, coarse.* name it: hf:PATH:label=COLUMN"):
        hf.task(str(tmp_path / "two"))
    named = hf.task(f"{tmp_path / 'two'}:label=label")
    assert named.name == f"hf:{(tmp_path / 'two').resolve()}:label=label" and named.num_classes == 5
    with pytest.raises(UserError, match="no column 'nope'"):
        hf.task(f"{tmp_path / 'two'}:label=nope")
    bad = _hf(rows)
    bad["test"] = bad["test"].cast_column("label", datasets.Value("int64")).map(lambda r: {"label": -1})
    bad["test"] = bad["test"].cast_column("label", datasets.ClassLabel(names=NAMES))
    bad.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(UserError, match="labels outside 0..4 .e.g. -1: an unlabelled split"):
        hf.task(str(tmp_path / "unlabelled"))


def test_hf_errors_are_one_line(tmp_path):
    _hf({"train": _digits("train", 1)}).save_to_disk(str(tmp_path / "notest"))
    _hf({"train": _digits("train", 1)})["train"].save_to_disk(str(tmp_path / "one"))
    assert_one_line_error(cli("data", "check", f"hf:{tmp_path / 'notest'}"), "no test split (it has train)")
    assert_one_line_error(cli("data", "check", f"hf:{tmp_path / 'one'}"), "holds one split")
    assert_one_line_error(
        cli("data", "check", "hf:someone/not-cached-here"), "not in the local Hugging Face cache: add --download"
    )


def test_hf_task_runs_linear_knn_and_attention_end_to_end(tmp_path):
    data = _hf({"train": _digits("train", 60), "test": _digits("test", 20)})
    for split, ds in data.items():
        ds.to_parquet(str(tmp_path / "beans" / "data" / f"{split}-00000-of-00001.parquet"))
    db = tmp_path / "r.sqlite"
    rows = _three_modes(f"hf:{tmp_path / 'beans'}", db)
    for r in rows.values():
        assert r["task"] == f"hf:{(tmp_path / 'beans').resolve()}" and r["n_test"] == 100
    # as the folder test: the probes pinned, fine-tuning bounded by its measured spread
    assert {m: round(100 * rows[m]["top1"]) for m in ("linear", "knn")} == {"linear": HF_LINEAR, "knn": HF_KNN}
    assert rows["attention"]["top1"] >= HF_ATTENTION, rows["attention"]["top1"]
    assert json.loads(json.dumps(rows["linear"]["val_holdout"])) == {"fraction": 0.1, "seed": 0}


# ------------------------------------------------------------------------------ classes a task must have (issue 34)

ONE_CLASS_PLUGIN = """
from PIL import Image
from transfer_eval.tasks import ImageSplit, Task


def load(split, ctx):
    return ImageSplit(lambda i: Image.new("RGB", (16, 16), (i, 0, 0)), [0] * 8, [f"{split}/{i}" for i in range(8)])


lonely = Task(name="lonely", num_classes=2, load=load, classes=("cat", "dog"), description="one class has images")
"""


def test_a_task_without_two_trained_classes_is_refused_for_every_source(tmp_path):
    """A one-class task would score 100%: refused before any run, one line, exit 2, nothing stored, whatever the
    task's source; as is a test class that train never shows (folder tasks cannot have one: their splits must
    hold the same class folders)."""
    one = _folder(tmp_path / "one", ("train", "test"), (6, 3))
    for d in list((one / "train").iterdir()) + list((one / "test").iterdir()):
        if d.name != "zero":
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    lacking = [(i, y) for i, y in _digits("train", 4) if y != 3]  # train lacks "three", test has it
    _hf({"train": lacking, "test": _digits("test", 2)}).save_to_disk(str(tmp_path / "lacking"))
    _hf({"train": [(i, 1) for i, _ in _digits("train", 2)], "test": _digits("test", 1)}).save_to_disk(
        str(tmp_path / "hf_one")
    )
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "lonely.py").write_text(ONE_CLASS_PLUGIN)
    cases = [
        (f"folder:{one}", "its train split has images of 1 class ('zero'); a task needs at least two classes"),
        (f"hf:{tmp_path / 'hf_one'}", "its train split has images of 1 class ('one')"),
        (f"hf:{tmp_path / 'lacking'}", "its test split has images of 1 class with no training images ('three')"),
        ("lonely", "its train split has images of 1 class ('cat')"),
    ]
    for task, message in cases:
        db = tmp_path / f"{abs(hash(task))}.sqlite"
        ran = cli("run", "-c", "vit_demo", "-t", task, "-m", "knn", "--tasks-dir", plugins, "--results", db)
        assert_one_line_error(ran, message)
        assert stored_rows(db) == 0


def test_check_classes_reads_only_the_splits_given():
    from transfer_eval.tasks import ImageSplit, Task

    def split(labels):
        return ImageSplit(lambda i: None, labels)

    task = Task(name="t", num_classes=3, load=lambda s, c: split([0, 1]), classes=("a", "b", "c"))
    task.check_classes({"test": split([0])})  # a run that reads only test (the pretrained mode): no train to check
    task.check_classes({"train": split([0, 1, 1]), "test": split([1, 0])})
    with pytest.raises(UserError, match=r"val split has images of 1 class with no training images \('c'\)"):
        task.check_classes({"train": split([0, 1]), "val": split([2, 0])})
    with pytest.raises(UserError, match=r"train split has images of 0 classes \(none\)"):
        task.check_classes({"train": split([])})
    from dataclasses import replace

    sparse = replace(task, train_covers_classes=False)  # VTAB-1k: train800 need not show every class
    sparse.check_classes({"train": split([0, 1]), "val": split([2, 0])})
    with pytest.raises(UserError, match="at least two classes"):
        sparse.check_classes({"train": split([1, 1])})


MANY_CLASSES_PLUGIN = """
from transfer_eval.tasks import Task

many = Task(name="many", num_classes=40, load=None, classes=tuple(f"c{i:02d}" for i in range(40)))
unnamed = Task(name="unnamed", num_classes=7, load=None)
"""


def test_list_tasks_shows_the_class_order_for_every_source(tmp_path):
    """The index in predictions and deltas is the label order: shown in text (compactly where there are many) and
    given whole in JSON, for folder, Hugging Face and plugin tasks alike."""
    img = Image.new("RGB", (4, 4))
    for cls in ("cat", "10", "Dog", "2"):
        for split in ("train", "test"):
            (tmp_path / "f" / split / cls).mkdir(parents=True)
            img.save(tmp_path / "f" / split / cls / "x.png")
    rows = {"train": _digits("train", 2), "test": _digits("test", 1)}
    _hf(rows, classes=["b", "a", "10", "9", "c"]).save_to_disk(str(tmp_path / "h"))
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "many.py").write_text(MANY_CLASSES_PLUGIN)
    given = ["list", "tasks", "-t", f"folder:{tmp_path / 'f'}", "-t", f"hf:{tmp_path / 'h'}", "-t", "many"]
    given += ["-t", "unnamed", "--tasks-dir", tmp_path / "plugins"]
    listed = cli(*given, "--json")
    assert listed.returncode == 0, listed.stderr
    found = {r["name"]: r["classes"] for r in json_lines(listed.stdout)}
    assert len(found) == 4  # only the tasks named (issue 42: -t listed every registered task as well)
    assert found[f"folder:{(tmp_path / 'f').resolve()}"] == ["10", "2", "Dog", "cat"]  # torchvision's order
    assert found[f"hf:{(tmp_path / 'h').resolve()}"] == ["b", "a", "10", "9", "c"]  # the ClassLabel's own order
    assert found["many"] == [f"c{i:02d}" for i in range(40)] and found["unnamed"] is None
    text = cli(*given)
    assert text.returncode == 0, text.stderr
    lines = {line.split()[0]: line for line in text.stdout.split("Class order", 1)[1].splitlines()[1:]}
    assert lines[f"folder:{(tmp_path / 'f').resolve()}"].endswith("0: '10', 1: '2', 2: 'Dog', 3: 'cat'")
    assert lines[f"hf:{(tmp_path / 'h').resolve()}"].endswith("0: 'b', 1: 'a', 2: '10', 3: '9', 4: 'c'")
    assert lines["many"].endswith("0: 'c00', 1: 'c01', 2: 'c02', ..., 38: 'c38', 39: 'c39' (40 classes)")
    assert lines["unnamed"].endswith("not named by the task (labels 0..6)")


def test_hf_default_column_named_is_the_same_task(tmp_path):
    _hf({"train": _digits("train", 2), "test": _digits("test", 1)}).save_to_disk(str(tmp_path / "beans"))
    plain, named = hf.task(str(tmp_path / "beans")), hf.task(f"{tmp_path / 'beans'}:label=label")
    assert named.name == plain.name == f"hf:{(tmp_path / 'beans').resolve()}"  # the default column, named
    assert hf.task(f"{tmp_path / 'beans'}:image=image:label=label").name == plain.name


def test_hf_missing_local_path_says_so_and_suggests_no_download(tmp_path):
    for missing in (tmp_path / "nope", "~/no-such-folder-here/beans", "./beans"):
        proc = cli("data", "check", f"hf:{missing}")
        assert_one_line_error(proc, f"{Path(missing).expanduser()} does not exist")
        assert "--download" not in proc.stderr
