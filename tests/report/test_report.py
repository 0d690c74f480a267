"""Leaderboard, compare and the html report: every format parsed back, the statistics against known cases, the
missing-cell rules, and the report opened in a real (headless) browser."""

import csv
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, cli, json_lines
from conftest import leaderboard_of as _board
from scipy.stats import binomtest

from transfer_eval import report
from transfer_eval.errors import UserError
from transfer_eval.store.results import Result, Store

PAPER6 = ("inat2018", "inat2019", "cifar10", "cifar100", "stanford_cars", "flowers102")
CLASSES = {"inat2018": 8142, "inat2019": 1010, "cifar10": 10, "cifar100": 100, "stanford_cars": 196, "flowers102": 102}
BACKBONE = 10_000  # parameters of the fake backbone
N = 100  # test examples per task


def _predictions(correct: np.ndarray, classes: int = 10):
    """labels and a top-5 whose first entry is right exactly where `correct` is."""
    labels = (np.arange(len(correct)) % classes).astype(np.int32)
    top5 = (labels[:, None] + np.arange(1, 6)[None, :]) % max(classes, 6)
    top5[correct, 0] = labels[correct]
    return labels, top5.astype(np.int32)


def _correct(acc: float, n: int = N, rng=None) -> np.ndarray:
    """Exactly round(acc * n) right answers, placed at random (or first, without rng)."""
    c = np.zeros(n, bool)
    c[: round(acc * n)] = True
    return rng.permutation(c) if rng is not None else c


def put(
    store,
    checkpoint,
    task,
    mode,
    acc=None,
    seed=0,
    correct=None,
    protocol="p" * 16,
    manifest=None,
    per_task=None,
    pflops=1.0,
):
    correct = _correct(acc) if correct is None else correct
    head = CLASSES.get(task, 10) * 11
    per_task = (
        {"linear": head, "attention": 3000 + head, "full": BACKBONE + head}[mode] if per_task is None else per_task
    )
    labels, top5 = _predictions(correct)
    r = Result(
        checkpoint=checkpoint,
        weights_sha256="w" * 64,
        task=task,
        task_version=1,
        mode=mode,
        protocol_hash=protocol,
        seed=seed,
        top1=float(correct.mean()),
        n_test=len(correct),
        split_manifest=manifest or f"manifest-{task}",
        params_total=BACKBONE + head,
        params_trainable=per_task,
        params_per_task=per_task,
        bytes_per_task=4 * per_task + 96,
        train_pflops_total=pflops,
        fwd_gflops_per_image=0.5 if checkpoint in ("alpha", "ref") else 0.7,
    )
    store.put(r, labels, top5)
    return r


# alpha/linear: all six, cifar10 with three seeds; alpha/attention: all six; beta/linear: no inat2019;
# beta/attention: all six, cifar100 stored under two protocols (the newer one counts).
ACC = {
    ("alpha", "linear"): dict(zip(PAPER6, (0.30, 0.40, 0.80, 0.60, 0.50, 0.90))),
    ("alpha", "attention"): dict(zip(PAPER6, (0.50, 0.55, 0.95, 0.80, 0.70, 0.97))),
    ("beta", "linear"): dict(zip(PAPER6, (0.35, None, 0.85, 0.65, 0.45, 0.92))),
    ("beta", "attention"): dict(zip(PAPER6, (0.52, 0.57, 0.96, 0.60, 0.75, 0.98))),
}
CIFAR10_SEEDS = (0.80, 0.82, 0.84)


@pytest.fixture(scope="module")
def board_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("board") / "results.sqlite"
    store = Store(db)
    put(store, "beta", "cifar100", "attention", 0.10, protocol="o" * 16, pflops=9.0)  # older protocol
    for (ck, mode), accs in ACC.items():
        for task, acc in accs.items():
            if acc is None:
                continue
            if (ck, mode, task) == ("alpha", "linear", "cifar10"):
                for seed, a in enumerate(CIFAR10_SEEDS):
                    put(store, ck, task, mode, a, seed=seed, pflops=2.0 + seed)
            else:
                put(store, ck, task, mode, acc, pflops=1.0 if mode == "linear" else 10.0)
    store.put(
        Result(
            checkpoint="beta",
            weights_sha256="w" * 64,
            task="cifar10",
            task_version=1,
            mode="full",
            protocol_hash="p" * 16,
            seed=0,
            status="failed",
            error="diverged",
        )
    )  # never shown
    store.close()
    return db


