"""The same numbers on every device: the GPU's numeric path, emulated on the CPU, gives the CPU's results.

On CUDA, `--precision auto` trains in bf16 autocast and extracts features and scores in strict fp32; small images
are resized on the device and read by DataLoader workers. Each of those runs here on the CPU: the policy of CUDA
(devices.precision_policy for a cuda device; bf16 autocast on the CPU reproduces bf16 arithmetic), `--device-resize
on` and `--workers 2`. The probe must score val alike for every C and predict every test image alike; fine-tuning
within 1 point.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cli, json_lines

from transfer_eval import devices
from transfer_eval.errors import UserError
from transfer_eval.store.results import Store

CUDA_PATH = ("--device", "cpu", "--device-resize", "on", "--workers", "2")


@pytest.fixture
def gpu_numerics(monkeypatch):
    """`auto` on this CPU computes as `auto` on CUDA: features and scoring fp32, training bf16 autocast."""
    real = devices.precision_policy

    def as_on_cuda(name, device):
        return real(name, torch.device("cuda")) if name == "auto" else real(name, device)

    monkeypatch.setattr(devices, "precision_policy", as_on_cuda)


def _run(tmp_path, name, *args):
    """One run with a cache and a store of its own (so nothing is shared between the two paths)."""
    proc = cli(
        "run", *args, "--json", "--results", tmp_path / f"{name}.sqlite", env={"TRANSFER_EVAL_CACHE": tmp_path / name}
    )
    assert proc.returncode == 0, proc.stderr
    return json_lines(proc.stdout)


@pytest.mark.parametrize("checkpoint", ["vit_demo", "vit_demo_shapes"])
def test_the_probe_on_the_gpus_numeric_path_equals_the_cpus(tmp_path, checkpoint, request):
    common = ("-c", checkpoint, "-t", "digits", "-m", "linear")
    (cpu,) = _run(tmp_path, "cpu", *common, "--device", "cpu")
    request.getfixturevalue("gpu_numerics")
    (gpu,) = _run(tmp_path, "gpu", *common, *CUDA_PATH)
    assert gpu["precision"] == "features fp32, train bf16-autocast, eval fp32" and cpu["precision"] == "fp32"
    assert gpu["input_pipeline"] == "device-resize from 8x8" and cpu["input_pipeline"] == "cpu"
    # features fp32 on both paths and pixels resized to the bit: the same val scores for every C, the same C,
    # the same prediction for every test image
    assert gpu["selection"]["grid"] == cpu["selection"]["grid"]
    assert gpu["selection"]["chosen"]["C"] == cpu["selection"]["chosen"]["C"]
    assert (gpu["top1"], gpu["top5"]) == (cpu["top1"], cpu["top5"])
    stored = {}
    for name, row in (("cpu", cpu), ("gpu", gpu)):
        store = Store(tmp_path / f"{name}.sqlite")
        stored[name] = store.predictions(row["run_id"])
        store.close()
    assert np.array_equal(stored["gpu"][0], stored["cpu"][0]) and np.array_equal(stored["gpu"][1], stored["cpu"][1])


def test_fine_tuning_on_the_gpus_numeric_path_stays_within_a_point(tmp_path, gpu_numerics):
    # a short schedule: bf16 autocast on a CPU without bf16 units is ~15x slower than fp32 (BENCHMARKS.md has
    # the recipe's 200 steps of `full`: 96.10% fp32, 96.66% on the emulated GPU path)
    common = (
        "-c",
        "vit_demo_shapes",
        "-t",
        "digits",
        "-m",
        "attention",
        "--set",
        "steps=20",
        "--set",
        "warmup_steps=2",
    )
    (gpu,) = _run(tmp_path, "gpu", *common, *CUDA_PATH)
    (cpu,) = _run(tmp_path, "cpu", *common, "--device", "cpu", "--precision", "fp32")
    assert gpu["precision"] == "features fp32, train bf16-autocast, eval fp32" and cpu["precision"] == "fp32"
    assert abs(gpu["top1"] - cpu["top1"]) <= 0.01, (gpu["top1"], cpu["top1"])


def test_bf16_is_chosen_on_purpose_stored_apart_and_its_features_cached_apart(tmp_path):
    common = ("-c", "vit_demo", "-t", "digits", "-m", "linear", "--limit", "60", "--device", "cpu")
    env = {"TRANSFER_EVAL_CACHE": tmp_path / "cache"}
    runs = []
    for extra in ((), ("--precision", "bf16"), ("--precision", "bf16")):
        proc = cli("run", *common, *extra, "--json", "--results", tmp_path / "r.sqlite", env=env)
        assert proc.returncode == 0, proc.stderr
        runs += json_lines(proc.stdout)
    auto, bf16, again = runs
    assert auto["precision"] == "fp32" and bf16["precision"] == "bf16-autocast"
    assert auto["run_id"] != bf16["run_id"] and again["run_id"] == bf16["run_id"]  # its own key; then stored
    assert auto["protocol_hash"] != bf16["protocol_hash"]
    listed = cli("cache", "list", env=env)
    assert listed.stdout.count("vit_demo") >= 4, listed.stdout  # train and val, once per precision


def test_the_precision_policy():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert devices.precision_policy("auto", cuda) == devices.Precision("fp32", "bf16", "fp32")
    assert devices.precision_policy("auto", cpu).describe() == "fp32"
    assert devices.precision_policy("bf16", cpu).describe() == "bf16-autocast"
    with devices.using(devices.precision_policy("bf16", cpu)), devices.autocast(cpu, "features"):
        assert torch.is_autocast_enabled("cpu")  # bf16 on a CPU, when asked
        assert devices.precision(cpu) == "bf16-autocast"
    with devices.autocast(cpu, "train"):
        assert not torch.is_autocast_enabled("cpu") and devices.precision(cpu) == "fp32"
    with devices.using(devices.precision_policy("auto", cuda)):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32  # strict fp32
    with devices.autocast(cpu, "features"):  # outside a run too (`features`, `bench`): every fp32 pass is strict
        assert not torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.allow_tf32  # restored afterwards (torch's default)


def test_a_bad_precision_is_one_line(tmp_path):
    proc = cli("run", "-c", "vit_demo", "-t", "digits", "-m", "linear", "--precision", "fp16")
    assert proc.returncode == 2 and "fp16" in proc.stderr
    with pytest.raises(UserError, match="--precision 'fp16': use auto, fp32, bf16"):
        devices.precision_policy("fp16", torch.device("cpu"))
