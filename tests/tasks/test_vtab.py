"""VTAB-1k: the 19 tasks read from miniature data in the exact re-hosted layout (NOAH's get_vtab1k.py: txt lists
`images/<split>/NNNNNN.jpg <label>` and the images), the checks and their one-line errors, the `vtab` protocol, the
group's means under both conventions, and the paper preset."""

from pathlib import Path

import numpy as np
import pytest
from conftest import cli, json_lines
from PIL import Image

from transfer_eval import tasks
from transfer_eval.errors import UserError
from transfer_eval.methods.modes import MODES
from transfer_eval.run import runner
from transfer_eval.tasks import LoadContext, groups

VTAB = [t for t in groups.GROUPS["vtab1k"].tasks]
FOLDERS = [t.removeprefix("vtab1k_") for t in VTAB]
COUNTS = {"train800": 4, "val200": 2, "test": 3}


def _labels(classes: int, n: int, offset: int) -> list[int]:
    """Labels spread over the classes, not contiguous (a small sample of a 100-class task holds 0, 33, 66, 99)."""
    return [int(x) for x in np.linspace(0, classes - 1, n).round().astype(int)[(np.arange(n) + offset) % n]]


def make_vtab(root: Path, folders=FOLDERS, counts=COUNTS) -> Path:
    """DATA/vtab-1k/<folder>/ as get_vtab1k.py writes it, in miniature: each split's JPEGs (as PIL saves them) and
    its txt list; train800val200 a second copy of train800's then val200's images."""
    rng = np.random.default_rng(0)
    classes = {t.name.removeprefix("vtab1k_"): t.num_classes for t in tasks.discover().values() if t.name in VTAB}
    for folder in folders:
        base = root / "vtab-1k" / folder
        made = {}
        for k, (split, n) in enumerate(counts.items()):
            made[split] = [
                (rng.integers(0, 255, (20, 24, 3), dtype=np.uint8), y) for y in _labels(classes[folder], n, k)
            ]
        made["train800val200"] = made["train800"] + made["val200"]
        for split, rows in made.items():
            (base / "images" / split).mkdir(parents=True, exist_ok=True)
            lines = []
            for i, (pixels, y) in enumerate(rows):
                rel = f"images/{split}/{i:06d}.jpg"
                Image.fromarray(pixels).save(base / rel)
                lines.append(f"{rel} {y}")
            (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def vtab_data(tmp_path_factory):
    return make_vtab(tmp_path_factory.mktemp("vtab"))


def _task(name):
    return tasks.discover()[name]


def test_nineteen_tasks_in_three_groups():
    g = groups.GROUPS["vtab1k"]
    assert len(g.tasks) == 19 and [p for p, _ in g.parts] == ["Natural", "Specialized", "Structured"]
    assert [len(ts) for _, ts in g.parts] == [7, 4, 8]
    counts = {t: _task(t).num_classes for t in g.tasks}
    assert counts["vtab1k_cifar"] == 100 and counts["vtab1k_caltech101"] == 102 and counts["vtab1k_sun397"] == 397
    assert counts["vtab1k_clevr_count"] == 8 and counts["vtab1k_smallnorb_azi"] == 18 and counts["vtab1k_kitti"] == 4
    assert (
        sum(counts.values())
        == 100 + 102 + 47 + 102 + 37 + 10 + 397 + 2 + 10 + 45 + 5 + 8 + 6 + 6 + 4 + 16 + 16 + 18 + 9
    )


def test_reads_the_rehosted_layout(vtab_data):
    ctx = LoadContext(vtab_data, verify=False)
    task = _task("vtab1k_cifar")
    train, val, test = (task.dataset(s, ctx) for s in ("train", "val", "test"))
    assert train.ids == [f"images/train800/{i:06d}.jpg" for i in range(4)] and len(val) == 2 and len(test) == 3
    assert train.labels.tolist() == _labels(100, 4, 0)  # not contiguous, not remapped
    assert train.image(0).size == (24, 20) and task.val_holdout is None
    assert task.data_config == {"crop_pct": 1.0, "crop_mode": "squash"}


def test_verify_checks_the_official_sizes(vtab_data):
    with pytest.raises(UserError, match=r"train800.txt lists 4 images, VTAB-1k's has 800.*--skip-verify"):
        _task("vtab1k_dtd").dataset("train", LoadContext(vtab_data))


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda b: (b / "val200.txt").unlink(), "val200.txt is missing (the folder has test.txt, train800.txt"),
        (lambda b: (b / "test.txt").write_text("images/test/000000.jpg 47\n"), "label 47 is outside 0..46"),
        (
            lambda b: (b / "test.txt").write_text("images/train800/000001.jpg 0\n"),
            "images/train800/000001.jpg is listed in both train800.txt and test.txt",
        ),
        (lambda b: (b / "train800val200.txt").write_text("images/x/0.jpg 1\n"), "train800's labels then val200's"),
        (lambda b: (b / "test.txt").write_text("images/test/000000.jpg\n"), "test.txt:1: expected"),
    ],
)
def test_damaged_data_is_one_line(tmp_path, damage, fragment):
    root = make_vtab(tmp_path, ["dtd"])
    damage(root / "vtab-1k" / "dtd")
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        _task("vtab1k_dtd").dataset("test", LoadContext(root, verify=False))


