"""transfer-eval from Python, as a notebook uses it; training curves, --limit, trackers and progress lines."""

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
from conftest import assert_one_line_error, cli, json_lines, stored_rows

import transfer_eval as te
from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, Task

FEW = dict(modes="fewshot", settings={"shots": [1]}, seeds=[0, 1])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    db = tmp_path_factory.mktemp("api") / "r.sqlite"
    te.evaluate(["vit_demo", "vit_demo_shapes"], "digits", results=db, **FEW)
    return db


def test_evaluate_stores_and_returns_what_run_would_then_skips(store):
    first = te.load_results(store)
    assert len(first) == 4 and set(first["checkpoint"]) == {"vit_demo", "vit_demo_shapes"}
    again = te.evaluate("vit_demo", ["digits"], results=store, **FEW)  # stored: returned, not run again
    assert sorted(r.run_id for r in again) == sorted(first[first.checkpoint == "vit_demo"]["run_id"])
    assert again[0].command.startswith("transfer_eval.evaluate(")


def test_load_results_is_one_row_per_result_with_the_records_fields(store):
    df = te.load_results(store, checkpoints=["vit_demo"], predictions=True)
    assert len(df) == 2 and (df["mode"] == "fewshot").all() and {"top1", "recipe", "curves", "seed"} <= set(df)
    row = df.iloc[0]
    assert isinstance(row["recipe"], dict) and row["recipe"]["shots"] == 1
    assert row["top1"] == pytest.approx(float((row["top5_predictions"][:, 0] == row["labels"]).mean()))
    assert len(te.load_results(store, tasks="cifar10")) == 0


def test_leaderboard_and_compare_return_the_objects_the_cli_renders(store):
    lb = te.leaderboard(store)
    frame = lb.to_frame()
    assert set(frame["checkpoint"]) == {"vit_demo", "vit_demo_shapes"} and (frame["digits_n"] == 2).all()
    cmp = te.compare(["vit_demo", "vit_demo_shapes"], store)
    (row,) = cmp.rows
    assert row.verdict in ("win", "tie", "loss") and row.seed_a == row.seed_b == 0
    assert cmp.to_frame().loc[0, "delta"] == pytest.approx(row.delta)
    with pytest.raises(UserError, match="no results store"):
        te.leaderboard(store.parent / "missing.sqlite")