def _expected_mean(ck, mode):
    accs = dict(ACC[(ck, mode)])
    if (ck, mode) == ("alpha", "linear"):
        accs["cifar10"] = np.mean(CIFAR10_SEEDS)
    return float(np.mean(list(accs.values())))


# ------------------------------------------------------------------------------------------------ leaderboard


def test_cells_mean_std_missing_and_incomplete_group(board_db):
    lb = _board(board_db, group="paper6")
    assert lb.tasks == list(PAPER6)
    rows = {(r.checkpoint, r.mode): r for r in lb.rows}
    assert set(rows) == set(ACC)  # the failed beta/full run makes no row
    c = rows[("alpha", "linear")].cells["cifar10"]
    assert c.n == 3 and c.top1 == pytest.approx(0.82) and c.std == pytest.approx(0.02)  # ddof=1
    assert rows[("alpha", "linear")].mean == pytest.approx(_expected_mean("alpha", "linear"))
    beta = rows[("beta", "linear")]
    assert beta.cells["inat2019"] is None
    assert not beta.complete and beta.mean is None and beta.present == 5
    assert beta.suite_bytes is None and beta.train_pflops is None
    assert report.display_row(beta, lb.tasks)[3] == "missing"
    assert report.display_row(beta, lb.tasks)[8] == "incomplete (5/6)"


def test_newest_protocol_counts_and_is_noted(board_db):
    lb = _board(board_db, group="paper6")
    row = next(r for r in lb.rows if (r.checkpoint, r.mode) == ("beta", "attention"))
    cell = row.cells["cifar100"]
    assert cell.top1 == pytest.approx(0.60) and cell.n == 1 and cell.n_setups == 2
    assert row.train_pflops == pytest.approx(60.0)  # the old protocol's 9 PFLOPs are not counted
    assert any("beta / attention / cifar100: 2 setups" in n for n in lb.notes)
    assert report.acc_text(cell).endswith("*")


def test_suite_storage_and_compute(board_db):
    lb = _board(board_db, group="paper6")
    row = next(r for r in lb.rows if (r.checkpoint, r.mode) == ("alpha", "attention"))
    heads = [CLASSES[t] * 11 for t in PAPER6]
    shared = BACKBONE * 4 - 3000 * 4  # params_total - params_per_task, same for every task, fp32
    deltas = sum(4 * (3000 + h) + 96 for h in heads)
    copies = sum(4 * (BACKBONE + h) for h in heads)
    assert row.suite_bytes == shared + deltas and row.full_copies_bytes == copies
    assert row.storage_ratio == pytest.approx((shared + deltas) / copies)
    assert row.params_per_task == pytest.approx(np.mean([3000 + h for h in heads]))
    assert row.train_pflops == pytest.approx(60.0)
    lin = next(r for r in lb.rows if (r.checkpoint, r.mode) == ("alpha", "linear"))
    assert lin.train_pflops == pytest.approx(5 * 1.0 + 3.0)  # cifar10: mean over its seeds (2, 3, 4)


def test_default_group_is_the_columns_shown(board_db):
    lb = _board(board_db, tasks=["cifar10", "cifar100"])
    assert lb.group.name == "all" and lb.group.tasks == ("cifar10", "cifar100")
    assert all(r.complete for r in lb.rows)
    # with a named group, -t picks the columns and the mean stays over the whole group
    lb = _board(board_db, tasks=["cifar10"], group="paper6")
    assert lb.tasks == ["cifar10"] and lb.group.name == "paper6"
    assert next(r for r in lb.rows if r.checkpoint == "beta" and r.mode == "linear").mean is None