def test_noah_script_folder_names_are_accepted(tmp_path):
    root = make_vtab(tmp_path, ["cifar"])
    (root / "vtab-1k" / "cifar").rename(root / "vtab-1k" / "cifar100")
    assert len(_task("vtab1k_cifar").dataset("test", LoadContext(root, verify=False))) == 3


def test_the_vtab_protocol_is_the_tasks_default():
    task = _task("vtab1k_svhn")
    recipe = runner.resolve_recipe(task, MODES["lora"])
    assert recipe["preset"] == "vtab" and recipe["optimizer"] == "adamw" and recipe["batch_size"] == 64
    assert recipe["lr_grid"] == [3e-4, 1e-3, 3e-3] and recipe["weight_decay"] == 1e-4 and recipe["retrain"]
    assert recipe["steps"] == 1563 and recipe["augment"] is False and recipe["drop_path"] == 0.1
    vit = runner.resolve_recipe(task, MODES["lora"], preset="vit")  # chosen on purpose: the ViT paper's
    assert vit["preset"] == "vit" and vit["optimizer"] == "sgd" and vit["steps"] == 1563
    digits = runner.resolve_recipe(_task("digits"), MODES["full"], preset="vtab")  # any task can take it
    assert digits["preset"] == "vtab" and digits["steps"] == 200 and digits["optimizer"] == "adamw"


def test_the_square_resize_has_no_crop():
    from transfer_eval import checkpoints
    from transfer_eval.input import transforms

    reg = checkpoints.load_registry()
    _, cfg = checkpoints.build_model(reg["vit_demo"], 10, load_weights=False)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 40, 3), dtype=np.uint8))
    squashed = transforms.eval_transform(_task("vtab1k_dtd").input_config(cfg))(img)
    size = cfg["input_size"][-1]
    expected = img.resize((size, size), Image.BICUBIC if cfg["interpolation"] == "bicubic" else Image.BILINEAR)
    mean, std = np.array(cfg["mean"]), np.array(cfg["std"])
    want = (np.asarray(expected, np.float32) / 255 - mean) / std
    np.testing.assert_allclose(squashed.numpy().transpose(1, 2, 0), want, atol=1e-5)  # all of the image, no crop


