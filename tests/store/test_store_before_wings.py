"""A store written by the suite before the package was laid out in wings (tree f03c4aa, flat modules) is read by
today's code and its runs are found and skipped: moving the code changed no run key, schema or protocol hash.

The fixture was written at f03c4aa, 2026-12-05, by
    transfer-eval run -c vit_demo_shapes -t digits -m linear,knn,fewshot,bitfit --set steps=20 --results store.sqlite
"""

import shutil
import sqlite3
from pathlib import Path

from conftest import cli, json_lines, stored_rows

FIXTURE = Path(__file__).parent.parent / "fixtures" / "store_f03c4aa.sqlite"
COMMAND = ("run", "-c", "vit_demo_shapes", "-t", "digits", "-m", "linear,knn,fewshot,bitfit", "--set", "steps=20")


def test_a_store_from_before_the_move_is_read_and_its_runs_skipped(tmp_path):
    db = tmp_path / "store.sqlite"
    shutil.copy(FIXTURE, db)
    with sqlite3.connect(db) as con:
        before = {r[0]: r[1] for r in con.execute("SELECT run_id, top1 FROM results")}
    assert len(before) == 15  # linear, knn, 4 shots x 3 seeds of fewshot, bitfit
    proc = cli(*COMMAND, "--results", db, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert len(rows) == 15 and stored_rows(db) == 15  # nothing ran again, nothing was added
    assert {r["run_id"]: r["top1"] for r in rows} == before
    assert proc.stderr.count("skipped") == 15, proc.stderr
    board = cli("leaderboard", "--results", db, "--format", "json")
    assert board.returncode == 0 and "vit_demo_shapes" in board.stdout, board.stderr