def test_sorting_keeps_missing_last(board_db):
    lb = _board(board_db, group="paper6")
    assert [(r.checkpoint, r.mode) for r in lb.rows][-1] == ("beta", "linear")  # incomplete mean last
    assert lb.rows[0].mean >= lb.rows[1].mean >= lb.rows[2].mean
    for sort in ("inat2019", "inat2019:asc", "inat2019:desc", "mean:asc", "suite_bytes", "train_pflops:desc"):
        lb = _board(board_db, group="paper6", sort=sort)
        assert (lb.rows[-1].checkpoint, lb.rows[-1].mode) == ("beta", "linear"), sort
    lb = _board(board_db, group="paper6", sort="inat2019:asc")
    assert [r.cells["inat2019"].top1 for r in lb.rows[:3]] == sorted(r.cells["inat2019"].top1 for r in lb.rows[:3])
    lb = _board(board_db, group="paper6", sort="checkpoint")
    assert [r.checkpoint for r in lb.rows] == ["alpha", "alpha", "beta", "beta"]
    with pytest.raises(UserError, match="unknown sort column 'meen'; did you mean 'mean'"):
        _board(board_db, sort="meen")
    with pytest.raises(UserError, match="unknown task group"):
        _board(board_db, group="paper7")


def _fixed_width(text: str) -> list[list[str]]:
    """Parse tabulate's plain table by the column extents of its dashed rule."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip() and set(line) <= {"-", " "})
    starts = [m.start() for m in re.finditer(r"-+", lines[rule])] + [None]
    body = [lines[rule - 1]]
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        body.append(line)
    return [[line[a:b].strip() for a, b in zip(starts, starts[1:])] for line in body]


def _markdown(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    parsed = [[re.sub(r"\\([|*])", r"\1", c.strip()) for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in rows]
    return [parsed[0]] + parsed[2:]  # drop the |---| rule


def _latex(text: str) -> list[list[str]]:
    rows = [line.rstrip().removesuffix(r"\\").strip() for line in text.splitlines() if line.rstrip().endswith(r"\\")]
    return [[c.strip() for c in re.split(r"(?<!\\)&", row)] for row in rows]


class _Tables(HTMLParser):
    """Every table: rows of (text, attributes) cells."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell, self.imgs = [], None, []

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"attrs": dict(attrs), "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self.cell = [dict(attrs), ""]
        elif tag == "img":
            self.imgs.append(dict(attrs))

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1]["rows"][-1].append((self.cell[1].strip(), self.cell[0]))
            self.cell = None


def _html(text: str) -> list[list[str]]:
    p = _Tables()
    p.feed(text)
    return [[c[0] for c in row] for row in p.tables[0]["rows"]]


def _check_display(rows: list[list[str]], unescape=lambda s: s, ci=True):
    """The rows as shown; `ci`: each cell and mean carries its 95% interval in the text (html draws a bar)."""
    header, body = rows[0], {(r[0], r[1]): r for r in rows[1:]}
    header = [unescape(h) for h in header]
    assert header[:8] == ["checkpoint", "mode", *PAPER6]
    assert header[8] == "mean (paper6)"
    assert len(body) == 4 and all(len(r) == len(header) for r in body.values())
    col = {h: i for i, h in enumerate(header)}
    alpha = [unescape(c) for c in body[("alpha", "linear")]]
    # three seeds: mean ± std (n) [Student-t: 82 ± t(0.975, 2) = 4.303 x 2 / sqrt(3) = 4.97]
    assert re.fullmatch(r"82\.00 ± 2\.00 \(n=3\)" + (r" \[77\.0, 87\.0\]" if ci else ""), alpha[col["cifar10"]])
    mean = alpha[col["mean (paper6)"]]
    assert float(mean.split()[0]) == pytest.approx(100 * _expected_mean("alpha", "linear"), abs=0.006)
    assert bool(re.fullmatch(r"\S+ \[\d+\.\d, \d+\.\d\]", mean)) == ci
    beta = [unescape(c) for c in body[("beta", "linear")]]
    assert beta[col["inat2019"]] == "missing"  # never 0
    assert beta[col["mean (paper6)"]] == "incomplete (5/6)"
    assert beta[col["train PFLOPs"]] == beta[col["suite storage"]] == "incomplete"
    one_seed = "60.00 [50.2, 69.1] *" if ci else "60.00 *"  # the Wilson interval of 60 right out of 100
    assert [unescape(c) for c in body[("beta", "attention")]][col["cifar100"]] == one_seed
    return header, body


