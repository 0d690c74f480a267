"""torchrun + DistributedDataParallel: N processes train exactly as one process with the same global batch."""

import os
import subprocess
import sys

import numpy as np
from conftest import cli, json_lines, stored_rows

from transfer_eval.store.results import Store

ARGS = [
    "-c",
    "vit_demo",
    "-t",
    "digits",
    "-m",
    "full",
    "--set",
    "steps=12",
    "--set",
    "warmup_steps=2",
    "--set",
    "batch_size=64",
    "--device",
    "cpu",
    "--json",
]


def test_two_processes_match_one_with_the_same_global_batch_and_seed(tmp_path):
    two_db, one_db = tmp_path / "two.sqlite", tmp_path / "one.sqlite"
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            "-m",
            "transfer_eval",
            "run",
            *ARGS,
            "--results",
            str(two_db),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert two.returncode == 0, two.stderr
    # one process, the same effective batch of 64 in the same two halves the two processes take
    one = cli("run", *ARGS, "--set", "micro_batch_size=32", "--results", one_db)
    assert one.returncode == 0, one.stderr
    (a,), (b,) = json_lines(two.stdout), json_lines(one.stdout)  # rank 0 alone prints
    assert (a["world_size"], b["world_size"]) == (2, 1)
    assert a["top1"] == b["top1"] and a["val_top1"] == b["val_top1"]
    assert np.array_equal(Store(two_db).predictions(a["run_id"])[1], Store(one_db).predictions(b["run_id"])[1])
    assert stored_rows(two_db) == 1  # rank 0 alone writes
