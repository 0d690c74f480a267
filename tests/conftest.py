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


def cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the real program, as a user would: `python -m transfer_eval ARGS`, hermetically: none of the user's
    TRANSFER_EVAL_* settings (but the tests' cache), no progress bars, no network for Hugging Face, and a fresh
    empty working folder unless `cwd` is given (so a default results file never lands in the repository).
    `env` adds or overrides variables."""
    full_env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    full_env.update({"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", **{k: str(v) for k, v in (env or {}).items()}})
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
