"""A refused command leaves nothing behind: every refusal the preflight makes (run/checks.py) stops the runs before a
results store, a cache entry or a --save-delta folder exists. The refusals are listed here by the call that makes
them, and a call the preflight gains is a test failure until it has a case."""

import ast
import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_eval import tasks
from transfer_eval.checkpoints import Checkpoint, load_registry
from transfer_eval.errors import UserError
from transfer_eval.input import pipeline
from transfer_eval.methods.modes import MODES
from transfer_eval.run import checks, runner
from transfer_eval.store.results import Store
from transfer_eval.tasks import LoadContext, folder

# what the preflight calls that refuses nothing: helpers and builtins
NOT_REFUSALS = {"get", "len", "next", "sorted", "splits_read", "values", "items", "keys"}


def _images(root, classes: dict[str, int]) -> str:
    """A folder task's layout: train/ and test/ with `classes` (name -> images per class), tiny PNGs."""
    for split in ("train", "test"):
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * i % 255, 0, 0)).save(root / split / c / f"{i}.png")
    return f"{folder.PREFIX}{root}"


def _bad_weights(tmp_path) -> Checkpoint:
    """A checkpoint whose weights file is the demo architecture's with a tensor of another shape."""
    from safetensors.torch import save_file

    demo = load_registry()["vit_demo"]
    path = tmp_path / "bad.safetensors"
    save_file({"pos_embed": torch.zeros(1, 3, 7)}, str(path))
    return Checkpoint("bad_weights", demo.model, str(path), model_args=demo.model_args, data_config=demo.data_config)


def _case(name: str, tmp_path):
    """(runs, load context, options, what the line says) of the refusal of the preflight's call `name`."""
    registry, found = load_registry(), tasks.discover()
    demo, digits = registry["vit_demo"], found["digits"]
    ctx, options = LoadContext(tmp_path / "data"), runner.Options()
    mode, task, ck, overrides, says = MODES["linear"], digits, demo, {}, ""
    if name == "check_own_head":  # random weights have no classifier to evaluate
        mode, says = MODES["pretrained"], "random weights"
    elif name == "build_model":  # a weights file that does not fit its architecture
        ck, says = _bad_weights(tmp_path), "bad.safetensors"
    elif name == "check_sources":  # a feature source the checkpoint does not have
        overrides, says = {"features": "last9"}, "last9"
    elif name == "fetch":  # --download of a task that cannot be downloaded
        task = folder.task(_images(tmp_path / "two", {"a": 2, "b": 2})[len(folder.PREFIX) :])
        options, says = runner.Options(download=True), "cannot be downloaded"
    elif name == "dataset":  # data that is not there
        task, says = found["cifar10"], "cifar10"
    elif name == "check_classes":  # one class to learn
        task, says = folder.task(_images(tmp_path / "one", {"only": 3})[len(folder.PREFIX) :]), "two classes"
    elif name == "check_structure":  # a LoRA rank above the model's width
        mode, overrides, says = MODES["lora"], {"lora_rank": 129}, "width"
    elif name == "check_inputs":  # --decode device for a task whose images are not files
        options, says = runner.Options(inputs=pipeline.InputOptions(decode="device")), "--decode device"
    runs = runner.plan([ck], [task], [mode], seeds=[0], overrides=overrides)
    return runs, ctx, options, says


def test_every_call_the_preflight_refuses_with_has_a_case():
    tree = ast.parse(inspect.getsource(checks.preflight))
    called = {
        n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, (ast.Attribute, ast.Name))
    }
    assert called - NOT_REFUSALS == set(REFUSALS), "give each refusal the preflight makes a case in REFUSALS"


REFUSALS = (
    "check_own_head",
    "build_model",
    "check_sources",
    "fetch",
    "dataset",
    "check_classes",
    "check_structure",
    "check_inputs",
)


@pytest.mark.parametrize("name", REFUSALS)
def test_a_refused_run_leaves_no_store_cache_entry_or_delta_folder(name, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(cache))
    runs, ctx, options, says = _case(name, tmp_path)
    deltas, db = tmp_path / "out" / "deltas", tmp_path / "out" / "results.sqlite"
    options = runner.Options(**{**options.__dict__, "save_delta": deltas})
    store = Store(db)
    with pytest.raises(UserError, match=says.replace(".", r"\.")):
        runner.run_all(runs, ctx, torch.device("cpu"), store, options)
    assert store.query() == []
    store.close()
    assert not (tmp_path / "out").exists()  # neither the store's file nor the delta folder, nor their folder
    assert not cache.exists() or not any(cache.rglob("*")), sorted(cache.rglob("*"))


def test_a_store_is_made_by_its_first_result_and_reads_as_empty_before(tmp_path):
    from transfer_eval.store.results import Result

    db = tmp_path / "new" / "results.sqlite"
    store = Store(db)
    assert store.query() == [] and not store.has(("c",) * 7) and not db.parent.exists()
    other = Store(db)  # another process's store of the same path writes first: this one reads what it wrote
    other.put(Result("c", "w", "digits", 1, "linear", "p", 0, top1=0.5), np.zeros(2), np.zeros((2, 5)))
    assert [r.top1 for r in store.query()] == [0.5]
    other.close()
    store.close()


def test_a_new_store_that_cannot_be_made_leaves_no_file(tmp_path, monkeypatch):
    """The disk full as SQLite begins the file (at the first result): one line, and no empty file left behind."""
    import sqlite3

    from transfer_eval.store import databases
    from transfer_eval.store.results import Result

    def full(self, patience=60.0):
        raise sqlite3.OperationalError("database or disk is full")

    db = tmp_path / "results.sqlite"
    store = Store(db)
    monkeypatch.setattr(databases.SQLite, "_wal", full)
    with pytest.raises(UserError, match="no space left on the disk of"):
        store.put(Result("c", "w", "digits", 1, "linear", "p", 0), np.zeros(2), np.zeros((2, 5)))
    assert list(tmp_path.iterdir()) == []
