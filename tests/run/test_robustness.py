"""Nothing lost: resume after kill -9, concurrent writers, failures as records, every bad input, determinism."""

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import assert_one_line_error, cli, hermetic_env, json_lines, stored_rows

from transfer_eval.store.results import Store

SHORT_FULL = ["-c", "vit_demo", "-t", "digits", "-m", "full", "--set", "steps=60", "--set", "warmup_steps=6"]


def _rows(db):
    with sqlite3.connect(db) as con:
        return con.execute("SELECT task, mode, seed, status, top1, error FROM results ORDER BY run_id").fetchall()


def test_resume_after_kill_reaches_the_same_accuracy(tmp_path):
    cache = tmp_path / "cache"
    env = {"TRANSFER_EVAL_CACHE": str(cache)}
    whole = cli("run", *SHORT_FULL, "--results", tmp_path / "whole.sqlite", "--json", env=env)
    assert whole.returncode == 0, whole.stderr
    (expected,) = json_lines(whole.stdout)
    assert not any((cache / "resume").glob("*/*")), "a finished run removes its training checkpoints"

    db = tmp_path / "killed.sqlite"
    args = [
        sys.executable,
        "-m",
        "transfer_eval",
        "run",
        *SHORT_FULL,
        "--results",
        str(db),
        "--json",
        "--checkpoint-every",
        "10",
    ]
    proc = subprocess.Popen(args, env=hermetic_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while time.time() < deadline and not list((cache / "resume").glob("*/lr*.pt")):
        assert proc.poll() is None, "the run ended before writing a training checkpoint"
        time.sleep(0.2)
    time.sleep(1.0)  # let it get past the first checkpoint, then kill it mid-training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert stored_rows(db) == 0  # nothing half-written

    again = cli("run", *SHORT_FULL, "--results", db, "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr
    (resumed,) = json_lines(again.stdout)
    assert resumed["top1"] == expected["top1"] and resumed["val_top1"] == expected["val_top1"]
    # the curves keep their own schedule: no point at a training checkpoint's step, the same points as unbroken
    assert resumed["curves"] == expected["curves"]
    a = Store(tmp_path / "whole.sqlite").predictions(expected["run_id"])
    b = Store(db).predictions(resumed["run_id"])
    assert np.array_equal(a[1], b[1])  # bit for bit the same predictions
    assert not any((cache / "resume").glob("*/*"))


def test_sigterm_checkpoints_exits_75_and_the_same_command_resumes_to_the_same_result(tmp_path):
    """Pre-emption (Slurm's SIGTERM or USR1): the training checkpoint is written at the next step, exit status 75,
    nothing recorded as failed; run again, the result is an uninterrupted run's, bit for bit."""
    cache = tmp_path / "cache"
    env = {"TRANSFER_EVAL_CACHE": str(cache)}
    whole = cli("run", *SHORT_FULL, "--results", tmp_path / "whole.sqlite", "--json", env=env)
    (expected,) = json_lines(whole.stdout)
    db = tmp_path / "preempted.sqlite"
    args = [sys.executable, "-m", "transfer_eval", "run", *SHORT_FULL, "--results", str(db), "--json"]
    proc = subprocess.Popen(
        args,
        env=hermetic_env({"TRANSFER_EVAL_PROGRESS_SECONDS": "1e-9", **env}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:  # the first progress line of the training loop: mid-training
        if "train lr=" in line and "step/s" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err
    assert "transfer-eval: pre-empted: SIGTERM at step" in err and "Traceback" not in err
    assert stored_rows(db) == 0  # not a failure, not a result
    assert list((cache / "resume").glob("*/lr*.pt"))  # the checkpoint it stopped at
    again = cli("run", *SHORT_FULL, "--results", db, "--json", env=env)
    assert again.returncode == 0 and "resuming" in again.stderr, again.stderr
    (resumed,) = json_lines(again.stdout)
    assert resumed["top1"] == expected["top1"]
    a = Store(tmp_path / "whole.sqlite").predictions(expected["run_id"])
    assert np.array_equal(a[1], Store(db).predictions(resumed["run_id"])[1])


def test_a_slurm_job_passes_usr1_on_and_is_requeued_as_the_same_command(tmp_path):
    """submitit calls `checkpoint` on USR1: the command gets the signal, stops, and the same command is requeued."""
    from transfer_eval.run.sweep import RequeueingCommand

    flag = tmp_path / "got-usr1"
    script = (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGUSR1, lambda *a: (pathlib.Path({str(flag)!r}).write_text('1'), sys.exit(75)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    job = RequeueingCommand([sys.executable, "-c", script], grace_seconds=30)
    job._proc = subprocess.Popen(job.cmd, stdout=subprocess.PIPE, text=True)
    assert job._proc.stdout.readline().strip() == "ready"
    delayed = job.checkpoint()
    assert flag.read_text() == "1" and job._proc.returncode == 75
    assert isinstance(delayed.function, RequeueingCommand) and delayed.function.cmd == job.cmd
    assert pickle.loads(pickle.dumps(delayed.function)).cmd == job.cmd  # what submitit stores to requeue


def test_same_seed_is_deterministic_on_cpu(tmp_path):
    one = cli("run", *SHORT_FULL, "--set", "steps=20", "--results", tmp_path / "a.sqlite", "--json")
    two = cli("run", *SHORT_FULL, "--set", "steps=20", "--results", tmp_path / "b.sqlite", "--json")
    assert one.returncode == two.returncode == 0
    (r1,), (r2,) = json_lines(one.stdout), json_lines(two.stdout)
    assert r1["top1"] == r2["top1"] and r1["seed"] == r2["seed"] == 0
    p1, p2 = (
        Store(tmp_path / "a.sqlite").predictions(r1["run_id"]),
        Store(tmp_path / "b.sqlite").predictions(r2["run_id"]),
    )
    assert np.array_equal(p1[1], p2[1])


def test_concurrent_writers_lose_nothing(tmp_path):
    db = tmp_path / "shared.sqlite"
    base = [
        sys.executable,
        "-m",
        "transfer_eval",
        "run",
        "-c",
        "vit_demo",
        "-t",
        "digits",
        "-m",
        "fewshot",
        "--set",
        "shots=[1]",
        "--results",
        str(db),
    ]
    env = hermetic_env()
    procs = [
        subprocess.Popen(base + ["--seed", s], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for s in ("0", "1", "2", "0,1")
    ]  # the last repeats keys the others write
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    rows = _rows(db)
    assert sorted(r[2] for r in rows) == [0, 1, 2]  # every seed stored, each key once
    assert all(r[3] == "ok" for r in rows)


def test_divergence_is_a_failed_record_retried_next_time(tmp_path):
    db = tmp_path / "r.sqlite"
    args = [
        "run",
        "-c",
        "vit_demo",
        "-t",
        "digits",
        "-m",
        "full",
        "--set",
        "steps=5",
        "--set",
        "warmup_steps=1",
        "--set",
        "lr=1e12",
        "--set",
        "optimizer=sgd",
        "--set",
        "grad_clip=null",
        "--results",
        db,
        "--json",
    ]
    first = cli(*args)
    assert first.returncode == 1
    assert "diverged" in first.stderr
    (row,) = _rows(db)
    assert row[3] == "failed" and row[4] is None and "diverged" in row[5]
    second = cli(*args)  # a failed key is not "stored": the next run tries again
    assert second.returncode == 1 and "skipped" not in second.stderr
    assert len(_rows(db)) == 1
    board = cli("leaderboard", "--results", db, "--format", "json")
    assert "vit_demo" not in board.stdout  # failures are never shown as results


@pytest.fixture
def bad_inputs(tmp_path):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "bad.yaml").write_text("x:\n  model: vit_small_patch16_224\n   pretraining: oops\n")
    (tmp_path / "nofield.yaml").write_text("x:\n  model: vit_small_patch16_224\n")
    save_file({"pos_embed": torch.zeros(1, 5, 7)}, str(tmp_path / "wrong.safetensors"))

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    (tmp_path / "weights.yaml").write_text(
        "wrong:\n  model: vit_small_patch16_224\n  weights: wrong.safetensors\n  pretraining: t\n"
        "  model_args: {img_size: 16, patch_size: 4, embed_dim: 128, depth: 4, num_heads: 4}\n"
        "evil:\n  model: vit_small_patch16_224\n  weights: evil.pth\n  pretraining: t\n"
    )
    (tmp_path / "url.yaml").write_text(
        "url:\n  model: vit_small_patch16_224\n  weights: https://example.org/w.pth\n  pretraining: t\n"
    )
    (tmp_path / "empty_data").mkdir()
    (tmp_path / "wrong_data" / "cifar-10-batches-py").mkdir(parents=True)
    return tmp_path


BAD = [  # (arguments, fragments of the one error line)
    (["-c", "vit_dmo", "-t", "digits", "-m", "linear"], ["unknown checkpoint 'vit_dmo'", "vit_demo"]),
    (["-c", "vit_demo", "-t", "digit", "-m", "linear"], ["unknown task 'digit'", "digits"]),
    (["-c", "vit_demo", "-t", "digits", "-m", "linaer"], ["unknown mode 'linaer'", "linear"]),
    (["--registry", "{d}/bad.yaml", "-c", "x", "-t", "digits", "-m", "linear"], ["bad.yaml:3"]),
    (["--registry", "{d}/nofield.yaml", "-c", "x", "-t", "digits", "-m", "linear"], ["nofield.yaml:1", "pretraining"]),
    (["--registry", "{d}/weights.yaml", "-c", "wrong", "-t", "digits", "-m", "linear"], ["does not fit", "pos_embed"]),
    (["--registry", "{d}/weights.yaml", "-c", "evil", "-t", "digits", "-m", "linear"], ["refusing", "weights-only"]),
    (["--registry", "{d}/url.yaml", "-c", "url", "-t", "digits", "-m", "linear"], ["url.yaml:1", "sha256"]),
    (["-c", "vit_demo", "-t", "cifar10", "-m", "linear", "--data-dir", "{d}/missing"], ["cifar10", "missing"]),
    (["-c", "vit_demo", "-t", "cifar10", "-m", "linear", "--data-dir", "{d}/empty_data"], ["cifar10", "empty_data"]),
    (
        ["-c", "vit_demo", "-t", "cifar10", "-m", "linear", "--data-dir", "{d}/wrong_data", "--skip-verify"],
        ["cifar10", "data_batch_1"],
    ),
    (["-c", "vit_demo", "-t", "digits", "-m", "full", "--set", "stepz=3"], ["unknown recipe field", "stepz"]),
    (["-c", "vit_demo", "-t", "digits", "-m", "pretrained"], ["random weights"]),
]


@pytest.mark.parametrize("args, fragments", BAD, ids=[" ".join(a[:6]) for a, _ in BAD])
def test_every_bad_input_is_one_line_exit_2_nothing_stored(bad_inputs, args, fragments):
    db = bad_inputs / "results.sqlite"
    proc = cli("run", *[a.format(d=bad_inputs) for a in args], "--results", db)
    assert_one_line_error(proc, *fragments)
    assert stored_rows(db) == 0
    assert not (bad_inputs / "pwned").exists()