@pytest.mark.parametrize("fmt", ["table", "markdown", "latex", "html"])
def test_display_formats_parse_back(board_db, fmt):
    text = report.render(_board(board_db, group="paper6"), fmt)
    if fmt == "table":
        _check_display(_fixed_width(text))
    elif fmt == "markdown":
        _check_display(_markdown(text))
    elif fmt == "latex":
        assert text.startswith(r"\begin{tabular}") and r"\end{tabular}" in text
        _check_display(_latex(text), lambda s: s.replace(r"$\pm$", "±").replace(r"\_", "_"))
    else:
        assert text.startswith("<!DOCTYPE html>") and "<script>" in text and "http" not in text.split("<body>")[1]
        _check_display(_html(text), ci=False)


def test_csv_parses_back(board_db):
    rows = list(csv.DictReader(io.StringIO(report.render(_board(board_db, group="paper6"), "csv"))))
    by = {(r["checkpoint"], r["mode"]): r for r in rows}
    a = by[("alpha", "linear")]
    assert float(a["cifar10"]) == pytest.approx(0.82) and float(a["cifar10_std"]) == pytest.approx(0.02)
    assert a["cifar10_n"] == "3" and a["complete"] == "True" and a["group"] == "paper6"
    assert float(a["mean"]) == pytest.approx(_expected_mean("alpha", "linear"))
    b = by[("beta", "linear")]
    assert b["inat2019"] == "" and b["inat2019_n"] == "0"  # missing, not zero accuracy
    assert b["mean"] == "" and b["complete"] == "False" and b["tasks_present"] == "5"
    assert b["suite_bytes"] == "" and b["train_pflops"] == ""
    assert "2 setups" in by[("beta", "attention")]["notes"]


def test_json_parses_back(board_db):
    rows = json_lines(report.render(_board(board_db, group="paper6"), "json"))
    by = {(r["checkpoint"], r["mode"]): r for r in rows}
    a = by[("alpha", "linear")]
    assert a["tasks"]["cifar10"]["top1"] == pytest.approx(0.82) and a["tasks"]["cifar10"]["n"] == 3
    assert a["tasks"]["cifar10"]["seeds"] == [0, 1, 2]
    assert a["tasks"]["cifar10"]["params_per_task"] == 110 and a["tasks"]["inat2018"]["params_per_task"] == 8142 * 11
    assert a["complete"] and a["mean"] == pytest.approx(_expected_mean("alpha", "linear"))
    b = by[("beta", "linear")]
    assert b["tasks"]["inat2019"] is None and b["mean"] is None and b["complete"] is False
    assert b["mean_partial"] == pytest.approx(np.mean([0.35, 0.85, 0.65, 0.45, 0.92]))
    assert by[("beta", "attention")]["tasks"]["cifar100"]["n_setups"] == 2


# --------------------------------------------------------------------------------------------- statistics


def test_identical_predictions_give_zero_and_p_one():
    c = _correct(0.7, 300, np.random.default_rng(1))
    s = report.paired_stats(c, c.copy())
    assert s["delta"] == 0 and s["ci_low"] == 0 and s["ci_high"] == 0 and s["p_value"] == 1.0
    assert s["b"] == s["c"] == 0 and report.verdict(s["delta"], s["p_value"]) == "tie"


