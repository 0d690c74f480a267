"""The offline demo through the real CLI (the README's command: the offline-pretrained vit_demo_shapes on digits
in three modes): stored, printed, skipped when repeated."""

import sqlite3

import numpy as np
import pytest
from conftest import cli, json_lines

from transfer_eval.store.results import Result, Store

MODES = ("linear", "attention", "full")
CHECKPOINT = "vit_demo_shapes"
ATTENTION_FLOOR, FULL_FLOOR = 0.935, 0.948  # 94.81 - 1.29 and 95.73 - 0.93 (see below)


@pytest.fixture(scope="module")
def demo(demo_run):
    db, proc = demo_run  # conftest.DEMO_COMMAND, run once per session (the README's test starts from it too)
    assert proc.args[1:8] == ["run", "-c", CHECKPOINT, "-t", "digits", "-m", ",".join(MODES)]
    rows = {r["mode"]: r for r in json_lines(proc.stdout)}
    return db, rows, proc


def test_every_mode_is_well_above_chance(demo):
    _, rows, _ = demo
    assert set(rows) == set(MODES)
    for mode, r in rows.items():
        assert r["status"] == "ok"
        assert r["top5"] >= r["top1"]
    # The probe is deterministic on a CPU: pinned (507 of the 539 test images, 94.06%: this command on the 2-core VM
    # on 2026-12-05, twice, and README.md's measurement of 2026-12-02). Fine-tuning is bounded below by its measured
    # spread (2026-12-05, the 2-core VM: seed 0 with 2 threads, twice, seed 0 with 1 thread, seed 1 with 2 threads):
    # attention 94.81 / 94.81 / 94.99 / 96.10%, spread 1.29 points; full 96.29 / 96.29 / 95.73 / 95.73% (and 96.10,
    # 96.47, 96.66% in README.md and the precision tests), spread 0.93. Each floor is the lowest less that spread;
    # the old floor of 60% let a 30-point regression pass
    assert round(rows["linear"]["top1"] * 539) == 507
    assert rows["attention"]["top1"] >= ATTENTION_FLOOR, rows["attention"]["top1"]
    assert rows["full"]["top1"] >= FULL_FLOOR, rows["full"]["top1"]


def test_full_finetuning_beats_the_linear_probe(demo):
    _, rows, _ = demo
    assert rows["full"]["top1"] > rows["linear"]["top1"]


def test_json_lines_carry_the_record_fields(demo):
    _, rows, _ = demo
    fields = set(Result.__dataclass_fields__)
    for r in rows.values():
        assert set(r) == fields
        assert r["task"] == "digits" and r["checkpoint"] == CHECKPOINT and r["seed"] == 0
        assert r["n_test"] == 539 and len(r["split_manifest"]) == 64
        assert r["params_total"] == 803_210  # 0.8M demo ViT with a 10-class head
        assert r["fwd_gflops_per_image"] > 0 and r["fwd_gmacs_per_image"] == pytest.approx(
            r["fwd_gflops_per_image"] / 2
        )
        assert r["torch_version"] and r["timm_version"] and r["command"].startswith("transfer-eval run")
        assert r["started"] <= r["finished"]
    # what trains, and what one more task must store
    assert rows["linear"]["params_per_task"] == 128 * 10 + 10
    assert rows["full"]["params_per_task"] == rows["full"]["params_total"]
    assert rows["linear"]["params_per_task"] < rows["attention"]["params_per_task"] < rows["full"]["params_per_task"]
    assert rows["attention"]["train_gflops_per_image"] < rows["full"]["train_gflops_per_image"]
    assert rows["linear"]["bytes_per_task"] < rows["attention"]["bytes_per_task"] < rows["full"]["bytes_per_task"]
    # model choices on val, recorded
    assert f"{rows['linear']['selection']['chosen']['C']:.4g}" in rows["linear"]["selection"]["grid"]
    assert rows["linear"]["selection"]["not_converged"] == []  # every C's fit reached the gradient tolerance
    # the digits recipe trains one lr (no search): recorded as such; the search itself is the next test's
    assert set(rows["full"]["selection"]["grid"]) == {"0.0015"}
    assert rows["full"]["selection"]["searched"] == "none (one lr)"
    assert rows["full"]["selection"]["chosen"]["lr"] == 1.5e-3


def test_the_lr_is_chosen_on_val(tmp_path):
    """Two lrs far apart, the worse one first: 0.1 wrecks the pretrained attention layers in a few Adam steps, 2e-3
    (the recipe's) learns. The better on val is chosen, the grid scores each lr as training it alone does, and the
    chosen lr's model is the one scored on test."""
    common = ("run", "-c", CHECKPOINT, "-t", "digits", "-m", "attention", "--limit", "60", "--json")
    short = ("--set", "steps=10", "--set", "warmup_steps=2", "--set", "retrain=false")
    runs = {}
    for name, grid in (("both", "[0.1,2e-3]"), ("alone", "[2e-3]")):
        proc = cli(*common, *short, "--set", f"lr_grid={grid}", "--results", tmp_path / f"{name}.sqlite")
        assert proc.returncode == 0, proc.stderr
        (runs[name],) = json_lines(proc.stdout)
    sel = runs["both"]["selection"]
    assert sel["searched"] == "lr" and set(sel["grid"]) == {"0.1", "0.002"}
    assert sel["grid"]["0.002"] == runs["alone"]["val_top1"]  # what 2e-3 alone scores on val
    assert sel["grid"]["0.1"] < sel["grid"]["0.002"]
    assert sel["chosen"]["lr"] == 2e-3 and runs["both"]["val_top1"] == runs["alone"]["val_top1"]
    assert (runs["both"]["top1"], runs["both"]["top5"]) == (runs["alone"]["top1"], runs["alone"]["top5"])


def test_stored_predictions_reproduce_the_accuracy(demo):
    db, rows, _ = demo
    store = Store(db)
    for r in rows.values():
        labels, top5 = store.predictions(r["run_id"])
        assert len(labels) == r["n_test"]
        assert np.mean(top5[:, 0] == labels) == pytest.approx(r["top1"])
        assert np.mean((top5 == labels[:, None]).any(1)) == pytest.approx(r["top5"])


def test_table_output_and_second_run_skips(demo):
    db, rows, _ = demo
    proc = cli("run", "-c", CHECKPOINT, "-t", "digits", "-m", ",".join(MODES), "--results", db)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("skipped") == 3
    header = proc.stdout.splitlines()[0].split()
    assert header[:4] == ["run", "checkpoint", "task", "mode"]
    for mode, r in rows.items():
        line = next(line for line in proc.stdout.splitlines() if f" {mode} " in line)
        assert f"{100 * r['top1']:.2f}" in line
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3


def test_show_prints_one_record(demo):
    db, rows, _ = demo
    run_id = rows["attention"]["run_id"]
    proc = cli("show", run_id, "--results", db, "--json")
    assert proc.returncode == 0
    assert json_lines(proc.stdout) == [rows["attention"]]
    missing = cli("show", 999, "--results", db)
    assert missing.returncode == 2 and "no run 999" in missing.stderr
