"""One run trained by one process at a time (run/locks.py): a second command of the same run key waits for the first
where both write one store and takes its result; of another store, it leaves the run alone saying who holds it; a
holder killed with -9 leaves no lock, and the next command resumes from its training checkpoints."""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import cli, hermetic_env, stored_rows

from transfer_eval import tasks
from transfer_eval.checkpoints import load_registry
from transfer_eval.methods.modes import MODES
from transfer_eval.run import locks, runner
from transfer_eval.store.results import Result, Store
from transfer_eval.tasks import LoadContext

# a fine-tuning run that would train for long: each test stops it (or finds it held) early
LONG = (
    "-c", "vit_demo", "-t", "digits", "-m", "attention", "--limit", "40", "--set", "steps=100000",
    "--set", "lr_grid=[]", "--set", "lr=0.001", "--set", "warmup_steps=1", "--set", "batch_size=8",
)  # fmt: skip


def test_a_second_command_waits_for_a_holder_of_its_store_and_leaves_another_stores_alone(
    tmp_path, monkeypatch, caplog
):
    """This process holds the run (as a first command would) for store A; run_all of the same run key into store B
    returns at once, into store A it waits until the holder stores its result and returns that one."""
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(locks, "POLL_SECONDS", 0.1)
    ck, digits = load_registry()["vit_demo"], tasks.discover()["digits"]
    (run,) = runner.plan([ck], [digits], [MODES["attention"]], seeds=[0], limit=20)
    ctx, cpu = LoadContext(tmp_path), torch.device("cpu")
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    first = locks.claim(run, Store(a))
    assert first.run and first.fd is not None and locks.lock_path(run).is_file()
    with caplog.at_level(logging.INFO, logger="transfer_eval"):
        assert runner.run_all([run], ctx, cpu, Store(b)) == []  # another store: left alone, at once
    (line,) = [m for m in caplog.messages if "left alone" in m]
    assert f"process {os.getpid()} on host {socket.gethostname()}" in line and "a.sqlite" in line
    assert not b.exists()

    def finish():  # the first command stores its result, then ends
        time.sleep(0.5)
        store = Store(a)
        store.put(Result(*run.key, top1=0.25), np.zeros(2), np.zeros((2, 5)))
        store.close()
        first.release()

    thread = threading.Thread(target=finish)
    thread.start()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transfer_eval"):
        (got,) = runner.run_all([run], ctx, cpu, Store(a))
    thread.join()
    assert got.top1 == 0.25 and stored_rows(a) == 1  # its result, not a second training
    assert any("waiting for it to finish" in m for m in caplog.messages)
    assert any("stored meanwhile by process" in m for m in caplog.messages)
    assert not any("running on" in m for m in caplog.messages)
    assert not locks.lock_path(run).exists()  # given back, and its file removed
    # stored since this command planned its runs (a sweep launched twice): taken, not trained again, unless --force
    late = locks.claim(run, Store(a))
    assert not late.run and late.stored.top1 == 0.25
    with locks.claim(run, Store(a), force=True) as forced:
        assert forced.run and forced.fd is not None


def _until(stream, fragment: str, seen: list) -> str:
    """Read `stream` line by line up to the first line holding `fragment`; every line read goes into `seen`."""
    for line in stream:
        seen.append(line)
        if fragment in line:
            return line
    raise AssertionError(f"no line with {fragment!r}:\n{''.join(seen)}")


@pytest.mark.slow
def test_two_processes_of_one_run_then_a_kill_and_a_rerun(tmp_path):
    """Real processes: the first trains (stopped once its first training checkpoint is written); a second of the
    same store waits for it; a command of another store leaves the run alone naming the first's host and pid; the
    first killed with -9, the waiting one takes the run and resumes from the first's training checkpoint."""
    cache, a, b = tmp_path / "cache", tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    env = {"TRANSFER_EVAL_CACHE": str(cache)}
    argv = [sys.executable, "-m", "transfer_eval", "run", *LONG, "--results", str(a), "--checkpoint-every", "1"]
    first = subprocess.Popen(argv, env=hermetic_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        deadline = time.time() + 600
        while not list(cache.glob("resume/*/*.pt")):
            assert first.poll() is None and time.time() < deadline, "the first ended before a training checkpoint"
            time.sleep(0.1)
        first.send_signal(signal.SIGSTOP)  # it holds the run, and trains no further
        second = subprocess.Popen(
            argv, env=hermetic_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        other = cli("run", *LONG, "--results", b, env=env)
        assert other.returncode == 0, other.stderr
        (line,) = [x for x in other.stderr.splitlines() if "left alone" in x]
        assert f"process {first.pid} on host {socket.gethostname()}" in line and str(a) in line
        assert not b.exists()
        seen = []
        assert f"process {first.pid} " in _until(second.stderr, "waiting for it to finish", seen)
        first.kill()  # kill -9: its lock goes with it
        first.wait()
        _until(second.stderr, "resuming", seen)
        assert stored_rows(a) == 0
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