def test_planted_difference_is_significant_and_matches_scipy():
    rng = np.random.default_rng(2)
    a = _correct(0.6, 1000, rng)
    b = a.copy()
    wrong = np.flatnonzero(~a)
    b[wrong[:80]] = True  # B fixes 80 of A's errors ...
    b[np.flatnonzero(a)[:10]] = False  # ... and breaks 10 of its right answers
    s = report.paired_stats(a, b, resamples=2000)
    assert (s["b"], s["c"]) == (10, 80)
    assert s["delta"] == pytest.approx(0.07)
    assert s["p_value"] == pytest.approx(binomtest(10, 90, 0.5).pvalue) and s["p_value"] < 1e-10
    assert 0 < s["ci_low"] < 0.07 < s["ci_high"]
    assert report.verdict(s["delta"], s["p_value"]) == "win"
    r = report.paired_stats(b, a, resamples=2000)  # the other way round
    assert r["delta"] == pytest.approx(-0.07) and r["p_value"] == s["p_value"]
    assert report.verdict(r["delta"], r["p_value"]) == "loss"


def test_mcnemar_equals_binomtest_on_discordant_counts():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(20, 400))
        a, b = rng.random(n) < rng.uniform(0.3, 0.9), rng.random(n) < rng.uniform(0.3, 0.9)
        s = report.paired_stats(a, b, resamples=200)
        nb, nc = int(np.sum(a & ~b)), int(np.sum(~a & b))
        assert (s["b"], s["c"]) == (nb, nc)
        expected = 1.0 if nb + nc == 0 else binomtest(min(nb, nc), nb + nc, 0.5, alternative="two-sided").pvalue
        assert s["p_value"] == pytest.approx(expected, rel=1e-12)


def test_bootstrap_ci_covers_the_true_delta():
    """Correlated pairs with a known true difference of 0.1: the 95% CI holds it about 95% of the time."""
    rng = np.random.default_rng(4)
    hits, sims = 0, 200
    for _ in range(sims):
        u = rng.random(300)
        a, b = u < 0.6, u < 0.7  # true delta 0.1, correlated as two models on the same examples are
        s = report.paired_stats(a, b, resamples=1000)
        hits += s["ci_low"] <= 0.1 <= s["ci_high"]
    assert 0.88 <= hits / sims <= 0.995
    # one large sample: the CI is tight around the truth
    u = rng.random(20_000)
    s = report.paired_stats(u < 0.6, u < 0.7)
    assert s["ci_low"] <= 0.1 <= s["ci_high"] and s["ci_high"] - s["ci_low"] < 0.01


def test_bootstrap_equals_resampling_indices():
    """The multinomial draw is the index bootstrap: same CI as literally resampling test indices."""
    rng = np.random.default_rng(6)
    a, b = rng.random(500) < 0.6, rng.random(500) < 0.68
    d = b.astype(float) - a.astype(float)
    idx = np.random.default_rng(0).integers(0, len(d), size=(20_000, len(d)))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    s = report.paired_stats(a, b, resamples=20_000)
    assert s["ci_low"] == pytest.approx(lo, abs=0.004) and s["ci_high"] == pytest.approx(hi, abs=0.004)


def test_bootstrap_is_reproducible_and_takes_resamples():
    rng = np.random.default_rng(5)
    a, b = rng.random(200) < 0.6, rng.random(200) < 0.7
    assert report.paired_stats(a, b, resamples=500) == report.paired_stats(a, b, resamples=500)
    assert report.paired_stats(a, b, resamples=500)["resamples"] == 500


def test_pareto_front():
    pts = [(1, 50), (2, 60), (2, 55), (3, 60), (4, 70), (5, 65)]
    assert report.pareto_front(pts) == [0, 1, 4]


# ------------------------------------------------------------------------------------------------ compare


