"""Every mode scores its task's companion test sets with what it trained, once (issue 39), and stores each test
image's probabilities and the run's calibration (issue 40): the probe, memory or regression on the set's features,
the deployed (merged) model, or the checkpoint's own head; the set's class mask before top-k and softmax; its
label sets as truth; the run's temperature, fitted on val."""

import json

import numpy as np
import pytest
import torch
from conftest import cli, json_lines

from transfer_eval import tasks
from transfer_eval.checkpoints import load_registry
from transfer_eval.errors import UserError
from transfer_eval.methods import companions, fewshot, finetune, inference, probe
from transfer_eval.methods.modes import MODES
from transfer_eval.run import runner
from transfer_eval.store.results import Store
from transfer_eval.tasks import LoadContext

# sc_base: digits; its companions:
# sc_even, its test mirrored, masked to the even digits, each image right as itself or the next (even) digit
# (label sets, as ObjectNet's); sc_plain, its test mirrored.
PLUGIN = """
import importlib.util
import json

import numpy as np
from PIL import ImageOps
from transfer_eval import paths
from transfer_eval.tasks import ImageSplit, Task

_spec = importlib.util.spec_from_file_location("_digits_for_scoring", paths.builtin("tasks") / "digits.py")
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def _mirrored(split, ctx, sets):
    data = _base.digits.load(split, ctx)
    if split != "test":
        return data
    y = np.asarray(data.labels)
    return ImageSplit(lambda i: ImageOps.mirror(data.image(i)), y, [f"mirrored/{x}" for x in data.ids],
                      label_sets=np.stack([y, (y + 1) % 10], 1) if sets else None)


def _task(name, load, companions, scored=None):
    b = _base.digits
    return Task(name=name, num_classes=10, load=load, splits=b.splits, recipes=b.recipes,
                val_holdout=b.val_holdout, companions=companions, scored_classes=scored)


sc_base = _task("sc_base", _base.digits.load, ("sc_even", "sc_plain"))
sc_even = _task("sc_even", lambda s, c: _mirrored(s, c, True), ("sc_base",), (0, 2, 4, 6, 8))
sc_plain = _task("sc_plain", lambda s, c: _mirrored(s, c, False), ("sc_base",))
"""
EVEN = (0, 2, 4, 6, 8)
MODE_NAMES = ("linear", "knn", "fewshot", "pretrained", "ssf")
LIMIT = 20
SETTINGS = {"shots": [2], "c_grid": [1.0], "max_iter": 10, "steps": 1, "batch_size": 8}  # small: fast


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """shapes10: vit_demo_shapes with a 10-class head of its own (random, seed 0), for `pretrained`."""
    from safetensors.torch import load_file, save_file

    from transfer_eval import checkpoints

    demo, folder = load_registry()["vit_demo_shapes"], tmp_path_factory.mktemp("shapes10")
    state = load_file(checkpoints.weights_path_for(demo))
    g = torch.Generator().manual_seed(0)
    state["head.weight"], state["head.bias"] = torch.randn(10, 128, generator=g) / 10, torch.zeros(10)
    save_file(state, folder / "shapes10.safetensors")
    (folder / "registry.yaml").write_text(
        f"shapes10:\n  model: {demo.model}\n  weights: {folder / 'shapes10.safetensors'}\n"
        f"  model_args: {json.dumps(demo.model_args)}\n  data_config: {json.dumps(demo.data_config)}\n"
        "  pretraining: test fixture\n"
    )
    return folder / "registry.yaml"


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scoring_tasks")
    (folder / "scoring.py").write_text(PLUGIN)
    return folder


def _runs(plugins, registry, mode_names=MODE_NAMES, task_names=("sc_base",)):
    found, ck = tasks.discover([plugins]), load_registry([registry])["shapes10"]
    task_list, modes = [found[t] for t in task_names], [MODES[m] for m in mode_names]
    settings = {k: v for k, v in SETTINGS.items() if any(k in runner.recipe_fields(m) for m in modes)}
    return runner.plan([ck], task_list, modes, [0], settings, limit=LIMIT)


@pytest.fixture(scope="module")
def scored(plugins, registry, tmp_path_factory):
    """One run per mode, with the default companions; how often each mode fitted or trained."""
    calls = {"linear_probe": 0, "solve": 0, "train": 0}
    patch = pytest.MonkeyPatch()
    for module, name in ((probe, "linear_probe"), (fewshot, "solve"), (finetune, "train")):

        def counted(*a, _f=getattr(module, name), _n=name, **kw):
            calls[_n] += 1
            return _f(*a, **kw)

        patch.setattr(module, name, counted)
    store = Store(tmp_path_factory.mktemp("scoring_store") / "r.sqlite")
    try:
        own = runner.run_all(_runs(plugins, registry), LoadContext(plugins), torch.device("cpu"), store)
    finally:
        patch.undo()
    yield own, store, calls
    store.close()


