"""scripts/gpu_check.sh runs whole on a machine without CUDA, and every step's command line runs (a GPU machine
is borrowed by the quarter hour: a step that fails at once, as a shell function under `timeout` did, wastes it)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import hermetic_env

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check_summary  # noqa: E402

GPU_STEPS = [
    "demo_cpu",
    "demo_cuda",
    "demo_cuda_full",
    "precision_fp32",
    "flowers_data",
    "flowers_run",
    "flowers_decode",
    "bench",
    "probe_imagenet",
    "bench_peft",
]


def _check(out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)],
        env=hermetic_env({"PYTHON": sys.executable, **env}),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_steps_command_line_runs(tmp_path):
    """GPU_CHECK_DRY=1: each step's command with --help. Exit 0 everywhere: no command is missing (127), no
    option is unknown, no script is absent."""
    proc = _check(tmp_path / "out", GPU_CHECK_DRY="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["steps"]) == ["cuda_tests", *GPU_STEPS]
    assert {s["status"] for s in summary["steps"].values()} == {"ok"}, summary["steps"]
    for name in summary["steps"]:  # each step said when it started and when it ended
        assert f"gpu_check: {name} started" in proc.stderr and f"gpu_check: {name} ended: exit 0" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the GPU steps would run")
def test_without_cuda_it_runs_through_reporting_the_gpu_steps_skipped(tmp_path):
    proc = _check(tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.json", "summary.md"]  # <= 8 files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"]["cuda_tests"]["status"] == "ok"
    assert "skipped" in summary["steps"]["cuda_tests"]["pytest"]  # the CUDA tests skip, saying why
    assert all(summary["steps"][s]["status"] == "skipped (no CUDA device)" for s in GPU_STEPS)
    assert summary["environment"]["cuda"] is False and summary["environment"]["torch"] == torch.__version__
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/steps.tsv" in names and "logs/cuda_tests.out" in names
    assert "# GPU check: no CUDA device" in (out / "summary.md").read_text()


def test_a_step_past_the_deadline_is_not_started(tmp_path):
    proc = _check(tmp_path / "out", GPU_CHECK_DRY="1", GPU_CHECK_DEADLINE="10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = json.loads((tmp_path / "out" / "summary.json").read_text())["steps"]
    assert {s["status"] for s in steps.values()} == {"not started: out of time"}


def _probe(checkpoint, top1, c, precision="fp32"):
    return {
        "checkpoint": checkpoint,
        "mode": "linear",
        "status": "ok",
        "top1": top1,
        "selection": {"chosen": {"C": c}},
        "precision": precision,
    }


def test_the_summary_compares_the_demo_on_cuda_with_the_cpu():
    cpu = [_probe("vit_demo", 0.8720, 316.2), _probe("vit_demo_shapes", 0.9406, 0.1)]
    cuda = [_probe("vit_demo", 0.7829, 100.0, "bf16"), _probe("vit_demo_shapes", 0.9388, 0.1)]
    verdicts = {r["checkpoint"]: r["verdict"] for r in gpu_check_summary.demo_comparison(cpu, cuda)}
    assert verdicts == {"vit_demo": "DIFFERS", "vit_demo_shapes": "same"}  # 0.18 point and the same C
    cuda[1] = _probe("vit_demo_shapes", 0.9300, 0.1)  # the same C but 1.06 points lower
    assert gpu_check_summary.demo_comparison(cpu, cuda)[1]["verdict"] == "DIFFERS"


def test_the_flowers_like_folder_is_read_by_the_flowers_task_and_its_jpegs_are_photo_sized(tmp_path):
    import flowers_like

    from transfer_eval import tasks

    made = flowers_like.write(tmp_path, images=16, workers=2)
    assert 70 <= made["mean_kb"] <= 160, made  # like a real 500x375 photo, not a smooth few-kB image
    flowers = tasks.discover()["flowers102"]
    ctx = tasks.LoadContext(tmp_path, verify=False)
    sizes = {s: len(flowers.dataset(s, ctx)) for s in ("train", "val", "test")}
    assert sizes == {"train": 4, "val": 4, "test": 8}
    assert flowers.dataset("train", ctx).image(0).size == (500, 375)


def test_the_summary_shows_the_benchs_steady_state_extraction():
    rate = {"suite_images_per_s": 900.0, "ref_images_per_s": 1000.0, "ratio_vs_reference": 0.9}
    jpeg = {"images_per_s": 450.0, "startup_s": 2.5, "mean_jpeg_kb": 91.0, "vs_model": 0.45}
    bench = {
        "checkpoint": "vit_base_patch16_224",
        "batch_size": 128,
        "matmul_peak_tflops": 700.0,
        "modes": {"full": rate},
        "extraction": {
            **rate,
            "images": 3072,
            "startup_s": 1.5,
            "jpeg": jpeg,
            "jpeg_device_decode": {"images_per_s": 4100.0, "startup_s": 0.5, "vs_model": 4.1},
        },
        "input_pipeline": {
            "workers": 15,
            "mean_jpeg_kb": 91.0,
            "jpeg_decode_images_per_s": 2900.0,
            "jpeg_decode_vs_training": 0.68,
            "jpeg_device_decode_images_per_s": 5200.0,
            "jpeg_device_decode_vs_training": 1.22,
            "device_decode_levels": {"train": {"max": 3.0, "mean": 0.012, "differing": 0.05}},
        },
    }
    env = {
        "device": "GPU",
        "date": "2026-12-04",
        "torch": "t",
        "timm": "m",
        "torchvision": "v",
        "cuda_version": "c",
        "cpus": 16,
    }
    summary = {
        "environment": env,
        "steps": {"bench": {"status": "ok", "seconds": 90, "json": bench}},
        "demo_cuda_vs_cpu": [],
        "fp32_vs_auto": [],
    }
    text = gpu_check_summary.markdown(summary)
    assert "| extraction, decoded | 900 | 1000 | 0.900 |" in text
    assert "| extraction, 91 kB JPEGs | 450 | 1000 | 0.450 |" in text
    assert "| extraction, 91 kB JPEGs, --decode device | 4100 | 1000 | 4.100 |" in text
    assert "3072 images at steady state" in text and "1.50 s decoded, 2.50 s JPEG files" in text
    assert "| 500x375 JPEG, --decode device | 5200 | 1.22x |" in text
    assert "(train, one batch, the same draws): max 3 levels, mean 0.012, 5.00% of values differ" in text


def test_the_summary_puts_the_device_decode_beside_the_cpu_decode():
    env = {"device": "GPU", "date": "d", "torch": "t", "timm": "m", "torchvision": "v", "cuda_version": "c", "cpus": 16}
    cpu = [
        {"mode": "linear", "top1": 0.5012, "train_images_per_second": 2100.0, "input_pipeline": "cpu"},
        {"mode": "attention", "top1": 0.4, "train_images_per_second": 2400.0, "input_pipeline": "cpu"},
    ]
    dev = [
        {"mode": "linear", "top1": 0.4988, "train_images_per_second": 6100.0, "input_pipeline": "device-decode"},
        {"mode": "attention", "top1": 0.41, "train_images_per_second": 4300.0, "eval_images_per_second": 5000.0},
    ]
    steps = {"flowers_run": {"status": "ok", "seconds": 60, "json": cpu}}
    steps["flowers_decode"] = {"status": "ok", "seconds": 20, "json": dev}
    summary = {"environment": env, "steps": steps, "demo_cuda_vs_cpu": [], "fp32_vs_auto": []}
    text = gpu_check_summary.markdown(summary)
    assert "linear with --decode device: extraction 6100 img/s (CPU decode: 2100)" in text
    assert "top-1 49.88% (CPU decode: 50.12%)" in text
    assert "attention with --decode device: training 4300 img/s (CPU decode: 2400), test 5000 img/s" in text


def test_the_summary_puts_each_peft_modes_step_beside_full():
    def loop(step_s, peak, trainable):
        return {
            "suite_step_s": step_s,
            "ref_step_s": step_s * 0.98,
            "suite_peak_mb": peak,
            "params_trainable": trainable,
        }

    modes = {"full": loop(0.2, 20000.0, 85_875_556), "ssf": loop(0.15, 23000.0, 282_724)}
    summary = {
        "environment": {"device": "GPU", "date": "d", "torch": "t", "timm": "m", "torchvision": "v",
                        "cuda_version": "c", "cpus": 16},
        "steps": {"bench_peft": {"status": "ok", "seconds": 90, "json": {
            "checkpoint": "vit_base_patch16_224", "batch_size": 64, "modes": modes}}},
        "demo_cuda_vs_cpu": [],
        "fp32_vs_auto": [],
    }  # fmt: skip
    text = gpu_check_summary.markdown(summary)
    assert "## the PEFT modes' training step: vit_base_patch16_224, batch 64" in text
    assert "| full | 85,875,556 | 200.0 | 1.00 | 20000 | 1.00 | 196.0 |" in text
    assert "| ssf | 282,724 | 150.0 | 0.75 | 23000 | 1.15 | 147.0 |" in text