@pytest.fixture(scope="module")
def cmp_db(tmp_path_factory):
    """ref vs better (planted: +0.2 on cifar10 linear), same (identical predictions), other (different examples
    on cifar100)."""
    db = tmp_path_factory.mktemp("cmp") / "results.sqlite"
    store = Store(db)
    rng = np.random.default_rng(0)
    base = _correct(0.6, 400, rng)
    better = base.copy()
    better[np.flatnonzero(~base)[:80]] = True
    for seed in (0, 1):
        put(store, "ref", "cifar10", "linear", correct=base, seed=seed)
    put(store, "better", "cifar10", "linear", correct=better, seed=1)
    put(store, "same", "cifar10", "linear", correct=base)
    put(store, "ref", "cifar100", "linear", correct=base)
    put(store, "other", "cifar100", "linear", correct=base, manifest="a different test split")
    put(store, "other", "cifar10", "linear", correct=base)
    put(store, "lonely", "flowers102", "full", correct=base)
    store.close()
    return db


def _compare(db, names, **kw):
    store = Store(db)
    try:
        return report.compare(store, names, **kw)
    finally:
        store.close()


def test_compare_finds_the_planted_difference_and_identity(cmp_db):
    cmp = _compare(cmp_db, ["ref", "better", "same"], resamples=2000)
    rows = {r.checkpoint_b: r for r in cmp.rows}
    r = rows["better"]
    assert r.delta == pytest.approx(0.2) and r.ci_low > 0.1 and r.p_value < 1e-10
    assert (r.b, r.c) == (0, 80) and r.verdict == "win"
    assert (r.seed_a, r.seed_b) == (1, 1)  # the seed both have
    s = rows["same"]
    assert s.delta == 0 and s.p_value == 1 and s.verdict == "tie"
    assert r.d_fwd_gflops_per_image == pytest.approx(0.2)
    assert cmp.summary("better") == {"win": 1, "tie": 0, "loss": 0, "not compared": 0}
    text = report.compare_text(cmp)
    assert "compared against the first, ref" in text
    assert "better vs ref: 1 win, 0 ties, 0 losses" in text


def test_compare_refuses_different_examples(cmp_db):
    cmp = _compare(cmp_db, ["ref", "other"], resamples=100)
    rows = {r.task: r for r in cmp.rows}
    assert rows["cifar100"].verdict == "refused" and rows["cifar100"].delta is None
    assert "different test examples" in rows["cifar100"].reason
    assert rows["cifar10"].verdict == "tie"
    with pytest.raises(UserError, match="different test examples"):
        _compare(cmp_db, ["ref", "other"], tasks=["cifar100"])


def test_compare_cli_json_and_text(cmp_db, tmp_path):
    proc = cli("compare", "ref", "better", "-t", "cifar10", "--json", "--resamples", "500", "--results", cmp_db)
    assert proc.returncode == 0, proc.stderr
    (row,) = json_lines(proc.stdout)
    assert {"delta", "ci_low", "ci_high", "p_value"} <= set(row)
    assert row["delta"] == pytest.approx(0.2) and row["ci_low"] < 0.2 < row["ci_high"]
    plot = tmp_path / "cmp.png"
    proc = cli("compare", "ref", "better", "same", "--results", cmp_db, "--resamples", "500", "--plot", plot)
    assert proc.returncode == 0, proc.stderr
    assert "compared against the first, ref" in proc.stdout and "same vs ref: 0 wins, 1 tie, 0 losses" in proc.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["ref"], ["two or more checkpoints"]),
        (["ref", "lonely"], ["no task and mode in common"]),
        (["ref", "bettr"], ["unknown checkpoint 'bettr'", "did you mean 'better'"]),
    ],
)
def test_compare_errors(cmp_db, args, fragments):
    assert_one_line_error(cli("compare", *args, "--results", cmp_db), *fragments)


# -------------------------------------------------------------------------------------------- leaderboard CLI