def test_every_mode_scores_each_companion_once_trained(scored):
    own, store, calls = scored
    assert [r.mode for r in own] == list(MODE_NAMES) and all(r.status == "ok" for r in own)
    assert calls == {"linear_probe": 1, "solve": 1, "train": 1}  # nothing fitted or trained for a companion
    for r in own:
        sets = {c.task: c for c in store.query(modes=[r.mode]) if c.task != "sc_base"}
        assert sorted(sets) == ["sc_even", "sc_plain"], r.mode
        for c in sets.values():
            assert c.selection["model_of_run"] == r.run_id and c.selection["trained_for"] == "sc_base"
            assert (c.protocol_hash, c.train_seconds, c.temperature) == (
                r.protocol_hash,
                r.train_seconds,
                r.temperature,
            )
            assert c.n_test == r.n_test == LIMIT


def test_every_mode_masks_a_companion_to_its_scored_classes(scored):
    own, store, _ = scored
    for r in own:
        by_task = {c.task: c for c in store.query(modes=[r.mode])}
        labels, top5 = store.predictions(by_task["sc_even"].run_id)
        assert labels.shape == (LIMIT, 2)  # the label sets are what is stored and scored
        assert set(np.unique(top5)) == set(EVEN), r.mode  # the five scored classes, whatever the model prefers
        _, plain = store.predictions(by_task["sc_plain"].run_id)
        assert not set(np.unique(plain[:, 0])) <= set(EVEN), r.mode  # unmasked, it predicts other classes
        assert by_task["sc_even"].top1 == pytest.approx(inference.hits(labels, top5).mean())


def test_probabilities_per_mode_agree_with_the_top5(scored):
    own, store, _ = scored
    for r in own:
        for c in store.query(modes=[r.mode]):
            p = store.probabilities(c.run_id)
            if r.mode == "fewshot":  # regression outputs, not probabilities: nothing stored, no calibration
                assert p is None and (c.ece, c.nll, c.temperature, c.ece_scaled) == (None, None, None, None)
                continue
            labels, top5 = store.predictions(c.run_id)
            p = p.astype(np.float64)
            assert p.shape == (LIMIT, 6) and np.all(np.diff(p[:, :5], axis=1) <= 1e-3), (r.mode, c.task)
            assert np.all(p[:, :5].sum(1) <= 1.01) and c.ece is not None
            if c.task == "sc_even":  # a softmax over the five scored classes only; no true class for a label set
                assert np.allclose(p[:, :5].sum(1), 1.0, atol=5e-3) and np.isnan(p[:, 5]).all() and c.nll is None
            else:
                right = top5[:, 0] == labels
                assert np.allclose(p[right, 5], p[right, 0]) and np.all(p[~right, 5] <= p[~right, 0])
                # computed before float16 storage, where a probability below 6e-8 becomes 0
                low, high = (-np.log(np.clip(p[:, 5], floor, 1)).mean() for floor in (6e-8, 1e-12))
                assert low - 1e-2 <= c.nll <= high + 1e-2


def test_temperature_where_the_mode_has_val_and_probabilities(scored):
    own, _, _ = scored
    fitted = {r.mode: r.temperature for r in own}
    assert fitted["fewshot"] is None and fitted["pretrained"] is None  # no probabilities; no val read
    for mode in ("linear", "knn", "ssf"):
        r = next(r for r in own if r.mode == mode)
        assert 0.05 <= r.temperature <= 20 and r.ece_scaled is not None and r.nll_scaled is not None, mode


def test_companions_none_or_a_list(plugins, registry, tmp_path):
    runs = _runs(plugins, registry, ("knn",))
    for which, stored in (("none", {"sc_base"}), ("sc_plain", {"sc_base", "sc_plain"})):
        store = Store(tmp_path / f"{which}.sqlite")
        runner.run_all(runs, LoadContext(plugins), torch.device("cpu"), store, runner.Options(companions=which))
        assert {r.task for r in store.query()} == stored
        store.close()
    with pytest.raises(UserError, match="sc_nope is no companion test set of sc_base"):
        companions.check("sc_plain,sc_nope", runs)
    with pytest.raises(UserError, match="not mixed"):
        companions.check("all,sc_plain", runs)
    # a sweep gives no job to a pending companion run, in any mode, of the companions chosen
    every = _runs(plugins, registry, task_names=("sc_base", "sc_even", "sc_plain"))
    keys = {r.key for r in every}
    covered = companions.covered(every, keys)
    assert sorted((r.task.name, r.mode.name) for r in every if r.key in covered) == sorted(
        (t, m) for t in ("sc_even", "sc_plain") for m in MODE_NAMES
    )
    assert {r.task.name for r in every if r.key in companions.covered(every, keys, which="sc_even")} == {"sc_even"}
    assert companions.covered(every, keys, which="none") == set()


