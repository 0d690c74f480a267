"""Every results store behaves alike: SQLite (a file) and PostgreSQL (a URL, for many nodes). Each test runs on
both (`store_target` in conftest.py); PostgreSQL's skip only where no server can be started, saying why."""

import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import cli, json_lines

from transfer_eval import report
from transfer_eval.store.results import SCHEMA_VERSION, Result, Store


def _result(**kw):
    base = dict(
        checkpoint="c",
        weights_sha256="w",
        task="t",
        task_version=1,
        mode="linear",
        protocol_hash="p",
        seed=0,
        top1=0.5,
        recipe={"lr": 0.1},
        compiled=True,
        curves={"every": 20, "phases": {}},
        finished="2026-12-02T00:00:00+00:00",
    )
    return Result(**{**base, **kw})


def test_roundtrip_one_row_per_key_and_failed_runs_retried(store_target):
    store = Store(store_target)
    labels, top5 = np.arange(10) % 3, np.tile(np.arange(5), (10, 1))
    first = store.put(_result(top1=0.1), labels, top5)
    second = store.put(_result(top1=0.9), labels, top5)  # the same key: replaces, never a second row
    (row,) = store.query()
    assert row.run_id == second != first and row.top1 == 0.9 and row.recipe == {"lr": 0.1} and row.compiled is True
    assert row.curves == {"every": 20, "phases": {}} and store.has(row.key)
    lab, t5 = store.predictions(second)
    assert np.array_equal(lab, labels) and np.array_equal(t5, top5) and store.predictions(first) is None
    store.put(_result(seed=1, status="failed", error="diverged", top1=None))
    assert not store.has(_result(seed=1).key) and len(store.query()) == 1 and len(store.query(status=None)) == 2
    assert {r.mode for r in store.query(modes=["linear"])} == {"linear"} and store.query(tasks=["x"]) == []
    store.close()


def test_an_interrupted_write_leaves_the_old_row(store_target, monkeypatch):
    store = Store(store_target)
    store.put(_result(top1=0.3), np.zeros(3), np.zeros((3, 5)))
    import transfer_eval.store.results as results

    def fail(a):
        raise OSError("disk full")

    monkeypatch.setattr(results, "_pack", fail)  # dies after the old row is deleted, inside the transaction
    with pytest.raises(OSError):
        store.put(_result(top1=0.8), np.zeros(3), np.zeros((3, 5)))
    (row,) = store.query()
    assert row.top1 == 0.3 and store.predictions(row.run_id) is not None
    store.close()


def test_concurrent_writers_lose_nothing_and_keep_one_row_per_key(store_target):
    """Six processes, each writing its own key and the one key they share, at the same instant."""
    code = (
        "import sys, time; from transfer_eval.store.results import Store, Result\n"
        "start, target, seed = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])\n"
        "while time.time() < start: pass\n"
        "s = Store(target)\n"
        "for key_seed in (seed, 99):\n"
        "    s.put(Result(checkpoint='c', weights_sha256='w', task='t', task_version=1, mode='m', "
        "protocol_hash='p', seed=key_seed, top1=seed / 10))\n"
    )
    start = time.time() + 3
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(start), str(store_target), str(i)], stderr=subprocess.PIPE)
        for i in range(6)
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    store = Store(store_target)
    assert sorted(r.seed for r in store.query()) == [0, 1, 2, 3, 4, 5, 99]
    store.close()


def test_leaderboard_and_compare_read_back(store_target):
    store = Store(store_target)
    labels = np.arange(40) % 4
    right, wrong = np.tile(labels[:, None], (1, 5)), np.tile(((labels + 1) % 4)[:, None], (1, 5))
    for ck, preds in (("a", wrong), ("b", right)):
        store.put(_result(checkpoint=ck, top1=float((preds[:, 0] == labels).mean()), split_manifest="m"), labels, preds)
    lb = report.leaderboard(store)
    assert [(r.checkpoint, r.cells["t"].top1) for r in lb.rows] == [("b", 1.0), ("a", 0.0)]
    (row,) = report.compare(store, ["a", "b"], resamples=200).rows
    assert row.delta == 1.0 and row.verdict == "win" and (row.b, row.c) == (0, 40)
    store.close()


def test_store_copy_moves_everything_once(store_target, tmp_path):
    src = Store(tmp_path / "src.sqlite")
    src.put(_result(seed=0), np.arange(4), np.zeros((4, 5)))
    src.put(_result(seed=1, status="failed", error="x", top1=None))
    src.close()
    first = cli("store", "copy", tmp_path / "src.sqlite", store_target)
    assert first.returncode == 0 and "copied 2 results (2 new)" in first.stdout, first.stderr
    again = cli("store", "copy", tmp_path / "src.sqlite", store_target)
    assert again.returncode == 0 and "copied 0 results (0 new)" in again.stdout
    dst = Store(store_target)
    rows = dst.query(status=None)
    assert sorted(r.seed for r in rows) == [0, 1]
    assert np.array_equal(dst.predictions(next(r.run_id for r in rows if r.seed == 0))[0], np.arange(4))
    assert json_lines(cli("show", rows[0].run_id, "--results", store_target, "--json").stdout)[0]["checkpoint"] == "c"
    dst.close()


def test_the_schema_version_is_recorded(store_target):
    store = Store(store_target)
    assert store.database.version() == SCHEMA_VERSION
    store.close()


def test_a_postgresql_url_that_cannot_connect_is_one_line(tmp_path):
    from conftest import assert_one_line_error

    proc = cli("leaderboard", "--results", "postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2")
    assert_one_line_error(proc, "cannot connect", "nobody:***@")
    assert "secret" not in proc.stderr