def test_leaderboard_cli_output_and_plot(board_db, tmp_path):
    out, plot = tmp_path / "lb.csv", tmp_path / "lb.png"
    proc = cli(
        "leaderboard",
        "--group",
        "paper6",
        "--format",
        "csv",
        "--output",
        out,
        "--plot",
        plot,
        "--sort",
        "cifar10",
        "--results",
        board_db,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    rows = list(csv.DictReader(out.open()))
    assert [(r["checkpoint"], r["mode"]) for r in rows] == [  # cifar10, best first
        ("beta", "attention"),
        ("alpha", "attention"),
        ("beta", "linear"),
        ("alpha", "linear"),
    ]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_leaderboard_cli_filters_to_stdout(board_db):
    proc = cli(
        "leaderboard",
        "-c",
        "alpha",
        "-m",
        "linear",
        "-t",
        "cifar10,cifar100",
        "--format",
        "json",
        "--results",
        board_db,
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json_lines(proc.stdout)
    assert (row["checkpoint"], row["mode"], row["group_tasks"]) == ("alpha", "linear", ["cifar10", "cifar100"])
    assert row["mean"] == pytest.approx((0.82 + 0.60) / 2)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--group", "paper7"], ["unknown task group 'paper7'", "paper6"]),
        (["--sort", "accuracy"], ["unknown sort column 'accuracy'"]),
        (["-c", "gamma"], ["unknown checkpoint 'gamma'"]),
        (["--plot", "x.gif"], [".png, .svg or .pdf"]),
    ],
)
def test_leaderboard_errors(board_db, args, fragments):
    assert_one_line_error(cli("leaderboard", *args, "--results", board_db), *fragments)


def test_no_results_is_a_clear_error(tmp_path):
    missing = tmp_path / "none.sqlite"
    assert_one_line_error(cli("leaderboard", "--results", missing), "no results store at", "transfer-eval run")
    assert not missing.exists()  # reading never creates a store
    empty = Store(tmp_path / "empty.sqlite")
    empty._writable()  # the file and schema, as a first put makes them: a store that holds no result
    empty.close()
    assert_one_line_error(cli("leaderboard", "--results", tmp_path / "empty.sqlite"), "no stored results")


# ---------------------------------------------------------------------------------------------- html report


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _browser(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not found (Debian: apt-get install chromium); the html report is not browser-tested")
    profile = tmp / f"profile{len(list(tmp.glob('profile*')))}"
    return subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp)},
    )


@pytest.fixture(scope="module")
def site(board_db, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    proc = cli("report", "--html", out, "--group", "paper6", "--resamples", "500", "--results", board_db)
    assert proc.returncode == 0, proc.stderr
    return out


def test_report_files(site):
    pages = {f"paper-{name}.html" for name in ("three-things-table5", "three-things-table6", "vit-table5")}
    pages |= {"paper-scaling-vit-fewshot.html", "paper-vtab1k-noah.html", "paper-timm-imagenet.html"}  # each preset
    assert {p.name for p in site.iterdir()} == {"index.html", "accuracy_vs_cost.png", "compare.png", *pages}
    text = (site / "index.html").read_text()
    assert "<script src" not in text and "<link" not in text  # no CDN, nothing fetched
    p = _Tables()
    p.feed(text)
    board = p.tables[0]
    assert board["attrs"]["id"] == "leaderboard" and len(board["rows"]) == 1 + 4
    assert {i["src"] for i in p.imgs} == {"accuracy_vs_cost.png", "compare.png"}
    # the reference is the leaderboard's top checkpoint: alpha (attention) leads paper6
    assert "beta (B) vs alpha (A)" in text
    assert len(p.tables[1]["rows"]) == 1 + 2 * 6 - 1  # beta/linear has no inat2019
    # what each stored checkpoint and task is: these checkpoints are in no registry; the tasks are built-in plugins
    about = {t["attrs"].get("id"): [[c[0] for c in row] for row in t["rows"]] for t in p.tables[2:]}
    assert len(p.tables) == 4 and set(about) == {"checkpoints", "tasks"}
    assert [r[0] for r in about["checkpoints"][1:]] == ["alpha", "beta"]
    assert all("not in the registry given" in r[4] for r in about["checkpoints"][1:])
    tasks = {r[0]: r for r in about["tasks"][1:]}
    assert len(tasks) == 6 and tasks["cifar100"][1] == "100" and all(r[3] for r in tasks.values())


def test_report_in_headless_chromium(site, tmp_path):
    url = (site / "index.html").resolve().as_uri()
    proc = _browser(url, tmp_path, "--dump-dom")
    assert proc.returncode == 0 and "<table" in proc.stdout, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-js="ready"' in dom  # the inline script ran
    p = _Tables()
    p.feed(dom)
    assert len(p.tables[0]["rows"]) == 5
    assert all(i.get("data-loaded") == "1" for i in p.imgs) and len(p.imgs) == 2  # the browser decoded both plots
    # sorting in the browser: #sort=inat2019:asc puts the missing cell last, the rest ascending
    proc = _browser(url + "#sort=inat2019:asc", tmp_path, "--dump-dom")
    p = _Tables()
    p.feed(proc.stdout)
    header = [c[0] for c in p.tables[0]["rows"][0]]
    col = header.index("inat2019")
    cells = [row[col][0] for row in p.tables[0]["rows"][1:]]
    assert cells[-1] == "missing"
    assert [float(c) for c in cells[:-1]] == sorted(float(c) for c in cells[:-1])
    assert 'data-sorted="inat2019:asc"' in proc.stdout
    shot = tmp_path / "report.png"
    proc = _browser(url, tmp_path, f"--screenshot={shot}", "--window-size=1366,900")
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]


