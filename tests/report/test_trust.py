"""What a leaderboard cell can be trusted to say (issue 40): its 95% interval against hand computations, ties with
the column's best against a worked McNemar + Holm example (label sets, a --limit run that is not compared), the
calibration view (--metric ece, lower first), show --plot's reliability diagram, and a store from before schema 4.
Every store here is written directly with Store.put: results with known predictions and probabilities."""

import csv
import io
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, cli, json_lines
from conftest import leaderboard_of as _board

from transfer_eval import report
from transfer_eval.report import intervals, site, ties
from transfer_eval.store.results import Result, Store

N = 40  # test images of the worked example
OLD_STORE = Path(__file__).parent.parent / "fixtures" / "store_f03c4aa.sqlite"  # written before schema 4


def _predictions(correct: np.ndarray):
    """The test split's label sets (N x 2, -1 padded: images 0-4 have a second right class) and a top-5 whose first
    prediction is right exactly where `correct` is: through the second class on images 0-4 (a scorer that read
    the first column alone would count them wrong)."""
    n = len(correct)
    first = np.arange(n) % 10
    second = np.where(np.arange(n) < 5, (first + 5) % 10, -1)
    top5 = (first[:, None] + np.arange(1, 6)[None, :]) % 10
    top5[correct, 0] = np.where(second >= 0, second, first)[correct]
    return np.stack([first, second], 1).astype(np.int32), top5.astype(np.int32)


def _put(store, ck, correct, seed=0, task="cifar10", manifest="full", limit=None, probs=None, **fields):
    correct = np.asarray(correct, bool)
    labels, top5 = _predictions(correct)
    r = Result(
        checkpoint=ck,
        weights_sha256="w" * 64,
        task=task,
        task_version=1,
        mode="linear",
        protocol_hash="p" * 16,
        seed=seed,
        top1=float(correct.mean()),
        top5=float(correct.mean()),
        n_test=len(correct),
        split_manifest=manifest,
        limit_per_split=limit,
        **fields,
    )
    store.put(r, labels, top5, probs)


def _right(*ranges, n=N) -> np.ndarray:
    c = np.zeros(n, bool)
    for a, b in ranges:
        c[a:b] = True
    return c


# ---------------------------------------------------------------------------------------------------- intervals


def test_wilson_and_student_t_against_hand_computations():
    # Wilson, 28 right of 40, z = 1.959964 (z^2 = 3.841459): centre (k + z^2/2) / (n + z^2) = 29.920729 / 43.841459
    # = 0.682476; half-width z sqrt(k (n - k) / n + z^2 / 4) / (n + z^2) = 1.959964 x sqrt(8.4 + 0.960365) / 43.841459
    # = 1.959964 x 3.059471 / 43.841459 = 0.136776
    lo, hi = intervals.wilson(28, 40)
    assert lo == pytest.approx(0.682476 - 0.136776, abs=2e-6) and hi == pytest.approx(0.682476 + 0.136776, abs=2e-6)
    # stays inside [0, 1] where the normal interval would not: 0 of 10
    assert intervals.wilson(0, 10)[0] == 0.0 and intervals.wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    # Student t of three seeds 0.80, 0.82, 0.84: std 0.02, t(0.975, 2) = 4.302653, half 4.302653 x 0.02 / sqrt(3)
    lo, hi = intervals.student_t([0.80, 0.82, 0.84])
    assert (lo, hi) == pytest.approx((0.82 - 0.0496828, 0.82 + 0.0496828), abs=1e-6)


@pytest.fixture(scope="module")
def worked(tmp_path_factory):
    """One column, cifar10, 40 test images. x: best, 30 right (seeds 0 and 1, the same answers); against it
    y: 3 only x gets right, 1 only y (b=3, c=1); w: b=6, c=0 (seed 1 only); z: b=9, c=0; v: a --limit run on
    20 other images, 19 right (the highest value, but on other test examples). A second task, cifar100, for the
    group mean: x 20 right of 40."""
    db = tmp_path_factory.mktemp("trust") / "results.sqlite"
    store = Store(db)
    x = _right((0, 30))
    for seed in (0, 1):
        _put(store, "x", x, seed)
    _put(store, "y", _right((3, 31)))  # wrong on 0..2, right on 30
    _put(store, "w", _right((6, 30)), seed=1)
    _put(store, "z", _right((9, 30)))
    _put(store, "v", _right((0, 19), n=20), manifest="limited", limit=10)
    for ck, right in (("x", 20), ("y", 20), ("w", 20), ("z", 20)):
        _put(store, ck, _right((0, right)), seed=1 if ck == "w" else 0, task="cifar100", manifest="full100")
    store.close()
    return db


def test_group_mean_interval_combines_the_tasks_standard_errors(worked):
    lb = _board(worked, tasks=["cifar10", "cifar100"])
    y = next(r for r in lb.rows if r.checkpoint == "y")
    (lo1, hi1), (lo2, hi2) = intervals.wilson(28, 40), intervals.wilson(20, 40)
    se = math.sqrt(((hi1 - lo1) / 2 / 1.96) ** 2 + ((hi2 - lo2) / 2 / 1.96) ** 2) / 2  # w = 1/2 each
    lo, hi = intervals.combined(y, "mean")
    assert (lo + hi) / 2 == pytest.approx((28 + 20) / 80) and (hi - lo) / 2 == pytest.approx(1.96 * se, rel=1e-4)
    assert report.display_row(y, lb.tasks)[2] == "70.00 [54.6, 81.9]"  # the Wilson interval above


