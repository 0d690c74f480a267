"""Companion test sets: a model fine-tuned (or a probe fitted) for one task is scored on the test splits of the
tasks that train exactly as it does (ImageNet-1k and ImageNet-V2), stored under their own keys, and equal to what a
separate run of the companion gives; sweeps and `paper run` give those runs no job of their own."""

import pytest
from conftest import cli, json_lines

from transfer_eval import tasks
from transfer_eval.methods import companions
from transfer_eval.run import runner

PLUGIN = """
import importlib.util
from PIL import ImageOps
from transfer_eval import paths
from transfer_eval.tasks import ImageSplit, Task

_spec = importlib.util.spec_from_file_location("_digits_for_companions", paths.builtin("tasks") / "digits.py")
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)  # a module, not a Task: nothing of it is discovered here


def load_mirrored(split, ctx):
    data = _base.digits.load(split, ctx)
    if split != "test":
        return data
    return ImageSplit(lambda i: ImageOps.mirror(data.image(i)), data.labels, [f"mirrored/{x}" for x in data.ids])


def _task(name, load, other):
    base = _base.digits
    return Task(name=name, num_classes=10, load=load, splits=base.splits, recipes=base.recipes,
                val_holdout=base.val_holdout, companions=(other,))


digits_a = _task("digits_a", _base.digits.load, "digits_b")
digits_b = _task("digits_b", load_mirrored, "digits_a")
"""


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("companion_tasks")
    (folder / "pair.py").write_text(PLUGIN)
    return folder


def test_imagenet_tasks_are_each_others_compatible_companions():
    found = tasks.discover()
    names = ["imagenet1k", "imagenetv2_matched_frequency", "imagenetv2_threshold07", "imagenetv2_top_images"]
    names += ["imagenet_real", "imagenet_sketch", "imagenet_a", "imagenet_r", "imagenet_a_clean", "imagenet_r_clean"]
    names += ["objectnet"]  # ImageNet's other test sets (tasks/imagenet_shift.py, tasks/objectnet.py)
    for name in names:
        assert sorted(found[name].companions) == sorted(n for n in names if n != name)
        assert all(companions.compatible(found[name], found[c]) for c in found[name].companions)
    runs = runner.plan_named(["vit_demo"], names, ["attention", "linear"])
    keys = {r.key for r in runs}
    covered = companions.covered(runs, keys)
    # the first run of each mode (imagenet1k) scores the three others: fine-tuning and probes alike
    assert {(r.task.name, r.mode.name) for r in runs if r.key in covered} == {
        (n, m) for n in names[1:] for m in ("attention", "linear")
    }
    first_pending = {r.key for r in runs if r.task.name != "imagenet1k"}
    assert {r.task.name for r in runs if r.key in companions.covered(runs, first_pending)} == set(names[2:])


def test_one_training_scores_the_companions_test_as_a_separate_run_would(plugins, tmp_path):
    args = ("-c", "vit_demo", "-m", "attention", "--set", "steps=6", "--tasks-dir", plugins, "--json")
    both = cli("run", "-t", "digits_a,digits_b", *args, "--results", tmp_path / "both.sqlite")
    assert both.returncode == 0, both.stderr
    assert "also scored on digits_b (the same model)" in both.stderr
    assert "scored with the model trained for a companion task" in both.stderr
    assert both.stderr.count("running on") == 1  # one training for the two tasks
    a, b = json_lines(both.stdout)
    assert (a["task"], b["task"]) == ("digits_a", "digits_b") and a["protocol_hash"] == b["protocol_hash"]
    assert b["selection"]["model_of_run"] == a["run_id"] and b["selection"]["trained_for"] == "digits_a"
    assert b["train_pflops_total"] == a["train_pflops_total"] and b["top1"] != a["top1"]  # another test split
    alone = cli("run", "-t", "digits_b", *args, "--results", tmp_path / "alone.sqlite")
    assert alone.returncode == 0, alone.stderr
    (c,) = json_lines(alone.stdout)
    assert c["top1"] == b["top1"] and c["top5"] == b["top5"] and c["split_manifest"] == b["split_manifest"]
    again = cli("run", "-t", "digits_b", *args, "--results", tmp_path / "both.sqlite")
    assert "skipped" in again.stderr  # the companion result counts as the run's own
    dry = cli("sweep", "-t", "digits_a,digits_b", *args[:-1], "--results", tmp_path / "new.sqlite", "--dry-run")
    assert "2 runs planned, 0 stored, 2 to run in 1 jobs (1 of them scored with another job's model" in dry.stdout
    assert dry.stdout.count("transfer-eval run") == 1 and "vit_demo / digits_a" in dry.stdout  # no job for b


def test_paper_plan_counts_no_training_for_a_companions_cell(plugins, tmp_path):
    import yaml

    preset = {
        "name": "pair",
        "paper": "A pair",
        "arxiv": "0000.00001",
        "table": "Table 1",
        "seeds": [0],
        "mode": "attention",
        "rows": [{"label": "demo", "checkpoint": "vit_demo"}],
        "columns": [{"label": "A", "task": "digits_a"}, {"label": "B", "task": "digits_b"}],
    }
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "pair.yaml").write_text(yaml.safe_dump(preset))
    proc = cli("paper", "plan", "pair", "--papers-dir", tmp_path / "papers", "--tasks-dir", plugins, "--json",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cells = {r["column"]: r for r in json_lines(proc.stdout) if "row" in r}
    assert cells["A"]["status"] == "missing" and "companion" in cells["B"]["status"]
    assert 0 < cells["B"]["missing_pflops"] < cells["A"]["missing_pflops"] / 10  # B: its test split's forward only