def test_run_dry_run_counts_each_companion_sets_images(plugins, registry, tmp_path):
    args = ("run", "--registry", registry, "-c", "shapes10", "-t", "sc_base", "-m", "knn", "--tasks-dir", plugins)
    args += ("--dry-run",)
    out = cli(*args, "--limit", LIMIT, "--results", tmp_path / "r.sqlite")
    assert out.returncode == 0, out.stderr
    assert "1 runs planned, 0 stored, 1 to run; 2 companion test sets scored besides" in out.stdout
    lines = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("+ sc_")}
    assert sorted(lines) == ["sc_even", "sc_plain"] and all(f"0 / {LIMIT}" in v for v in lines.values())
    one = cli(*args, "--limit", LIMIT, "--companions", "sc_even", "--results", tmp_path / "r.sqlite")
    assert "1 companion test sets" in one.stdout and "sc_plain" not in one.stdout
    assert not (tmp_path / "r.sqlite").exists()  # nothing run, nothing stored


@pytest.mark.slow
def test_an_imagenet1k_run_stores_each_present_companion(tmp_path):
    """Issue 39's "done when" on miniatures in the real layouts: each probe's ImageNet-1k run stores its result and
    each companion set's whose data is here (v2 matched-frequency, ReaL, Sketch, A, R, their -clean points and
    ObjectNet; not v2's other variants), trained once; the leaderboard gives each set's effective robustness and
    draws the plot."""
    from fixtures import imagenet as F
    from fixtures import imagenet_shift as S

    root, db = tmp_path / "data", tmp_path / "r.sqlite"
    F.write_in1k_train(root, {c: 2 for c in S.VAL.values()}, wnids=S.WNIDS)  # every val class trains
    S.write_val(root)
    F.write_v2(root)
    for folder, images in (("sketch", S.SKETCH), ("imagenet-a", S.A_SET), ("imagenet-r", S.R_SET)):
        S.write_wnid_set(root, folder, images)
    S.write_objectnet(root, S.objectnet_classes(tasks.discover()["objectnet"].scored_classes))
    out = cli(
        *("run", "-c", "vit_demo_shapes", "-t", "imagenet1k", "-m", "knn,linear", "--data-dir", root),
        *("--results", db, "--skip-verify", "--set", "c_grid=[1.0]", "--set", "max_iter=10"),
    )
    assert out.returncode == 0, out.stderr
    shifted = ["imagenet_a", "imagenet_r", "imagenet_sketch", "imagenetv2_matched_frequency", "objectnet"]
    expected = sorted(["imagenet1k", "imagenet_real", "imagenet_a_clean", "imagenet_r_clean", *shifted])
    store = Store(db)
    for mode in ("knn", "linear"):
        got = {r.task: r for r in store.query(modes=[mode])}
        assert sorted(got) == expected, mode
        trained = got.pop("imagenet1k")
        assert trained.n_test == len(S.VAL) and got["imagenetv2_matched_frequency"].n_test == F.V2_COUNT
        assert got["imagenet_real"].n_test == len(S.VAL) - 3  # three val images have an empty ReaL set
        assert got["imagenet_sketch"].n_test == sum(S.SKETCH.values())
        assert got["objectnet"].n_test == sum(n for f, n in S.OBJECTNET_IMAGES.items() if f not in S.UNMAPPED)
        assert all(r.selection["model_of_run"] == trained.run_id for r in got.values())
        assert all(store.probabilities(r.run_id).shape == (r.n_test, 6) for r in got.values())
        assert all(r.temperature == trained.temperature for r in got.values())  # the run's T, fitted on val once
    store.close()
    assert out.stderr.count("running on") == 2  # one run per mode: the sets are scored, nothing trains again
    board = cli("leaderboard", "--results", db, "--format", "csv", "--plot-robustness", tmp_path / "er.png")
    assert board.returncode == 0, board.stderr
    header = board.stdout.splitlines()[0].split(",")
    assert all(f"{t}_effective_robustness" in header for t in shifted), header
    assert (tmp_path / "er.png").stat().st_size > 10_000


def test_paper_plan_counts_the_companion_sets_a_cell_scores(plugins, registry, tmp_path):
    import yaml

    preset = {
        "name": "one",
        "paper": "One cell",
        "arxiv": "0000.00002",
        "table": "Table 1",
        "seeds": [0],
        "mode": "knn",
        "rows": [{"label": "shapes", "checkpoint": "shapes10"}],
        "columns": [{"label": "base", "task": "sc_base"}],
    }
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "one.yaml").write_text(yaml.safe_dump(preset))
    args = ("--papers-dir", tmp_path / "papers", "--tasks-dir", plugins, "--registry", registry, "--json")
    proc = cli("paper", "plan", "one", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (cell,) = [r for r in json_lines(proc.stdout) if "row" in r]
    n_test = len(tasks.discover([plugins])["sc_base"].dataset("test", LoadContext(tmp_path)))
    assert cell["companion_images"] == 2 * n_test and "+ 2 companion test sets scored" in cell["status"]
