"""`transfer-eval sweep`: plans only what is missing, launches jobs, and results land in the same store."""

from conftest import cli, stored_rows

from transfer_eval import tasks
from transfer_eval.checkpoints import load_registry
from transfer_eval.methods.modes import MODES
from transfer_eval.run import runner, sweep


def test_plan_jobs_per_run_and_per_group():
    reg, digits = load_registry(), tasks.discover()["digits"]
    runs = runner.plan(
        [reg["vit_demo"], reg["vit_demo_shapes"]],
        [digits],
        [MODES["linear"], MODES["fewshot"]],
        overrides={"shots": [1, 5]},
    )
    assert len(runs) == 2 * (1 + 2 * 3)
    pending = {r.key for r in runs if not (r.checkpoint.name == "vit_demo" and r.mode.name == "linear")}
    per_run = sweep.plan_jobs(runs, pending, "run", ["--results", "db"])
    assert len(per_run) == len(pending)
    few = next(j for j in per_run if j.runs[0].mode.name == "fewshot" and j.runs[0].recipe["shots"] == 5)
    assert few.argv[-2:] == ["--set", "shots=[5]"]
    per_group = sweep.plan_jobs(runs, pending, "group", ["--results", "db"])
    assert sorted(j.name for j in per_group) == ["vit_demo / digits", "vit_demo_shapes / digits"]
    assert sum(len(j.runs) for j in per_group) == len(pending)


def test_sweep_runs_what_is_missing_then_nothing(tmp_path):
    db = tmp_path / "r.sqlite"
    args = [
        "sweep",
        "-c",
        "vit_demo",
        "-t",
        "digits",
        "-m",
        "fewshot",
        "--seed",
        "0,1",
        "--set",
        "shots=[1]",
        "--results",
        db,
    ]
    plan = cli(*args, "--dry-run")
    assert plan.returncode == 0 and "2 to run in 1 jobs" in plan.stdout and stored_rows(db) == 0
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert stored_rows(db) == 2
    again = cli(*args, "--dry-run")
    assert "2 stored, 0 to run in 0 jobs" in again.stdout