def test_a_checkpoint_and_a_task_added_from_python_run_by_name(tmp_path, monkeypatch):
    from transfer_eval import checkpoints
    from transfer_eval.tasks import plugins

    monkeypatch.setattr(plugins, "ADDED", {})  # this test's additions stay in this test
    monkeypatch.setattr(checkpoints, "ADDED", {})
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
    rng = np.random.default_rng(0)

    def load(split, ctx):
        n = {"train": 30, "test": 12}[split]
        labels = [i % 3 for i in range(n)]
        noise = rng.integers(0, 40, size=(n, 8, 8, 3))
        from PIL import Image

        return ImageSplit(
            lambda i: Image.fromarray((np.array(colours[labels[i]]) + noise[i]).astype(np.uint8)),
            labels,
            [f"{split}/{i}" for i in range(n)],
        )

    te.add_task(Task(name="nb_squares", num_classes=3, load=load, splits=("train", "test")))
    ck = te.add_checkpoint(
        "nb_vit",
        "vit_small_patch16_224",
        model_args={"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2},
        data_config={"crop_pct": 1.0},
    )
    assert ck.weights == "none" and ck.source.endswith("<python>")
    (r,) = te.evaluate(
        "nb_vit", "nb_squares", "fewshot", settings={"shots": [5]}, seeds=[0], results=tmp_path / "r.sqlite"
    )
    assert r.status == "ok" and r.top1 > 0.5  # colours are easy even for random features
    with pytest.raises(UserError, match="unknown field"):
        te.add_checkpoint("bad", "vit_small_patch16_224", colour="red")


def test_dataframes_without_pandas_say_which_extra(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(UserError, match=r"pip install 'transfer-eval\[pandas\]'"):
        te.load_results(store)


def test_a_limited_finetune_run_stores_curves_logs_progress_and_stays_out_of_tables(tmp_path):
    db, logs = tmp_path / "r.sqlite", tmp_path / "logs"
    args = [
        "run",
        "-c",
        "vit_demo",
        "-t",
        "digits",
        "-m",
        "attention",
        "--limit",
        "60",
        "--results",
        db,
        "--set",
        "steps=40",
        "--set",
        "warmup_steps=4",
        "--set",
        "lr_grid=[0.001,0.003]",
        "--set",
        "retrain=true",
        "--log",
        "tensorboard",
        "--log-dir",
        logs,
        "--json",
    ]
    proc = cli(*args, env={"TRANSFER_EVAL_PROGRESS_SECONDS": "1e-9"})
    assert proc.returncode == 0, proc.stderr
    (rec,) = json_lines(proc.stdout)
    # --limit: at most 60 per split, spread over the classes; its own key, marked in the record
    assert rec["limit_per_split"] == 60 and rec["n_test"] == 60
    assert "limit 60" in proc.stderr
    # curves: every phase, a point every 20 steps, each lr's val top-1 as the selection recorded it
    phases = rec["curves"]["phases"]
    assert list(phases) == ["lr 0.001", "lr 0.003", "retrain"] and rec["curves"]["every"] == 20
    for name, c in phases.items():
        assert c["step"] == [20, 40] and all(np.isfinite(c["loss"])) and len(c["lr"]) == 2
    assert phases["lr 0.003"]["val_top1"] == rec["selection"]["grid"]["0.003"]
    assert phases["lr 0.001"]["lr"][-1] < phases["lr 0.001"]["lr"][0]  # cosine decay after warm-up
    # progress where stderr is not a terminal: plain lines with the rate and the whole run's time left
    assert "train lr=0.001: " in proc.stderr and "step/s" in proc.stderr and "(run: about" in proc.stderr
    assert "top-1" in proc.stderr and f"stored as run {rec['run_id']}" in proc.stderr  # the one-line summary
    # tensorboard received the curves and the record
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = (logs / "tensorboard").iterdir()
    events = EventAccumulator(str(folder))
    events.Reload()
    losses = [e.value for e in events.Scalars("lr 0.003/loss")]
    assert losses == pytest.approx(phases["lr 0.003"]["loss"], rel=1e-5)
    assert events.Scalars("result/top1")[0].value == pytest.approx(rec["top1"])
    # show --plot draws the curves; a probe has none, said in one line
    png = tmp_path / "curves.png"
    shown = cli("show", rec["run_id"], "--plot", png, "--results", db)
    assert shown.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lr 0.001: 2 points" in shown.stdout
    # limited results stay out of leaderboards unless asked for
    hidden = cli("leaderboard", "--results", db, "--format", "json")
    assert hidden.returncode == 2 and "no stored results for the tasks" in hidden.stderr
    shown_lb = cli("leaderboard", "--results", db, "--format", "json", "--include-limited")
    assert shown_lb.returncode == 0 and json_lines(shown_lb.stdout)[0]["tasks"]["digits"]["top1"] == rec["top1"]


def test_show_plot_of_a_run_without_curves_is_one_line(store):
    proc = cli("show", 1, "--plot", store.parent / "c.png", "--results", store)
    assert_one_line_error(proc, "has no training curves")
    assert not (store.parent / "c.png").exists()


def test_trackers_missing_package_is_one_line_and_wandb_receives_the_run(tmp_path, monkeypatch):
    if importlib.util.find_spec("wandb") is None:  # not in the test extra: the line a user without it gets
        proc = cli(
            "run",
            "-c",
            "vit_demo",
            "-t",
            "digits",
            "-m",
            "fewshot",
            "--log",
            "wandb",
            "--results",
            tmp_path / "r.sqlite",
        )
        assert_one_line_error(proc, "--log wandb needs the wandb package", "transfer-eval[wandb]")
        assert stored_rows(tmp_path / "r.sqlite") == 0
    # wandb's calls, recorded by a stand-in module (the real one needs an account or its offline files)
    calls = []

    class Run:
        summary = types.SimpleNamespace(update=lambda d: calls.append(("summary", d)))

        def define_metric(self, *a, **k):
            calls.append(("define", a))

        def log(self, d):
            calls.append(("log", d))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **k: calls.append(("init", k)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from transfer_eval.run import trackers
    from transfer_eval.store.results import Result

    result = Result(
        "c",
        "w",
        "t",
        1,
        "attention",
        "p",
        0,
        run_id=7,
        top1=0.5,
        recipe={"lr": 0.1},
        curves={
            "every": 20,
            "phases": {
                "lr 0.1": {"base_lr": 0.1, "val_top1": 0.4, "step": [20, 40], "loss": [2.0, 1.5], "lr": [0.1, 0.05]}
            },
        },
    )
    trackers.check(["wandb"])
    trackers.publish(["wandb"], result, tmp_path)
    init = calls[0][1]
    assert init["mode"] == "offline" and init["config"]["recipe"] == {"lr": 0.1} and init["name"].startswith("run7")
    logged = [c[1] for c in calls if c[0] == "log"]
    assert [d["lr 0.1/loss"] for d in logged] == [2.0, 1.5] and [d["lr 0.1/step"] for d in logged] == [20, 40]
    summary = next(c[1] for c in calls if c[0] == "summary")
    assert summary["top1"] == 0.5 and json.loads(summary["record"])["mode"] == "attention"
    assert calls[-1] == ("finish",)


def test_the_html_report_shows_each_finetuning_cells_curves(tmp_path):
    from transfer_eval import report
    from transfer_eval.store.results import Result, Store

    store = Store(tmp_path / "r.sqlite")
    curve = {"base_lr": 0.01, "val_top1": 0.5, "step": [20, 40], "loss": [2.0, 1.0], "lr": [0.01, 0.0]}
    for i, (mode, curves) in enumerate([("attention", {"every": 20, "phases": {"lr 0.01": curve}}), ("linear", None)]):
        store.put(
            Result("ck<b>", "w", "digits", 1, mode, f"p{i}", 0, top1=0.5, curves=curves),
            np.zeros(4, np.int64),
            np.zeros((4, 5), np.int64),
        )
    index = report.html_report(store, tmp_path / "site")
    page = index.read_text()
    (png,) = (tmp_path / "site").glob("curves_run*.png")
    assert f'src="{png.name}"' in page and "ck&lt;b&gt; / attention / digits" in page  # escaped, one per cell
    assert page.count('src="curves_run') == 1  # the probe has no curves
    store.close()


def test_compare_of_a_registered_checkpoint_without_results_says_so(tmp_path):
    from conftest import digits_results

    db = digits_results(tmp_path / "runs.sqlite", {"vit_demo": 80})
    with pytest.raises(UserError) as e:
        te.compare(["vit_demo", "vit_demo_shapes"], db)  # registered, no results in this store
    assert str(e.value).startswith(f"no results for checkpoint vit_demo_shapes in {db} (it has: vit_demo)")
    assert "unknown" not in str(e.value)
    with pytest.raises(UserError, match="unknown checkpoint 'vit_demo_shapez'; did you mean 'vit_demo'"):
        te.compare(["vit_demo", "vit_demo_shapez"], db)  # not a checkpoint at all
