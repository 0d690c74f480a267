"""Effective robustness (report/robustness.py): the shipped testbed's lines against numpy.polyfit and against the
coefficients computed for orientation (shift.md), ER against a hand computation, the leaderboard's ER columns (csv,
json, every format, the sort key), compare's ER difference, `--line stored`, the plot, and the presets that the
ImageNet shift sets make runnable (vit-table5's ReaL, timm-imagenet)."""

import csv
import io
import json
import math

import numpy as np
import pytest
from conftest import assert_one_line_error, cli, json_lines

from transfer_eval import papers, report
from transfer_eval.errors import UserError
from transfer_eval.report import robustness
from transfer_eval.store.results import Result, Store

TIMM = {"imagenetv2_matched_frequency": "v2", "imagenet_sketch": "sketch", "imagenet_a": "a", "imagenet_r": "r"}
# shift.md's orientation table (a, b): fitted with the models paired by name alone, where timm lists 290 models at
# two input sizes; the shipped lines pair (model, img_size), so they differ a little
ORIENTATION = {
    "imagenet_r": (1.394, -2.168),
    "imagenet_sketch": (1.380, -2.722),
    "imagenet_a": (3.702, -6.761),
    "imagenetv2_matched_frequency": (0.917, -0.486),
}


def _rows(name: str) -> list[dict]:
    text = (robustness.TESTBEDS / f"{name}.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))


def _polyfit(rows, column):
    pts = np.array([(float(r["val"]), float(r[column])) for r in rows if r["val"] and r[column]]) / 100
    pts = pts[(pts > 0).all(1) & (pts < 1).all(1)]
    lg = np.log(pts / (1 - pts))
    return (*np.polyfit(lg[:, 0], lg[:, 1], 1), len(pts))


def test_the_lines_are_least_squares_on_logits_over_the_shipped_testbeds():
    meta, _ = robustness.testbed("timm")
    assert meta["commit"] == "aa4b5850" and meta["date"] == "2026-08-08"
    rows = _rows("timm")
    assert len(rows) == 1556 and len({(r["model"], r["img_size"]) for r in rows}) == 1556
    for task, col in TIMM.items():
        line = robustness.testbed_line(task)
        a, b, n = _polyfit(rows, col)
        assert (line.a, line.b, line.n) == (pytest.approx(a, abs=1e-9), pytest.approx(b, abs=1e-9), n)
        assert n == (1555 if task == "imagenet_a" else 1556)  # resnet50.tv_in1k has no ImageNet-A result
        assert line.a == pytest.approx(ORIENTATION[task][0], rel=0.03)
        assert line.b == pytest.approx(ORIENTATION[task][1], rel=0.03)
    on = robustness.testbed_line("objectnet")  # Taori et al.'s standard-training models: timm has no ObjectNet
    a, b, n = _polyfit(_rows("objectnet"), "objectnet")
    assert (on.a, on.b, on.n) == (pytest.approx(a, abs=1e-9), pytest.approx(b, abs=1e-9), 85)
    assert robustness.testbed("objectnet")[0]["commit"] == "f4083a29"


def test_effective_robustness_against_a_hand_computation():
    line = robustness.Line("imagenet_r", a=1.5, b=-1.0, source="hand")
    # y - sigmoid(1.5 * ln(0.8 / 0.2) - 1) at x = 0.8: 1.5 * 1.386294 - 1 = 1.079442; sigmoid = 0.746388
    assert float(line.at(0.8)) == pytest.approx(0.746388, abs=1e-6)
    runs = [_result("c", "imagenet_r", "full", 0.5, seed=0, run_id=10), _result("c", "imagenet_r", "full", 0.6, 1, 11)]
    xs = [_result("c", "imagenet1k", "full", 0.8, seed=0, run_id=1), _result("c", "imagenet1k", "full", 0.7, 1, 2)]
    e = robustness.effective(runs, robustness.Partners(xs), line)
    by_hand = [
        0.5 - 1 / (1 + math.exp(-(1.5 * math.log(0.8 / 0.2) - 1))),
        0.6 - 1 / (1 + math.exp(-(1.5 * math.log(0.7 / 0.3) - 1))),
    ]
    assert e.values == pytest.approx(by_hand) and e.value == pytest.approx(np.mean(by_hand)) and e.n == 2
    # a companion's record names the run that trained its model: that run is its partner, whatever the seed says
    named = _result("c", "imagenet_r", "full", 0.5, seed=0, run_id=12, trained_by=2)
    assert robustness.effective([named], robustness.Partners(xs), line).values == pytest.approx([by_hand[1] - 0.1])


# ------------------------------------------------------------------------------------------- a synthetic store

N = 200


def _result(ck, task, mode, acc, seed=0, run_id=None, trained_by=None, **kw) -> Result:
    r = Result(
        checkpoint=ck, weights_sha256="w" * 64, task=task, task_version=1, mode=mode, protocol_hash="p" * 16,
        seed=seed, top1=acc, n_test=N, split_manifest=f"manifest-{task}", run_id=run_id, params_per_task=1000,
        selection={"model_of_run": trained_by} if trained_by else None, **kw,
    )  # fmt: skip
    return r


def _put(store, ck, task, mode, acc, seed=0):
    correct = np.zeros(N, bool)
    correct[: round(acc * N)] = True
    labels = (np.arange(N) % 10).astype(np.int32)
    top5 = ((labels[:, None] + np.arange(1, 6)[None, :]) % 10).astype(np.int32)
    top5[correct, 0] = labels[correct]
    store.put(_result(ck, task, mode, float(correct.mean()), seed), labels, top5)


# (checkpoint, mode) -> {task: top-1 per seed}; beta/linear has no imagenet1k result: its ER is missing
STORED = {
    ("alpha", "full"): {"imagenet1k": [0.80, 0.82], "imagenet_r": [0.40, 0.45], "imagenet_sketch": [0.30, 0.31]},
    ("beta", "full"): {"imagenet1k": [0.75], "imagenet_r": [0.42], "imagenet_sketch": [0.20]},
    ("beta", "linear"): {"imagenet_r": [0.30], "imagenet_sketch": [0.10]},
}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("robust") / "results.sqlite"
    store = Store(path)
    for (ck, mode), tasks in STORED.items():
        for task, accs in tasks.items():
            for seed, acc in enumerate(accs):
                _put(store, ck, task, mode, acc, seed)
    store.close()
    return path


def _er(task: str, xs, ys) -> float:
    """The mean over seeds of y - sigmoid(a logit(x) + b), the line from numpy.polyfit over the testbed."""
    a, b, _ = _polyfit(_rows("timm"), TIMM[task])
    return float(np.mean([y - 1 / (1 + math.exp(-(a * math.log(x / (1 - x)) + b))) for x, y in zip(xs, ys)]))


def _want(key, task) -> float | None:
    """A row's ER on `task` by hand; None where it has no imagenet1k result."""
    runs = STORED[key]
    return _er(task, runs["imagenet1k"], runs[task]) if "imagenet1k" in runs else None


def _board(db, **kw):
    store = Store(db)
    try:
        return report.leaderboard(store, **{"tasks": ["imagenet1k", "imagenet_r", "imagenet_sketch"], **kw})
    finally:
        store.close()


def test_the_leaderboard_carries_each_shift_sets_effective_robustness_in_every_format(db):
    lb = _board(db)
    assert lb.er_columns == ["imagenet_r_effective_robustness", "imagenet_sketch_effective_robustness"]
    want = {key: {t: _want(key, t) for t in ("imagenet_r", "imagenet_sketch")} for key in STORED}
    rows = {(r["checkpoint"], r["mode"]): r for r in csv.DictReader(io.StringIO(report.render(lb, "csv")))}
    for key, ers in want.items():
        for task, value in ers.items():
            got = rows[key][f"{task}_effective_robustness"]
            assert (got == "") if value is None else float(got) == pytest.approx(value, abs=1e-9)
    for row in json_lines(report.render(lb, "json")):
        expected = want[(row["checkpoint"], row["mode"])]
        assert set(row["effective_robustness"]) == {"imagenet_r", "imagenet_sketch"}
        for task, value in expected.items():
            assert row["effective_robustness"][task] == (None if value is None else pytest.approx(value, abs=1e-9))
        assert row["effective_robustness_line"]["imagenet_r"]["models"] == 1556
    alpha_r = f"{100 * want['alpha', 'full']['imagenet_r']:+.2f}"
    for fmt in ("table", "markdown", "latex", "html"):
        text = report.render(lb, fmt)
        header = {"latex": "imagenet\\_r ER", "html": 'data-key="imagenet_r_effective_robustness"'}.get(
            fmt, "imagenet_r ER"
        )
        assert header in text and alpha_r in text and "arXiv 2007.00644" in text, fmt
    frame = lb.to_frame().set_index(["checkpoint", "mode"])
    assert frame.loc[("beta", "full"), "imagenet_r_effective_robustness"] == pytest.approx(
        want["beta", "full"]["imagenet_r"]
    )


def test_effective_robustness_is_a_sort_key_best_first_missing_last(db):
    order = [(r.checkpoint, r.mode) for r in _board(db, sort="imagenet_sketch_effective_robustness").rows]
    ers = {
        k: _er("imagenet_sketch", STORED[k]["imagenet1k"], STORED[k]["imagenet_sketch"])
        for k in STORED
        if "imagenet1k" in STORED[k]
    }
    assert order == sorted(ers, key=ers.get, reverse=True) + [("beta", "linear")]  # fmt: skip
    ascending = [(r.checkpoint, r.mode) for r in _board(db, sort="imagenet_sketch_effective_robustness:asc").rows]
    assert ascending == sorted(ers, key=ers.get) + [("beta", "linear")]


def test_compare_gives_the_difference_in_effective_robustness(db):
    store = Store(db)
    try:
        cmp = report.compare(store, ["alpha", "beta"], modes=["full"], resamples=20)
    finally:
        store.close()
    rows = {r.task: r for r in cmp.rows}
    assert rows["imagenet1k"].d_effective_robustness is None  # not a shift set
    for task in ("imagenet_r", "imagenet_sketch"):  # seed 0 on both sides: the lowest seed both have
        er_a, er_b = (
            _er(task, [0.80], [STORED["alpha", "full"][task][0]]),
            _er(task, [0.75], [STORED["beta", "full"][task][0]]),
        )
        assert rows[task].d_effective_robustness == pytest.approx(er_b - er_a, abs=1e-9)  # fmt: skip
        assert rows[task].er_a == pytest.approx(er_a, abs=1e-9)
    text = report.compare_text(cmp)
    assert "d ER pp" in text and f"{100 * rows['imagenet_r'].d_effective_robustness:+.2f}" in text
    assert json.loads(report.compare_json(cmp).splitlines()[-1])["d_effective_robustness"] is not None


def test_a_stored_line_needs_five_checkpoints_and_is_fitted_on_them(db, tmp_path):
    proc = cli("leaderboard", "-t", "imagenet1k,imagenet_r", "--line", "stored", "--results", db)
    assert_one_line_error(proc, "--line stored", "at least 5 checkpoints", "has 0", "--line testbed")
    path = tmp_path / "pretrained.sqlite"
    store = Store(path)
    points = [(0.70, 0.30), (0.75, 0.36), (0.80, 0.41), (0.83, 0.47), (0.86, 0.52)]
    for i, (x, y) in enumerate(points):
        _put(store, f"ck{i}", "imagenet1k", "pretrained", x)
        _put(store, f"ck{i}", "imagenet_r", "pretrained", y)
    line = robustness.lines(store, ["imagenet_r"], "stored")["imagenet_r"]
    store.close()
    lg = np.log(np.array(points) / (1 - np.array(points)))
    assert (line.a, line.b) == pytest.approx(tuple(np.polyfit(lg[:, 0], lg[:, 1], 1))) and line.n == 5
    lb = _board(path, tasks=["imagenet_r"], line="stored")
    assert lb.rows[0].robustness["imagenet_r"] is not None and lb.robustness["imagenet_r"].source.startswith("stored")


def test_the_robustness_plot_is_written(db, tmp_path):
    from transfer_eval.report import site

    section = "".join(site._robustness_section(_board(db), tmp_path))  # report --html's section: the plot beside
    assert 'id="robustness"' in section and '<img src="robustness.png"' in section
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert site._robustness_section(_board(db, tasks=["imagenet1k"]), tmp_path / "none") == []
    with pytest.raises(UserError, match="no shift set among the task columns shown"):
        report.plot_robustness(_board(db, tasks=["imagenet1k"]), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


# --------------------------------------------------------------------------------------------------- presets


def test_vit_table5s_real_column_is_planned_and_timm_imagenet_resolves_against_the_testbed():
    import timm

    vit = papers.load("vit-table5")
    real = [c for c in vit.cells if c.column == "ReaL"]
    assert {c.row for c in real if c.unrunnable is None} == {f"ImageNet-21k ViT-{s}" for s in ("B/16", "L/16", "H/14")}
    assert all(c.runs[0].task.name == "imagenet_real" for c in real if c.runs)
    preset = papers.load("timm-imagenet")
    assert preset.where.startswith("https://github.com/huggingface/pytorch-image-models") and not preset.arxiv
    assert [p.columns for p in preset.parts] == [["val", "ReaL", "v2", "Sketch", "A", "R"]]
    assert len(preset.runnable) == len(preset.cells) == 15 * 6
    tasks = {"val": "imagenet1k", "ReaL": "imagenet_real", "v2": "imagenetv2_matched_frequency"}
    tasks |= {"Sketch": "imagenet_sketch", "A": "imagenet_a", "R": "imagenet_r"}
    columns = {"val": "val", "ReaL": "real", "v2": "v2", "Sketch": "sketch", "A": "a", "R": "r"}
    testbed = {(r["model"], r["img_size"]): r for r in _rows("timm")}
    for cell in preset.cells:
        run = cell.runs[0]
        assert run.mode.name == "pretrained" and run.task.name == tasks[cell.column]
        cfg = timm.models.get_pretrained_cfg(run.checkpoint.model).to_dict()  # what `pretrained` evaluates with
        row = testbed[(run.checkpoint.model, str(cfg["input_size"][-1]))]  # timm's row at the same input size
        assert (float(row["crop_pct"]), row["interpolation"]) == (cfg["crop_pct"], cfg["interpolation"])
        assert cell.published == float(row[columns[cell.column]]) and cfg["num_classes"] == 1000
