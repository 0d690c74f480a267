import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Every test process and the programs it starts share one fresh feature cache, never the user's.
os.environ["TRANSFER_EVAL_CACHE"] = tempfile.mkdtemp(prefix="transfer-eval-test-cache-")


def cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the real program, as a user would: `python -m transfer_eval ARGS`."""
    full_env = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "transfer_eval", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=1800)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def stored_rows(db: Path) -> int:
    if not Path(db).exists():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("transfer-eval: error:"), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "results.sqlite"
