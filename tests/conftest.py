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
# The user's own settings never reach a test: results, data and registries are what each test names.
USER_SETTINGS = ("TRANSFER_EVAL_DATA", "TRANSFER_EVAL_RESULTS", "TRANSFER_EVAL_REGISTRY")


def hermetic_env(env=None) -> dict:
    """The environment of every program a test starts (`cli`, and processes a test starts itself): none of the
    user's TRANSFER_EVAL_* settings, no progress bars, no network for Hugging Face; `env` adds or overrides."""
    full_env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    full_env.update({"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", **{k: str(v) for k, v in (env or {}).items()}})
    return full_env


def cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the real program, as a user would: `python -m transfer_eval ARGS`, hermetically: none of the user's
    TRANSFER_EVAL_* settings (but the tests' cache), no progress bars, no network for Hugging Face, and a fresh
    empty working folder unless `cwd` is given (so a default results file never lands in the repository).
    `env` adds or overrides variables."""
    full_env = hermetic_env(env)
    cwd = cwd if cwd is not None else tempfile.mkdtemp(prefix="transfer-eval-test-cwd-")
    return subprocess.run(
        [sys.executable, "-m", "transfer_eval", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=1800,
    )


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


def expected_holdout(labels, fraction: float, seed: int = 0) -> list[int]:
    """The documented hold-out rule, written out independently of transfer_eval.tasks.holdout: for each class in
    sorted order, one default_rng(seed) shared across classes permutes that class's indices; the first
    round(fraction * n) (at least 1 when n >= 2) are held out."""
    import numpy as np

    labels = list(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in sorted(set(labels)):
        idx = np.array([i for i, y in enumerate(labels) if y == c], dtype=np.int64)
        n = int(round(fraction * len(idx)))
        if n == 0 and len(idx) >= 2:
            n = 1
        held += rng.permutation(idx)[:n].tolist()
    return sorted(held)


def assert_vit_recipe(task, steps: int, warmup: int, lr_grid=(0.001, 0.003, 0.01, 0.03)):
    """What a user gets for each fine-tuning mode: the ViT paper's recipe with the task's schedule."""
    from transfer_eval import runner
    from transfer_eval.modes import MODES

    assert task.recipes["linear"] == {}
    for mode in ("attention", "full"):
        r = runner.resolve_recipe(task, MODES[mode])
        assert (
            r["preset"],
            r["optimizer"],
            r["momentum"],
            r["batch_size"],
            r["weight_decay"],
            r["grad_clip"],
            r["augment"],
            r["retrain"],
        ) == ("vit", "sgd", 0.9, 512, 0.0, 1.0, True, True), (mode, r)
        assert (r["steps"], r["warmup_steps"], r["lr_grid"]) == (steps, warmup, list(lr_grid)), (mode, r)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "results.sqlite"


# ------------------------------------------------------------------------------------------------ PostgreSQL
# Store tests run against SQLite and PostgreSQL. The server: $TRANSFER_EVAL_TEST_POSTGRES (a URL) where given,
# else a throwaway one started here from Debian's postgresql binaries (as the `postgres` user when run as root),
# on a unix socket in a temporary folder; the tests skip, saying why, only where neither can be had.


def _pg_binary(name: str):
    import glob
    import shutil

    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="session")
def postgres_server():
    url = os.environ.get("TRANSFER_EVAL_TEST_POSTGRES")
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(
            "no PostgreSQL server: initdb/pg_ctl not found (apt-get install postgresql) and "
            "TRANSFER_EVAL_TEST_POSTGRES not set"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    folder = Path(tempfile.mkdtemp(prefix="transfer-eval-pg-"))
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the postgres user Debian's package made
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run a PostgreSQL server as")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", 54000 + os.getpid() % 1000
    init = subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], capture_output=True, text=True
    )
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    start = subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-k {folder} -p {port} -c listen_addresses=''",
            "start",
        ],
        capture_output=True,
        text=True,
    )
    if start.returncode != 0:
        pytest.skip(f"pg_ctl start failed: {start.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://postgres@/postgres?host={folder}&port={port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the test server, dropped afterwards."""
    import uuid

    import psycopg

    name = f"te_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    url = (
        postgres_server.replace("@/postgres?", f"@/{name}?")
        if "@/postgres?" in postgres_server
        else postgres_server.rsplit("/", 1)[0] + f"/{name}"
    )
    yield url
    with psycopg.connect(postgres_server, autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request, tmp_path):
    """Where a store test's results go: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "results.sqlite"
    return request.getfixturevalue("postgres_url")
