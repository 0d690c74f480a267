"""The results store: one row per run key, atomic replacement, predictions kept."""

import numpy as np

from transfer_eval.results import Result, Store


def _result(**kw):
    base = dict(checkpoint="c", weights_sha256="w" * 64, task="t", task_version=1, mode="linear",
                protocol_hash="p" * 16, seed=0, top1=0.5, recipe={"lr": 0.1}, selection={"chosen": {"C": 1.0}})
    return Result(**{**base, **kw})


def test_put_get_roundtrip(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    labels, top5 = np.arange(10) % 3, np.tile(np.arange(5), (10, 1))
    run_id = store.put(_result(), labels, top5)
    got = store.get(run_id)
    assert got.top1 == 0.5 and got.recipe == {"lr": 0.1} and got.selection["chosen"]["C"] == 1.0
    assert store.has(got.key)
    lab, t5 = store.predictions(run_id)
    assert np.array_equal(lab, labels) and np.array_equal(t5, top5)


def test_same_key_leaves_one_row(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.put(_result(top1=0.1), np.zeros(3), np.zeros((3, 5)))
    second = store.put(_result(top1=0.9), np.ones(3), np.ones((3, 5)))
    rows = store.query()
    assert len(rows) == 1 and rows[0].top1 == 0.9 and rows[0].run_id == second
    assert store.db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 1


def test_other_seed_is_another_row_and_failed_runs_do_not_count(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.put(_result(seed=0))
    failed = _result(seed=1, status="failed", error="diverged", top1=None)
    store.put(failed)
    assert store.has(_result(seed=0).key)
    assert not store.has(failed.key)  # the next run retries it
    assert len(store.query()) == 1 and len(store.query(status=None)) == 2


def test_filters(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    store.put(_result(mode="linear"))
    store.put(_result(mode="full"))
    store.put(_result(task="other"))
    assert {r.mode for r in store.query(modes=["full"])} == {"full"}
    assert {r.task for r in store.query(tasks=["other"])} == {"other"}


def test_an_older_store_gains_new_fields(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as con:  # a store from before `balanced_top1` and `shots` existed
        con.execute("CREATE TABLE results (run_id INTEGER PRIMARY KEY AUTOINCREMENT, checkpoint TEXT, "
                    "weights_sha256 TEXT, task TEXT, task_version INTEGER, mode TEXT, protocol_hash TEXT, "
                    "seed INTEGER, status TEXT, top1 REAL, recipe TEXT, selection TEXT, val_holdout TEXT, "
                    "skipped_files TEXT, UNIQUE (checkpoint, weights_sha256, task, task_version, mode, "
                    "protocol_hash, seed))")
        con.execute("INSERT INTO results (checkpoint, weights_sha256, task, task_version, mode, protocol_hash, "
                    "seed, status, top1, recipe, selection) VALUES ('old', 'w', 't', 1, 'linear', 'p', 0, 'ok', "
                    "0.25, '{}', '{}')")
    store = Store(db)
    (old,) = store.query()
    assert old.top1 == 0.25 and old.balanced_top1 is None
    store.put(_result(balanced_top1=0.5, shots=5))
    assert {r.checkpoint: r.balanced_top1 for r in store.query()} == {"old": None, "c": 0.5}
