"""Paper presets: every shipped preset validates; a bad preset is one line naming its file and entry; the verdict
rules; plan and report computed from a store filled through its real API; the planner's FLOPs (counted on the meta
device) equal those of a real model; `paper plan` on a fresh install lists every cell as missing with its data and
compute; a user preset on the demo checkpoints runs end to end offline through `paper run`."""

import csv
import dataclasses
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import assert_one_line_error, cli, json_lines

from transfer_eval import papers
from transfer_eval.errors import UserError
from transfer_eval.measure import planning
from transfer_eval.report import intervals
from transfer_eval.report import paper as paper_report
from transfer_eval.store.results import Result, Store

SHIPPED = {"three-things-table6", "three-things-table5", "vit-table5", "scaling-vit-fewshot", "vtab1k-noah"}
SHIPPED |= {"timm-imagenet"}


@pytest.fixture(scope="module")
def shipped():
    return {p.name: p for p in papers.load_all()}


def test_every_shipped_preset_validates_and_carries_the_papers_numbers(shipped):
    assert set(shipped) == SHIPPED
    t6 = shipped["three-things-table6"]
    assert len(t6.cells) == 54 and len(t6.runnable) == 54 and all(len(c.runs) == 1 for c in t6.cells)
    assert t6.cell("", "ViT-L attn", "Flowers").published == 98.4  # as protocols.md prints Table 6
    assert t6.cell("", "ViT-S attn", "iNat-18").published == 60.6
    assert {c.checkpoint for c in t6.cells} == {"deit3_s16_in1k", "deit3_b16_in1k", "deit3_l16_in1k"}
    assert {c.task for c in t6.cells} == {"inat2018", "inat2019", "cifar10", "cifar100", "stanford_cars", "flowers102"}
    assert all(c.runs[0].recipe["preset"] == "deit" and c.runs[0].recipe["resolution"] == 224 for c in t6.cells)
    t5 = shipped["three-things-table5"]
    assert [p.title for p in t5.parts] == ["ImageNet val", "ImageNet-V2"] and len(t5.cells) == 36
    sgd = t5.cell("ImageNet-V2", "ViT-B", "SGD attn")
    assert sgd.published == 73.9 and sgd.published_std == 0.1 and sgd.task == "imagenetv2_matched_frequency"
    assert sgd.runs[0].recipe["optimizer"] == "sgd" and sgd.runs[0].recipe["resolution"] == 384
    assert t5.cell("ImageNet val", "ViT-L", "AdamW full").runs[0].recipe["optimizer"] == "adamw"
    vit = shipped["vit-table5"]
    assert {c.row for c in vit.runnable} == {"ImageNet-21k ViT-B/16", "ImageNet-21k ViT-L/16", "ImageNet-21k ViT-H/14"}
    assert vit.cell("", "JFT-300M ViT-H/14", "Pets").unrunnable == "no public JFT-300M weights"
    real = vit.cell("", "ImageNet-21k ViT-B/16", "ReaL")  # the ImageNet column's model scored on ReaL's labels
    assert real.unrunnable is None and real.published == 88.35 and real.runs[0].task.name == "imagenet_real"
    assert real.runs[0].mode.name == "full" and real.runs[0].recipe["resolution"] == 384
    assert {c.task for c in vit.runnable} == {"cifar10", "cifar100", "imagenet1k", "imagenet_real", "flowers102"} | {
        "oxford_pets"
    }
    few = shipped["scaling-vit-fewshot"]
    assert all(c.unrunnable for c in few.cells if c.part.startswith("JFT-3B"))
    five = few.cell("Public ViTs, the same protocol", "AugReg ViT-L/16 (IN-21k)", "INet5")
    assert [r.recipe["shots"] for r in five.runs] == [5, 5, 5] and [r.seed for r in five.runs] == [0, 1, 2]


def test_each_params_gap_of_a_shipped_preset_says_why(shipped):
    """Where our backbone count differs from a published Params (M), the preset says why (`params_note`: `paper
    plan` prints it beside the two numbers, tests/tasks/test_vtab.py); where they agree there is no gap."""
    from transfer_eval.report import paper as report_paper

    gaps = {}
    for preset in shipped.values():
        if any(v is not None for part in preset.parts for v in part.params.values()):
            papers.count_params(preset)
            for part in preset.parts:
                gaps |= {(preset.name, r): report_paper.params_gap(preset, part, r) for r in part.rows}
    unexplained = [k for k, why in gaps.items() if why == "the preset gives no reason for this gap"]
    assert not unexplained, f"give these rows a params_note: {unexplained}"
    noah = {r: why for (name, r), why in gaps.items() if name == "vtab1k-noah"}
    assert {r for r, why in noah.items() if why} == {"Linear", "VPT-shallow", "VPT-deep"}
    assert "per-task prompt lengths" in noah["VPT-shallow"] and "head" in noah["Linear"]