def test_a_group_mean_interval_stays_inside_the_metrics_range(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    _put(store, "all", np.ones(N, bool))  # 40 of 40: Wilson [0.912, 1]; read as mean +- 1.96 se it overruns 1
    store.close()
    (row,) = _board(tmp_path / "r.sqlite", tasks=["cifar10"]).rows
    lo, hi = intervals.combined(row, "mean")
    assert hi == 1.0 and lo == pytest.approx(1 - (1 - intervals.wilson(40, 40)[0]) / 2)


# --------------------------------------------------------------------------------------------------------- ties


def test_ties_worked_example_mcnemar_and_holm(worked):
    lb = _board(worked, tasks=["cifar10"], include_limited=True)
    tie = {r.checkpoint: r.cells["cifar10"].tie for r in lb.rows}
    assert tie["x"].status == ties.BEST  # v's 95% was measured on 20 other images: it cannot lead the column
    # McNemar's exact p = 2 P(Binomial(b + c, 1/2) <= min(b, c)), the label sets' second classes counted:
    assert (tie["y"].b, tie["y"].c, tie["y"].p_value) == (3, 1, pytest.approx(2 * (1 + 4) / 2**4))  # 0.625
    assert (tie["w"].b, tie["w"].c, tie["w"].p_value) == (6, 0, pytest.approx(2 / 2**6))  # 0.03125
    assert (tie["z"].b, tie["z"].c, tie["z"].p_value) == (9, 0, pytest.approx(2 / 2**9))  # 0.00390625
    assert tie["w"].seeds == (1, 1) and tie["y"].seeds == (0, 0)  # the lowest seed both have
    # Holm over the column's three comparisons (v is not one): z x 3 = 0.0117; w x 2 = 0.0625; y x 1 = 0.625
    assert tie["z"].p_holm == pytest.approx(3 * 2 / 2**9) and tie["w"].p_holm == pytest.approx(0.0625)
    assert tie["y"].p_holm == pytest.approx(0.625)
    assert [tie[k].status for k in "ywz"] == [ties.TIED, ties.TIED, ties.NOT_TIED]  # w: p < 0.05, not after Holm
    assert tie["v"].status == ties.NOT_COMPARED and "split_manifest" in tie["v"].reason
    assert any(n.startswith("v / linear / cifar10: not compared") for n in lb.notes)  # said in the legend
    assert ties.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])

    lines = [ln.split("|") for ln in report.render(lb, "markdown").splitlines() if ln.startswith("|")][2:]
    md = {cols[1].strip(): cols[3].strip() for cols in lines}  # checkpoint: the cifar10 cell
    assert md["x"].startswith("**75.00 ± 0.00 (n=2)") and md["y"] == "**70.00 [54.6, 81.9]**"
    assert md["w"].startswith("**") and not md["z"].startswith("**") and not md["v"].startswith("**")
    table = report.render(lb, "table")
    body = table.split("\n\n")[0].splitlines()[2:]
    assert sorted(line.split()[0] for line in body if "≈" in line) == ["w", "x", "y"]
    latex = report.render(lb, "latex")
    assert r"\textbf{70.00 [54.6, 81.9]}" in latex and r"\textbf{52.50" not in latex
    rows = {r["checkpoint"]: r["tasks"]["cifar10"] for r in json_lines(report.render(lb, "json"))}
    assert {k: rows[k]["tied_with_best"] for k in "xywzv"} == dict(x=True, y=True, w=True, z=False, v=None)
    assert rows["z"]["p_vs_best"] == pytest.approx(2 / 2**9) and rows["v"]["tie"] == "not compared"
    assert rows["y"]["ci_low"] == pytest.approx(intervals.wilson(28, 40)[0]) and rows["y"]["ci"] == "wilson"
    table = {r["checkpoint"]: r for r in csv.DictReader(io.StringIO(report.render(lb, "csv")))}
    assert [table[k]["cifar10_tied_with_best"] for k in "xzv"] == ["True", "False", ""]
    assert float(table["y"]["cifar10_ci_high"]) == pytest.approx(intervals.wilson(28, 40)[1])
    html = report.render(lb, "html")
    assert "<strong>70.00</strong>" in html and 'class="ci"' in html and "<strong>52.50" not in html