def test_vtab1k_runs_every_task_and_the_leaderboard_gives_both_means(vtab_data, tmp_path):
    db = tmp_path / "r.sqlite"
    proc = cli(
        "run", "-c", "vit_demo", "-t", "vtab1k", "-m", "linear,attention,lora", "--data-dir", vtab_data,
        "--skip-verify", "--set", "steps=2", "--set", "warmup_steps=0", "--set", "lr_grid=[]",
        "--set", "batch_size=4", "--set", "c_grid=[1.0]", "--results", db, "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json_lines(proc.stdout)
    assert {(r["task"], r["mode"]) for r in rows} == {(t, m) for t in VTAB for m in ("linear", "attention", "lora")}
    assert all(r["status"] == "ok" and r["n_test"] == 3 for r in rows)
    assert {r["recipe"]["preset"] for r in rows if r["mode"] != "linear"} == {"vtab"}
    by = {(r["task"], r["mode"]): r["top1"] for r in rows}
    board = cli("leaderboard", "--group", "vtab1k", "--mean", "both", "--results", db, "--format", "json")
    assert board.returncode == 0, board.stderr
    for row in json_lines(board.stdout):
        parts = {p: np.mean([by[(t, row["mode"])] for t in ts]) for p, ts in groups.GROUPS["vtab1k"].parts}
        assert row["part_means"] == pytest.approx(parts)
        assert row["mean_tasks"] == pytest.approx(np.mean([by[(t, row["mode"])] for t in VTAB]))
        assert row["mean_of_groups"] == pytest.approx(np.mean(list(parts.values())))
        assert row["suite_bytes"] is not None  # the group's storage: one backbone, 19 deltas
    text = cli("leaderboard", "--group", "vtab1k", "--mean", "both", "--results", db).stdout
    assert "mean of 19 tasks (vtab1k)" in text and "mean of 3 groups (vtab1k)" in text and "Natural (7)" in text
    assert "as NOAH" in text and "as SSF" in text  # each convention named
    groups_only = cli("leaderboard", "--group", "vtab1k", "--mean", "groups", "--results", db, "--format", "json")
    for row in json_lines(groups_only.stdout):
        assert row["mean"] == row["mean_of_groups"] and row["mean_rule"] == "groups"
    one_missing = cli("leaderboard", "--group", "vtab1k", "-t", "vtab1k_kitti", "--results", db, "--sort", "mean")
    assert one_missing.returncode == 0


def test_the_paper_preset_lists_every_cell_with_printed_and_corrected_numbers():
    from transfer_eval import papers

    preset = papers.load("vtab1k-noah")
    assert len(preset.cells) == 9 * 19 and len(preset.runnable) == 8 * 19  # every row but NOAH's search
    assert {c.row for c in preset.cells if c.unrunnable} == {"NOAH"}
    full_flowers = preset.cell("", "Full", "Flw")
    assert full_flowers.published == 97.2 and full_flowers.published_printed == 87.2
    assert preset.cell("", "Linear", "C100").published_printed == 64.4
    assert preset.cell("", "NOAH", "KITTI").unrunnable and preset.cell("", "LoRA", "sEle").published == 44.0
    noah = [preset.cell("", "NOAH", c.column).published for c in preset.cells if c.row == "NOAH"]
    means = [np.mean(noah[:7]), np.mean(noah[7:11]), np.mean(noah[11:])]
    assert np.mean(means) == pytest.approx(75.48, abs=0.01) and np.mean(noah) == pytest.approx(73.25, abs=0.01)
    plan = cli("paper", "plan", "vtab1k-noah")
    assert plan.returncode == 0, plan.stderr
    assert "To run: 152 runs in 152 cells" in plan.stdout and "unknown size" not in plan.stdout
    # each Params gap with its reason beside it, from the preset's `params_note` (issue 43, item 4)
    lines = plan.stdout.splitlines()
    (vpt,) = [line for line in lines if line.startswith("  VPT-shallow: paper 0.08, ours 0.0077 (gap: ")]
    assert "per-task prompt lengths" in vpt and vpt.endswith(")")
    assert "  SSF: paper 0.21, ours 0.21" in lines  # no gap, nothing beside it


def test_every_mode_runs_on_a_vtab_task(vtab_data, tmp_path):
    modes = ("linear", "knn", "fewshot", "attention", "full", "ffn", "bitfit", "lora")
    proc = cli(
        "run", "-c", "vit_demo", "-t", "vtab1k_dtd", "-m", ",".join(modes), "--data-dir", vtab_data,
        "--skip-verify", "--seed", "0", "--set", "steps=1", "--set", "warmup_steps=0", "--set", "lr_grid=[]",
        "--set", "batch_size=4", "--set", "c_grid=[1.0]", "--set", "shots=[1]",
        "--results", tmp_path / "r.sqlite", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json_lines(proc.stdout)
    assert sorted(r["mode"] for r in rows) == sorted(modes) and all(r["status"] == "ok" for r in rows)


def test_a_group_name_stands_for_its_tasks_unless_a_task_has_that_name():
    assert groups.expand(["vtab1k", "digits"])[:2] == ["vtab1k_cifar", "vtab1k_caltech101"]
    assert len(groups.expand(["vtab1k", "digits", "vtab1k_dtd"])) == 20  # each task once
    assert groups.expand(["demo"], {"demo": object()}) == ["demo"]  # a plugin's task named like a group wins