def test_paper_list(tmp_path):
    proc = cli("paper", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json_lines(proc.stdout)}
    assert set(rows) == SHIPPED and rows["three-things-table6"]["runs"] == 54
    assert rows["vit-table5"]["tasks"] == ["cifar10", "cifar100", "flowers102", "imagenet1k", "imagenet_real"] + [
        "oxford_pets"
    ]
    assert rows["timm-imagenet"]["where"].startswith("https://github.com/huggingface/pytorch-image-models")


# ------------------------------------------------------------------------------------------- bad presets


def _preset(**over) -> dict:
    doc = {
        "name": "demo",
        "paper": "A demo",
        "arxiv": "0000.00000",
        "table": "Table 1",
        "tolerance": 2.0,
        "seeds": [0],
        "rows": [{"label": "demo linear", "checkpoint": "vit_demo", "mode": "linear"}],
        "columns": [{"label": "Digits", "task": "digits"}],
        "published": {"demo linear": {"Digits": 87.0}},
    }
    doc.update(over)
    return doc


def _write(folder: Path, doc: dict, name: str = "demo") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"{name}.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    return f


BAD = [
    (
        dict(rows=[{"label": "x", "checkpoint": "vit_dmo", "mode": "linear"}], published={}),
        ["row 'x'", "unknown checkpoint 'vit_dmo'"],
    ),
    (dict(columns=[{"label": "D", "task": "digit"}], published={}), ["column 'D'", "unknown task 'digit'"]),
    (
        dict(rows=[{"label": "x", "checkpoint": "vit_demo", "mode": "full", "set": {"stepz": 3}}], published={}),
        ["stepz"],
    ),
    (dict(rows=[{"label": "x", "checkpoint": "vit_demo", "mode": "linear", "colour": 1}]), ["rows entry 1", "colour"]),
    (dict(published={"demo linear": {"Cifar": 1.0}}), ["row 'demo linear'", "column 'Cifar'"]),
    (
        dict(published={"demo linear": {"Digits": "high"}}),
        ["column 'Digits'", "a number, [mean, std] or {value: CORRECTED, printed: AS PRINTED}"],
    ),
    (dict(name="other"), ["`name` is 'other'", "demo.yaml"]),
    (dict(rows=[{"label": "x", "checkpoint": "vit_demo"}], published={}), ["row 'x'", "names no mode"]),
    (dict(recipe="adam"), ["unknown recipe preset 'adam'"]),
]


