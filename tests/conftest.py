import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Every test process and the programs it starts share one fresh feature cache, never the user's.
os.environ["TRANSFER_EVAL_CACHE"] = tempfile.mkdtemp(prefix="transfer-eval-test-cache-")
# Hugging Face `datasets` writes what it reads from Parquet into its cache (read when it is first imported).
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="transfer-eval-test-hf-")
# Read when tqdm and huggingface_hub are first imported, so set before any test imports them: `cli` runs the
# program in this process.
os.environ.update({"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"})
# The user's own settings never reach a test: results, data and registries are what each test names.
USER_SETTINGS = ("TRANSFER_EVAL_DATA", "TRANSFER_EVAL_RESULTS", "TRANSFER_EVAL_REGISTRY")


def hermetic_env(env=None) -> dict:
    """The environment of every program a test starts (`cli`, and processes a test starts itself): none of the
    user's TRANSFER_EVAL_* settings, no progress bars, no network for Hugging Face; `env` adds or overrides."""
    full_env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    full_env.update({"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", **{k: str(v) for k, v in (env or {}).items()}})
    return full_env


def cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the program as a user would (`transfer-eval ARGS`, through `transfer_eval.cli.main`, the entry point
    itself), but in this process, which saves the 3-4 s each new Python spends importing torch and timm.

    Hermetic as a new process would be: the environment of `hermetic_env(env)` (none of the user's TRANSFER_EVAL_*
    settings, the tests' cache, no progress bars, no network for Hugging Face) for the call only; a fresh empty
    working folder unless `cwd` is given (so a default results file never lands in the repository); the
    `transfer_eval` logger left as it was found (main() attaches its stderr handler); Python's
    default warning filters, with the warnings written to stderr; an exception that escapes `main` is written to
    stderr as a traceback with exit status 1, as Python does. Returns what `subprocess.run` would.

    Not for calls from threads, for what only a new process has (PYTHONPATH, OMP_NUM_THREADS, signals): see
    `cli_process`."""
    from click.testing import CliRunner

    from transfer_eval.cli import main

    assert threading.current_thread() is threading.main_thread(), "cli() runs in this process: use cli_process"
    argv = list(map(str, args))
    wanted = hermetic_env(env)
    changes = {k: wanted.get(k) for k in set(os.environ) | set(wanted) if os.environ.get(k) != wanted.get(k)}
    folder = _working_folder(cwd)
    runner = CliRunner()
    code, before = 0, os.getcwd()
    logger = logging.getLogger("transfer_eval")  # main() attaches its stderr handler: a new process's state again
    logged = (list(logger.handlers), logger.level, logger.propagate)
    with runner.isolation(env=changes) as (out, err, _), warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        for action, category, module in PYTHON_WARNING_DEFAULTS:
            warnings.filterwarnings(action, category=category, module=module)
        old_argv, sys.argv = sys.argv, ["transfer-eval", *argv]
        os.chdir(folder)
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                sys.stderr.write(e.code + "\n")
        except Exception:
            sys.stderr.write(traceback.format_exc())
            code = 1
        finally:
            os.chdir(before)
            sys.argv = old_argv
            logger.handlers[:], logger.level, logger.propagate = logged
        for w in caught:
            sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
        sys.stdout.flush()
        sys.stderr.flush()
    return subprocess.CompletedProcess(["transfer-eval", *argv], code, _text(out), _text(err))


# What `python -m transfer_eval` starts with (the warnings module's documented default filters).
PYTHON_WARNING_DEFAULTS = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)


def _working_folder(cwd) -> str:
    """`cwd` where given, else a fresh empty folder, so that a default results file never lands in the repository."""
    return cwd if cwd is not None else tempfile.mkdtemp(prefix="transfer-eval-test-cwd-")


def _text(stream) -> str:
    return stream.getvalue().decode("utf-8", "replace").replace("\r\n", "\n")


def cli_process(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the real program in a new process, `python -m transfer_eval ARGS`, with `cli`'s hermetic environment
    and fresh working folder: for what only a new process has (PYTHONPATH, thread counts read at start-up, calls
    from threads)."""
    full_env = hermetic_env(env)
    return subprocess.run(
        [sys.executable, "-m", "transfer_eval", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=_working_folder(cwd),
        timeout=1800,
    )


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def leaderboard_of(db, **kw):
    """report.leaderboard over the store at `db`, the store closed again."""
    from transfer_eval import report
    from transfer_eval.store.results import Store

    store = Store(db)
    try:
        return report.leaderboard(store, **kw)
    finally:
        store.close()


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
    from transfer_eval.methods.modes import MODES
    from transfer_eval.run import runner

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


def digits_results(db: Path, right: dict, mode: str = "linear", n: int = 100) -> Path:
    """A store holding one `mode` result on digits for each checkpoint of `right` (name -> how many of `n` test
    examples it gets right, the first ones), with per-sample predictions: for report, compare and leaderboard
    tests that need no run."""
    import numpy as np

    from transfer_eval.store.results import Result, Store

    store = Store(db)
    labels = (np.arange(n) % 10).astype(np.int32)
    for checkpoint, k in right.items():
        top5 = (labels[:, None] + np.arange(1, 6)[None, :]) % 10
        top5[:k, 0] = labels[:k]
        result = Result(
            checkpoint=checkpoint, weights_sha256="w" * 64, task="digits", task_version=1, mode=mode,
            protocol_hash="p" * 16, seed=0, top1=k / n, n_test=n, split_manifest="m", params_total=1000,
            params_trainable=110, params_per_task=110, bytes_per_task=536, train_pflops_total=1.0,
            fwd_gflops_per_image=0.5,
        )  # fmt: skip
        store.put(result, labels, top5.astype(np.int32))
    store.close()
    return db


DEMO_COMMAND = ("run", "-c", "vit_demo_shapes", "-t", "digits", "-m", "linear,attention,full")  # README's set-up


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's demo (DEMO_COMMAND, with --json), run once per session into its own store: the tests of the
    demo read it, and the README's test starts from a copy of it (its first commands find the demo stored).
    Read it, or copy it (sqlite3's backup); never write to it."""
    db = tmp_path_factory.mktemp("demo") / "results.sqlite"
    proc = cli(*DEMO_COMMAND, "--results", db, "--json")
    assert proc.returncode == 0, proc.stderr
    return db, proc