# -------------------------------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """Three checkpoints with stored calibration (ECE 0.02, 0.10, 0.05 on cifar10) and one few-shot-like result
    without; `a` has probabilities: 40 images, top-1 confidence 0.9, 30 of them right (ECE |0.75 - 0.9| = 0.15)."""
    db = tmp_path_factory.mktemp("calibrated") / "results.sqlite"
    store = Store(db)
    probs = np.full((N, 6), 0.02)
    probs[:, 0] = 0.9
    curves = {"every": 5, "phases": {"lr 0.01": {"base_lr": 0.01, "loss": [2.0, 1.2], "lr": [0.01, 0.005],
                                                 "step": [5, 10], "val_top1": 0.7}}}  # fmt: skip
    for ck, ece, acc in (("a", 0.02, 30), ("b", 0.10, 32), ("c", 0.05, 28)):
        fields = dict(ece=ece, nll=10 * ece, temperature=1.5, ece_scaled=ece / 2, nll_scaled=5 * ece)
        _put(store, ck, _right((0, acc)), probs=probs if ck == "a" else None, curves=curves, **fields)
    _put(store, "d", _right((0, 35)))  # no calibration stored
    store.close()
    return db


def test_metric_ece_ranks_by_calibration_lower_first(calibrated):
    lb = _board(calibrated, metric="ece")
    assert [r.checkpoint for r in lb.rows] == ["a", "c", "b", "d"]  # d has none: last
    assert not lb.best_first("cifar10") and not lb.best_first("mean")
    shown = {r[0]: r[2] for r in report.display_table(lb)[1]}
    assert shown == {"a": "2.00", "c": "5.00", "b": "10.00", "d": "-"}  # one seed of ECE: no interval
    assert all(r.cells["cifar10"].tie is None for r in lb.rows)  # no ties for ECE
    assert "expected calibration error" in report.legend(lb)[0]
    rows = {r["checkpoint"]: r for r in json_lines(report.render(lb, "json"))}
    assert rows["b"]["tasks"]["cifar10"]["ece_scaled"] == pytest.approx(0.05) and rows["b"]["metric"] == "ece"
    assert rows["d"]["tasks"]["cifar10"]["value"] is None and rows["d"]["mean"] is None
    proc = cli("leaderboard", "--metric", "nll", "--format", "csv", "--results", calibrated)
    assert proc.returncode == 0, proc.stderr
    table = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["checkpoint"] for r in table] == ["a", "c", "b", "d"] and table[0]["metric"] == "nll"
    assert float(table[2]["cifar10"]) == pytest.approx(1.0) and float(table[2]["cifar10_nll_scaled"]) == 0.5
    assert table[3]["cifar10"] == "" and table[3]["cifar10_n"] == "0"
    assert _board(calibrated).rows[0].checkpoint == "d"  # top-1 (the default): highest first
    store = Store(calibrated)  # the html report's calibration section: the ece view, lowest first
    section = "".join(site._calibration_section(store, None, (), (), ()))
    store.close()
    assert 'id="calibration"' in section and [section.index(f'data-checkpoint="{k}"') for k in "acbd"] == sorted(
        section.index(f'data-checkpoint="{k}"') for k in "acbd"
    )


def test_show_plot_draws_the_reliability_diagram_or_says_why_not(calibrated, tmp_path):
    from transfer_eval.report import reliability

    store = Store(calibrated)
    run = next(r for r in store.query() if r.checkpoint == "a")
    probs, predictions = store.probabilities(run.run_id), store.predictions(run.run_id)
    store.close()
    out = tmp_path / "a.png"
    proc = cli("show", run.run_id, "--plot", out, "--results", calibrated)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and proc.stderr.strip() == f"wrote {out}"
    assert "temperature" in proc.stdout and "1.5" in proc.stdout and "40 x 6" in proc.stdout
    plt = reliability._figure()
    fig, ax = plt.subplots()
    assert reliability.draw_reliability(ax, run, probs, *predictions) == pytest.approx(0.15, abs=1e-3)
    plt.close(fig)
    b = next(r for r in Store(calibrated).query() if r.checkpoint == "b")  # curves, no probabilities
    lines = reliability.plot_run(b, tmp_path / "b.png")
    assert (tmp_path / "b.png").exists() and len(lines) == 1 and "no stored test probabilities" in lines[0]


def test_a_store_from_before_schema_4_reads_and_shows_a_dash(tmp_path):
    db = tmp_path / "old.sqlite"
    shutil.copy(OLD_STORE, db)
    lb = _board(db, modes=["linear", "knn"], metric="ece")
    assert [report.display_row(r, lb.tasks)[2] for r in lb.rows] == ["-", "-"]
    lb = _board(db, modes=["linear", "knn"])
    linear = next(r for r in lb.rows if r.mode == "linear").cells["digits"]
    assert linear.tie.status == ties.BEST and intervals.kind(linear) == intervals.WILSON  # 507 of 539 right
    assert intervals.cell(linear) == pytest.approx(intervals.wilson(507, 539))
    assert next(r for r in lb.rows if r.mode == "knn").cells["digits"].tie.p_value is not None
    assert_one_line_error(cli("show", "1", "--plot", tmp_path / "x.png", "--results", db), "nothing to draw")
    proc = cli("show", "15", "--plot", tmp_path / "bitfit.png", "--results", db)  # curves, no probabilities
    assert proc.returncode == 0 and "no reliability diagram" in proc.stderr, proc.stderr
    assert_one_line_error(
        cli("leaderboard", "--metric", "ece", "--plot", tmp_path / "p.png", "--results", db), "--plot"
    )