@pytest.mark.parametrize("over, fragments", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_preset_is_one_line_naming_its_file_and_entry(tmp_path, over, fragments):
    f = _write(tmp_path / "papers", _preset(**over))
    with pytest.raises(UserError) as e:
        papers.load("demo", [tmp_path / "papers"])
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    for frag in fragments:
        assert frag in str(e.value), (frag, str(e.value))


def test_bad_presets_through_the_cli(tmp_path):
    folder = tmp_path / "papers"
    _write(folder, _preset(rows=[{"label": "x", "checkpoint": "vit_dmo", "mode": "linear"}], published={}))
    for args in (("plan", "demo"), ("run", "demo", "--dry-run")):
        assert_one_line_error(cli("paper", *args, "--papers-dir", folder), "demo.yaml", "unknown checkpoint")
    (folder / "demo.yaml").write_text("name: demo\nrows:\n  - label: x\n   mode: y\n")
    assert_one_line_error(cli("paper", "plan", "demo", "--papers-dir", folder), "demo.yaml:4", "not valid YAML")
    assert_one_line_error(cli("paper", "plan", "nope", "--papers-dir", folder), "unknown paper preset 'nope'")


# ---------------------------------------------------------------------------------------------- verdicts


def test_the_verdict_rules():
    v = papers.verdict
    assert v(None, 80.0, None, 0.5) == "missing"
    assert v(80.0, None, None, 0.5) == "no published number"
    assert v(80.4, 80.0, None, 0.5) == "within" and v(79.5, 80.0, None, 0.5) == "within"  # the bounds count
    assert v(80.6, 80.0, None, 0.5) == "outside" and v(79.4, 80.0, None, 0.5) == "outside"
    assert v(80.9, 80.0, 1.0, 0.5) == "within"  # the paper's std, where larger than the tolerance
    assert v(81.1, 80.0, 1.0, 0.5) == "outside"


# ------------------------------------------------------------------------------ plan and report from a store


def _grid_preset(folder: Path) -> Path:
    """Two rows x two columns on the demo checkpoints, one column unrunnable, plus an unpublished cell."""
    doc = _preset(
        tolerance=1.0,
        seeds=[0, 1],
        rows=[
            {"label": "linear", "checkpoint": "vit_demo", "mode": "linear"},
            {"label": "shapes", "checkpoint": "vit_demo_shapes", "mode": "linear"},
        ],
        columns=[{"label": "Digits", "task": "digits"}, {"label": "Birds", "unrunnable": "no birds task"}],
        published={"linear": {"Digits": [80.0, 2.0], "Birds": 50.0}, "shapes": {"Birds": 40.0}},
        choices=["A demo choice."],
    )
    return _write(folder, doc)


def _put(store: Store, run, top1: float | None, status: str = "ok") -> None:
    r = Result(*run.key, status=status, top1=top1, n_test=10, error=None if status == "ok" else "diverged: x")
    store.put(r, np.zeros(10, np.int32), np.zeros((10, 5), np.int32))


def test_outcomes_plan_and_report_from_a_store(tmp_path):
    folder = tmp_path / "papers"
    _grid_preset(folder)
    preset = papers.load("demo", [folder])
    db = tmp_path / "results.sqlite"
    store = Store(db)
    linear = preset.cell("", "linear", "Digits")
    _put(store, linear.runs[0], 0.81)
    _put(store, linear.runs[1], 0.84)  # mean 82.5 +- 2.12: within 80 +- max(1, 2)
    shapes = preset.cell("", "shapes", "Digits")
    _put(store, shapes.runs[0], None, status="failed")
    store.close()
    outs = {(o.cell.row, o.cell.column): o for o in papers.outcomes(preset, Store(db))}
    o = outs[("linear", "Digits")]
    assert o.n == 2 and o.mean == pytest.approx(82.5) and o.std == pytest.approx(np.std([81, 84], ddof=1))
    assert o.difference == pytest.approx(2.5) and o.limit == 2.0 and o.verdict == "outside"
    assert outs[("shapes", "Digits")].failed == 1 and outs[("shapes", "Digits")].verdict == "missing"
    assert outs[("linear", "Birds")].verdict == "cannot be run"

    report = cli("paper", "report", "demo", "--papers-dir", folder, "--results", db, "--format", "json")
    assert report.returncode == 0, report.stderr
    lines = json_lines(report.stdout)  # JSON Lines: one cell per line, each naming its table
    assert len(lines) == len(report.stdout.splitlines()) == 4
    cells = {(c["row"], c["column"]): c for c in lines}
    assert cells[("linear", "Digits")]["verdict"] == "outside" and cells[("linear", "Digits")]["n"] == 2
    assert cells[("linear", "Digits")]["ours_mean"] == pytest.approx(82.5)
    t_lo, t_hi = intervals.student_t([81.0, 84.0])  # two seeds: the t interval of their mean, within [0, 100]
    assert (cells[("linear", "Digits")]["ci_low"], cells[("linear", "Digits")]["ci_high"]) == (
        max(t_lo, 0),
        min(t_hi, 100),
    )
    one = dataclasses.replace(o, values=[80.0], n_test=10)  # one run: Wilson's over its 10 test images
    assert paper_report.interval(one) == pytest.approx(tuple(100 * x for x in intervals.wilson(8, 10)))
    assert cells[("shapes", "Birds")]["unrunnable"] == "no birds task"
    assert all(c["preset"] == "demo" and c["choices"] == ["A demo choice."] for c in lines)
    verdicts = [c["verdict"] for c in lines]
    assert {v: verdicts.count(v) for v in set(verdicts)} == {"outside": 1, "missing": 1, "cannot be run": 2}
    from transfer_eval.report.paper import render  # the other formats, from the same outcomes

    outcomes = papers.outcomes(preset, Store(db))
    rows = list(csv.DictReader(io.StringIO(render(preset, outcomes, "csv"))))
    assert len(rows) == 4 and {r["verdict"] for r in rows} == {"outside", "missing", "cannot be run"}
    table = render(preset, outcomes, "table")
    assert (
        f"82.50 ± 2.12 (n=2) [{max(t_lo, 0):.1f}, {min(t_hi, 100):.1f}]" in table
        and "+2.50 outside" in table
        and "80.00 ± 2.00" in table
    )
    assert "Not run: no birds task." in table and "Choice: A demo choice." in table
    md = render(preset, outcomes, "markdown")
    assert md.startswith("## demo") and "| linear: ours" in md
    tex = render(preset, outcomes, "latex")
    assert "\\begin{tabular}" in tex and "\\toprule" in tex
    cells_html = _cells(render(preset, outcomes, "html"))
    assert ("outside", "+2.50 outside") in cells_html and ("cannot-be-run", "cannot be run") in cells_html

    plan = cli("paper", "plan", "demo", "--papers-dir", folder, "--results", db, "--json")
    assert plan.returncode == 0, plan.stderr
    rows = {(r.get("row"), r.get("column")): r for r in json_lines(plan.stdout) if "row" in r}
    assert rows[("linear", "Digits")]["status"] == "stored" and rows[("linear", "Digits")]["missing_pflops"] == 0
    shapes_row = rows[("shapes", "Digits")]
    assert shapes_row["status"] == "failed (1 of 2)" and shapes_row["data"] == "ready"
    assert shapes_row["missing_pflops"] > 0 and "stated 100 TFLOP/s" in shapes_row["basis"]
    assert rows[("shapes", "Birds")]["status"] == "cannot be run: no birds task"
    (data,) = [r for r in json_lines(plan.stdout) if "task" in r and "row" not in r]
    assert data["task"] == "digits" and data["data"] == "ready"
    assert re.fullmatch(r"train [\d,]+, val [\d,]+, test [\d,]+", data["detail"]), data
    text = cli("paper", "plan", "demo", "--papers-dir", folder, "--results", db, "--tflops", "50").stdout
    assert re.search(r"To run: 2 runs in 1 cells: [\d,.]+ PFLOPs .*GPU-hours \(stated 50 TFLOP/s per GPU\)", text)
    assert "digits: ready (train" in text and "Choice: A demo choice." in text


def _cells(page: str) -> list[tuple[str, str]]:
    class P(HTMLParser):
        def __init__(self):
            super().__init__()
            self.cells, self.cls = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "td":
                self.cls = dict(attrs).get("class")

        def handle_data(self, data):
            if self.cls is not None:
                self.cells.append((self.cls, data))
                self.cls = None

    p = P()
    p.feed(page)
    return p.cells


# --------------------------------------------------------------------------------------------- planning


@pytest.mark.parametrize("mode", ["full", "attention", "lora", "linear"])
@pytest.mark.parametrize("classes", [10, 1010, 8142])
def test_planned_flops_on_the_meta_device_equal_a_real_models_count(mode, classes):
    import torch

    from transfer_eval import checkpoints
    from transfer_eval.methods import costs, modes
    from transfer_eval.run import runner

    (run,) = runner.plan_named(["vit_demo"], ["digits"], [mode])
    train, fwd = planning.FlopCounts()(run, classes)
    model, cfg = checkpoints.build_model(run.checkpoint, classes, load_weights=False)
    model = modes.prepare(run.mode, model, run.recipe)
    modes.apply(run.mode, model)
    cpu = torch.device("cpu")
    assert fwd == pytest.approx(costs.forward_flops(model, cfg, cpu) / 1e9, rel=1e-9)
    real_train = costs.train_step_flops(model, cfg, cpu) / 1e9 if run.mode.stage == "finetune" else fwd
    assert train == pytest.approx(real_train, rel=1e-9)


def test_planned_images_follow_the_recipe():
    from transfer_eval.run import runner

    (full,) = runner.plan_named(["vit_demo"], ["cifar10"], ["full"])  # the vit recipe: 4 lrs, then retrain
    sizes = planning.split_sizes(full.task)
    assert sizes == {"train": 45_000, "val": 5_000, "test": 10_000}  # 10% of the official 50,000 held out
    train, evaluated = planning.images(full, sizes)
    assert train == 10_000 * 512 * 5 and evaluated == 5_000 * 4 + 10_000
    (probe,) = runner.plan_named(["vit_demo"], ["cifar10"], ["linear"])
    assert planning.images(probe, sizes) == (0, 60_000)
    shot = runner.plan_named(["vit_demo"], ["cifar100"], ["fewshot"], overrides={"shots": 5})[0]
    assert planning.images(shot, planning.split_sizes(shot.task)) == (0, 5 * 100 + 10_000)


def test_plan_on_a_fresh_install_lists_every_cell_missing_with_its_data_and_compute(tmp_path):
    """The issue's test of done: no data, no store."""
    proc = cli("paper", "plan", "three-things-table6", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    cells = [r for r in rows if "row" in r]
    assert len(cells) == 54 and all(c["status"] == "missing" and c["data"] == "missing" for c in cells)
    assert all(c["missing_pflops"] > 0 and c["missing_gpu_hours"] > 0 for c in cells)
    by = {(c["row"], c["column"]): c for c in cells}
    # bigger models and longer schedules cost more; attention-only less than full
    assert by[("ViT-L full", "CIFAR-10")]["missing_pflops"] > by[("ViT-B full", "CIFAR-10")]["missing_pflops"]
    assert by[("ViT-B attn", "CIFAR-10")]["missing_pflops"] < by[("ViT-B full", "CIFAR-10")]["missing_pflops"]
    data = {r["task"]: r for r in rows if "row" not in r}
    assert set(data) == {"inat2018", "inat2019", "cifar10", "cifar100", "stanford_cars", "flowers102"}
    assert all(d["data"] == "missing" and d["detail"] for d in data.values())
    assert "cifar-10-python.tar.gz" in data["cifar10"]["detail"]  # where to get it
    assert not list(tmp_path.iterdir())  # planning writes nothing: no store is created


def test_paper_run_writes_each_cells_settings_into_its_jobs(shipped, tmp_path):
    import click

    from transfer_eval.cli.options import SHARED
    from transfer_eval.cli.paper import paper_jobs

    t5 = shipped["three-things-table5"]
    pending = {r.key for c in t5.runnable for r in c.runs}
    shared = {}  # every shared option at its default, as click gives them to a command
    for decls, attrs in SHARED:
        default = () if attrs.get("multiple") else attrs.get("default", False if attrs.get("is_flag") else None)
        shared[click.Option(list(decls), **attrs).name] = default
    shared.update(registries=(), tasks_dirs=(), results=str(tmp_path / "r.sqlite"), data_dir="D")
    jobs = paper_jobs(t5, pending, "group", shared)
    assert len(jobs) == 2 * 3 * 2 and sum(len(j.runs) for j in jobs) == 36  # recipes x checkpoints x tasks
    for job in jobs:
        argv = " ".join(job.argv)
        recipe = "deit" if "--recipe deit" in argv else "vit"
        assert {r.recipe["preset"] for r in job.runs} == {recipe}  # the job runs its cells' recipe
        assert "--resolution 384" in argv and "--data-dir D" in argv and f"--results {tmp_path}" in argv
        assert f"-m {','.join(sorted({r.mode.name for r in job.runs}))}" in argv
    proc = cli("paper", "run", "three-things-table5", "--dry-run", "--results", tmp_path / "r.sqlite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "36 runs planned, 0 stored, 36 to run in 12 jobs" in proc.stdout
    assert not (tmp_path / "r.sqlite").exists() or Store(tmp_path / "r.sqlite").query() == []


# ------------------------------------------------------------------------------------ end to end, offline


def test_a_user_preset_on_the_demo_checkpoints_runs_end_to_end(tmp_path):
    folder = tmp_path / "papers"
    doc = _preset(
        tolerance=3.0,
        rows=[{"label": "demo", "checkpoint": "vit_demo"}],
        columns=[
            {"label": "linear", "task": "digits", "mode": "linear"},
            {"label": "5-shot", "task": "digits", "mode": "fewshot", "set": {"shots": 5}},
        ],
        published={"demo": {"linear": 87.2, "5-shot": 10.0}},
    )
    _write(folder, doc)
    db = tmp_path / "results.sqlite"
    common = ("--papers-dir", folder, "--results", db)
    ran = cli("paper", "run", "demo", *common, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert "2 runs planned, 0 stored, 2 to run in 2 jobs" in ran.stdout
    again = cli("paper", "run", "demo", *common, cwd=tmp_path)
    assert "2 runs planned, 2 stored, 0 to run in 0 jobs" in again.stdout  # nothing left to do
    report = json_lines(cli("paper", "report", "demo", *common, "--format", "json").stdout)
    cells = {c["column"]: c for c in report}
    assert cells["linear"]["verdict"] == "within" and cells["linear"]["n"] == 1  # the demo's 87.20%
    assert cells["5-shot"]["verdict"] == "outside" and cells["5-shot"]["ours_mean"] > 10.0
    plan = json_lines(cli("paper", "plan", "demo", *common, "--json").stdout)
    assert all(r["status"] == "stored" for r in plan if "row" in r)
    site = tmp_path / "site"
    html_proc = cli("report", "--html", site, "--papers-dir", folder, "--results", db, "--resamples", "100")
    assert html_proc.returncode == 0, html_proc.stderr
    page = (site / "paper-demo.html").read_text()
    assert [c for c in _cells(page) if c[0] == "within" and c[1].endswith(" within")]
    assert 'href="paper-demo.html"' in (site / "index.html").read_text()