def test_the_report_shows_what_users_wrote_as_text_and_runs_none_of_it(tmp_path):
    """Checkpoint names and descriptions from a registry file, task names and descriptions from a plugin, carrying
    <script> and <img onerror>: in headless Chromium nothing of them runs, and each shows as the text it is."""
    import yaml

    def pwn(tag: str) -> str:
        return f"document.body.setAttribute('data-pwned','{tag}')"

    evil_ck = f'evil<img src=x onerror="{pwn("ck")}">'
    evil_desc = f"<script>{pwn('desc')}</script> & <b>bold</b>"
    evil_task = f"<img src=y onerror={pwn('task')}>"
    evil_task_desc = f"</td></tr></table><script>{pwn('taskdesc')}</script>"
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        yaml.safe_dump(
            {
                evil_ck: {
                    "model": "vit_small_patch16_224",
                    "weights": "none",
                    "pretraining": f"<svg onload={pwn('svg')}>",
                    "description": evil_desc,
                }
            }
        )
    )
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "evil.py").write_text(
        "from transfer_eval.tasks import Task\n"
        f"EVIL = Task(name={evil_task!r}, num_classes=10, load=None, description={evil_task_desc!r})\n"
    )
    db = tmp_path / "results.sqlite"
    store = Store(db)
    rng = np.random.default_rng(0)
    for ck, acc in ((evil_ck, 0.8), ("plain", 0.6)):
        for task in (evil_task, "cifar10"):
            put(store, ck, task, "linear", correct=_correct(acc, rng=rng))
    store.close()
    out = tmp_path / "site"
    proc = cli(
        "report", "--html", out, "--resamples", "200", "--registry", registry, "--tasks-dir", plugins, "--results", db
    )
    assert proc.returncode == 0, proc.stderr
    dom = _browser((out / "index.html").resolve().as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0 and "<table" in dom.stdout, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    assert 'data-js="ready"' in body and "data-pwned" not in body  # our script ran; none of theirs did
    assert dom.stdout.count("<script") == 1 and "<svg" not in dom.stdout
    p = _Tables()
    p.feed(dom.stdout)
    assert all(i["src"].endswith(".png") for i in p.imgs)  # no <img src=x> became an element
    about = {t["attrs"].get("id"): [[c[0] for c in row] for row in t["rows"]] for t in p.tables}
    checkpoints = {r[0]: r for r in about["checkpoints"][1:]}
    assert checkpoints[evil_ck][2] == f"<svg onload={pwn('svg')}>" and checkpoints[evil_ck][4] == evil_desc
    tasks = {r[0]: r for r in about["tasks"][1:]}
    assert tasks[evil_task][3] == evil_task_desc and tasks[evil_task][4].endswith("evil.py")
    assert evil_task in about["leaderboard"][0] and evil_ck in [r[0] for r in about["leaderboard"][1:]]
