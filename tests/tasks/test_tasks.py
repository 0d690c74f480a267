"""Task plugins: the built-ins, a user's folder, entry points; deterministic splits."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, cli, cli_process, expected_holdout, json_lines, stored_rows

from transfer_eval import tasks
from transfer_eval.tasks import LoadContext, holdout

PLUGIN = '''
"""A user's task: coloured squares, class = colour."""
import numpy as np
from PIL import Image
from transfer_eval.tasks import ImageSplit, Task

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def load(split, ctx):
    n = {"train": 30, "val": 9, "test": 15}[split]
    labels = [i % 3 for i in range(n)]
    rng = np.random.default_rng({"train": 0, "val": 1, "test": 2}[split])
    noise = rng.integers(0, 40, size=(n, 16, 16, 3))

    def image(i):
        return Image.fromarray((np.array(COLOURS[labels[i]]) + noise[i]).clip(0, 255).astype(np.uint8))

    return ImageSplit(image, labels, [f"{split}/{i}" for i in range(n)])


squares = Task(name="squares", num_classes=3, load=load, version=2, description="coloured squares")
'''


@pytest.fixture
def plugin_dir(tmp_path):
    d = tmp_path / "my_tasks"
    d.mkdir()
    (d / "squares.py").write_text(PLUGIN)
    return d


def test_builtins_are_discovered():
    found = tasks.discover()
    assert {"digits", "cifar10", "cifar100"} <= set(found)
    assert found["digits"].num_classes == 10 and found["cifar100"].num_classes == 100
    for t in found.values():
        assert set(t.recipes) >= {"attention", "full"}, t.name  # a probe's recipe is the mode's unless a task says


def test_user_folder_plugin(plugin_dir):
    found = tasks.discover([plugin_dir])
    assert found["squares"].version == 2
    assert found["squares"].source.endswith("squares.py")
    split = found["squares"].dataset("test", LoadContext(plugin_dir))
    assert len(split) == 15 and split.labels.tolist()[:4] == [0, 1, 2, 0]
    assert split.image(0).mode == "RGB"


def test_user_plugin_runs_end_to_end(plugin_dir, db):
    listed = cli("list", "tasks", "--json", "--tasks-dir", plugin_dir)
    assert listed.returncode == 0
    assert "squares" in {row["name"] for row in json_lines(listed.stdout)}
    proc = cli(
        "run", "-c", "vit_demo", "-t", "squares", "-m", "linear", "--tasks-dir", plugin_dir, "--results", db, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json_lines(proc.stdout)
    assert row["task"] == "squares" and row["task_version"] == 2 and row["status"] == "ok"
    assert row["top1"] > 0.8  # colours are trivially separable even from random features


def test_entry_point_plugin(tmp_path):
    site = tmp_path / "site"
    pkg = site / "third_party_tasks"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN.replace('name="squares"', 'name="ep_squares"'))
    dist = site / "third_party_tasks-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-tasks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[transfer_eval.tasks]\nsquares = third_party_tasks:squares\n")
    proc = cli_process("list", "tasks", "--json", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json_lines(proc.stdout)}
    assert "ep_squares" in rows and rows["ep_squares"]["source"].startswith("entry point")


def test_broken_plugin_is_one_clear_line(tmp_path, db):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "broken.py").write_text("def oops(:\n")
    proc = cli("run", "-c", "vit_demo", "-t", "digits", "-m", "linear", "--tasks-dir", d, "--results", db)
    assert_one_line_error(proc, "broken.py", "failed to import")
    assert stored_rows(db) == 0


def test_an_edited_plugin_is_read_again_in_the_same_process(tmp_path):
    """A notebook (or the in-process CLI) that edits a plugin file between two discoveries gets the edited task,
    not the module imported the first time."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "squares.py").write_text(PLUGIN)
    assert tasks.discover([d])["squares"].version == 2
    (d / "squares.py").write_text(PLUGIN.replace("version=2", "version=3"))
    assert tasks.discover([d])["squares"].version == 3


def test_unknown_task_suggests(db):
    proc = cli("run", "-c", "vit_demo", "-t", "digitz", "-m", "linear", "--results", db)
    assert_one_line_error(proc, "unknown task 'digitz'", "did you mean 'digits'")
    assert stored_rows(db) == 0


def test_holdout_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(5), [10, 20, 30, 7, 3])
    kept, held = holdout(labels, 0.1, seed=0)
    again = holdout(labels, 0.1, seed=0)
    assert np.array_equal(kept, again[0]) and np.array_equal(held, again[1])
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == len(labels)
    assert np.bincount(labels[held], minlength=5).tolist() == [1, 2, 3, 1, 1]
    other = holdout(labels, 0.1, seed=1)[1]
    assert not np.array_equal(held, other)


def test_digits_splits_are_disjoint_and_fixed():
    t = tasks.discover()["digits"]
    ctx = LoadContext(Path("."))
    splits = {s: t.dataset(s, ctx) for s in ("train", "val", "test")}
    ids = [set(s.ids) for s in splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(len(s) for s in splits.values()) == 1797
    assert len(splits["test"]) == pytest.approx(0.3 * 1797, abs=10)
    assert splits["test"].manifest() == t.dataset("test", ctx).manifest()
    # the documented rule (tasks/digits.py): stratified, seed 0, 30% of all images test, then 20% of the rest val;
    # recomputed from scikit-learn's own labels with the hold-out written out in conftest, and checked by id
    from sklearn.datasets import load_digits

    labels = load_digits().target.tolist()
    test = expected_holdout(labels, 0.3, 0)
    rest = [i for i in range(len(labels)) if i not in set(test)]
    val_pos = set(expected_holdout([labels[i] for i in rest], 0.2, 0))
    expected = {
        "train": [rest[j] for j in range(len(rest)) if j not in val_pos],
        "val": [rest[j] for j in sorted(val_pos)],
        "test": test,
    }
    for name, split in splits.items():
        assert split.ids == [f"digit_{i}" for i in expected[name]], name
        assert split.labels.tolist() == [labels[i] for i in expected[name]], name
    img = splits["train"].image(0)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_digits_are_scikit_learns_digits():
    """The task reads scikit-learn's bundled file itself (no import of sklearn.datasets); the images and labels
    are load_digits' exactly, grey levels 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = tasks.discover()["digits"]
    module = sys.modules[digits.load.__module__]  # the built-in plugin file, as discovery imported it
    assert module._bundled_file() is not None  # the fast path is the one taken here
    pixels, labels = module._digits()
    d = load_digits()
    assert np.array_equal(labels, d.target)
    assert np.array_equal(pixels, np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8))


def test_plugin_docstring_contract_is_documented():
    # A newcomer adding a task reads the module docstring: it must say how plugins are found.
    doc = textwrap.dedent(tasks.__doc__)
    assert "--tasks-dir" in doc and "transfer_eval.tasks" in doc and "TASKS" in doc


def test_a_task_declaring_val_holdout_gets_it_from_the_suite():
    """With val_holdout the loader is asked for "train" and "test" only; train and val are the kept and held-out
    parts of the loader's train, by the documented rule, for every task alike."""
    from conftest import expected_holdout

    from transfer_eval.tasks import ImageSplit, Task

    asked = []
    labels = [i % 4 for i in range(40)]

    def load(split, ctx):
        asked.append(split)
        n = 40 if split == "train" else 8
        return ImageSplit(lambda i: None, labels[:n], [f"{split}/{i}" for i in range(n)])

    task = Task(name="held", num_classes=4, load=load, val_holdout={"fraction": 0.25, "seed": 3})
    ctx = LoadContext(".")
    train, val, test = (task.dataset(s, ctx) for s in ("train", "val", "test"))
    assert set(asked) == {"train", "test"}
    assert [int(i.split("/")[1]) for i in val.ids] == expected_holdout(labels, 0.25, 3)
    assert sorted(train.ids + val.ids, key=lambda s: int(s.split("/")[1])) == [f"train/{i}" for i in range(40)]
    assert len(test) == 8
