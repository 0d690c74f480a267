"""The results store: one row per run key, atomic replacement, predictions kept."""

import numpy as np

from transfer_eval.store.results import SCHEMA_VERSION, Result, Store


def _result(**kw):
    base = dict(
        checkpoint="c",
        weights_sha256="w" * 64,
        task="t",
        task_version=1,
        mode="linear",
        protocol_hash="p" * 16,
        seed=0,
        top1=0.5,
        recipe={"lr": 0.1},
        selection={"chosen": {"C": 1.0}},
    )
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
        con.execute(
            "CREATE TABLE results (run_id INTEGER PRIMARY KEY AUTOINCREMENT, checkpoint TEXT, "
            "weights_sha256 TEXT, task TEXT, task_version INTEGER, mode TEXT, protocol_hash TEXT, "
            "seed INTEGER, status TEXT, top1 REAL, recipe TEXT, selection TEXT, val_holdout TEXT, "
            "skipped_files TEXT, UNIQUE (checkpoint, weights_sha256, task, task_version, mode, "
            "protocol_hash, seed))"
        )
        con.execute(
            "INSERT INTO results (checkpoint, weights_sha256, task, task_version, mode, protocol_hash, "
            "seed, status, top1, recipe, selection) VALUES ('old', 'w', 't', 1, 'linear', 'p', 0, 'ok', "
            "0.25, '{}', '{}')"
        )
    store = Store(db)
    (old,) = store.query()
    assert old.top1 == 0.25 and old.balanced_top1 is None
    store.put(_result(balanced_top1=0.5, shots=5))
    assert {r.checkpoint: r.balanced_top1 for r in store.query()} == {"old": None, "c": 0.5}
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # migrated, and says so
    store.close()


def test_a_store_of_a_newer_schema_is_refused_in_one_line(tmp_path):
    import sqlite3

    from conftest import assert_one_line_error, cli

    db = tmp_path / "new.sqlite"
    Store(db).close()
    with sqlite3.connect(db) as con:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert_one_line_error(cli("leaderboard", "--results", db), "schema version", "upgrade transfer-eval")
    assert_one_line_error(
        cli("run", "-c", "vit_demo", "-t", "digits", "-m", "linear", "--results", db),
        "newer than this transfer-eval reads",
    )


def test_a_corrupted_store_is_one_line_not_a_traceback(tmp_path):
    from conftest import assert_one_line_error, cli

    db = tmp_path / "broken.sqlite"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)  # a header, then garbage
    assert_one_line_error(
        cli("leaderboard", "--results", db),
        "is damaged or not a transfer-eval SQLite database",
        "restore it from a copy",
    )


def test_many_processes_opening_a_new_store_at_once(tmp_path):
    """Setting up a new store can deadlock two openers, and SQLite then answers "locked" at once instead of
    waiting: every opener must still succeed. Six processes open five new stores in lockstep."""
    import subprocess
    import sys
    import time

    code = (
        "import sys, time; from transfer_eval.store.results import Store, Result\n"
        "start, folder, seed = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])\n"
        "for r in range(5):\n"
        "    while time.time() < start + 0.4 * r: pass\n"  # every process opens store r at the same instant
        "    Store(f'{folder}/s{r}.sqlite').put(Result(checkpoint='c', weights_sha256='w', task='t', "
        "task_version=1, mode='m', protocol_hash='p', seed=seed))\n"
    )
    start = time.time() + 4
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(start), str(tmp_path), str(i)], stderr=subprocess.PIPE)
        for i in range(6)
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    for r in range(5):
        assert sorted(x.seed for x in Store(tmp_path / f"s{r}.sqlite").query()) == list(range(6))
