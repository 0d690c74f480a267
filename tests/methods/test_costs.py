"""Compute and parameter-sharing cost: counts pinned against independent arithmetic and the papers' tables."""

import numpy as np
import pytest
import timm
import torch
from conftest import cli, json_lines
from safetensors import safe_open

from transfer_eval import checkpoints
from transfer_eval.methods import costs, inference, modes
from transfer_eval.store.results import Store

CPU = torch.device("cpu")


def _matmul_flops(dim, depth, tokens, patch, img, classes, mlp_ratio=4):
    """Forward FLOPs (2 per multiply-add) of a timm ViT's matmuls: what torch.utils.flop_counter counts."""
    patches = (img // patch) ** 2
    patch_embed = 2 * patches * (3 * patch * patch) * dim
    qkv, proj = 2 * tokens * dim * 3 * dim, 2 * tokens * dim * dim
    scores_and_mix = 2 * (2 * tokens * tokens * dim)
    mlp = 2 * (2 * tokens * dim * mlp_ratio * dim)
    head = 2 * dim * classes
    return dict(patch=patch_embed, attn=depth * (qkv + proj + scores_and_mix), mlp=depth * mlp, head=head)


@pytest.mark.parametrize(
    "arch, total, attention",
    [
        ("vit_small_patch16_224", 22_050_664, 7_556_968),
        ("vit_base_patch16_224", 86_567_656, 29_268_712),
        ("vit_large_patch16_224", 304_326_632, 101_988_328),
    ],
)
def test_parameter_counts(arch, total, attention):
    model = timm.create_model(arch, pretrained=False, num_classes=1000)
    assert costs.count(model) == total
    assert costs.count(model, modes.apply(modes.MODES["attention"], model)) == attention


def test_vit_b16_forward_is_35_1_gflops():
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000)
    flops = costs.forward_flops(model, {"input_size": (3, 224, 224)}, CPU)
    assert flops == sum(_matmul_flops(768, 12, 197, 16, 224, 1000).values())
    assert round(flops / 1e9, 1) == 35.1  # Scaling-ViT, Table 2: B/16 at 224 px
    assert round(flops / 2e9, 1) == 17.6  # DeiT / timm: GMACs


def test_training_step_counts_show_the_frozen_layers():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, img_size=64)
    cfg = {"input_size": (3, 64, 64)}
    part = _matmul_flops(384, 12, 17, 16, 64, 10)
    fwd = costs.forward_flops(model, cfg, CPU)
    assert fwd == sum(part.values())
    got = {}
    for name in ("linear", "attention", "full"):
        modes.apply(modes.MODES[name], model)
        got[name] = costs.train_step_flops(model, cfg, CPU)
    # backward: a weight gradient and an input gradient each cost one forward's FLOPs per matmul.
    # full: everything 3x, except the patch embedding, whose input (the image) needs no gradient.
    assert got["full"] == 2 * part["patch"] + 3 * (part["attn"] + part["mlp"] + part["head"])
    # attention-only: frozen MLPs pass input gradients down (2x) but compute no weight gradient; the frozen
    # patch embedding is below every trainable parameter, so it costs its forward only.
    assert got["attention"] == part["patch"] + 3 * (part["attn"] + part["head"]) + 2 * part["mlp"]
    # a probe's head: weight gradient only; nothing flows into the frozen backbone
    assert got["linear"] == fwd + part["head"]
    assert got["linear"] < got["attention"] < got["full"]


def test_cost_command_without_data(tmp_path):
    proc = cli("cost", "-c", "vit_small_patch16_18x2_224", "-m", "attention,full", "--num-classes", "100", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["mode"]: r for r in json_lines(proc.stdout)}
    dim, depth, branches = 384, 18, 2
    mhsa = (dim * 3 * dim + 3 * dim) + (dim * dim + dim)
    expected = depth * branches * mhsa + 197 * dim + dim * 100 + 100
    assert rows["attention"]["params_per_task"] == expected  # both attention branches of every parallel block
    assert rows["full"]["params_per_task"] == rows["full"]["params_total"]
    assert rows["attention"]["bytes_per_task"] == pytest.approx(4 * expected, rel=0.01)  # fp32 + a small header
    assert 0.6 < rows["attention"]["storage_saved_per_extra_task"] < 0.7  # "saves two thirds"
    assert rows["attention"]["fwd_gmacs_per_image"] * 2 == pytest.approx(rows["attention"]["fwd_gflops_per_image"])
    table = cli("cost", "-c", "vit_demo", "-m", "linear,attention,full")
    assert table.returncode == 0 and "GMACs" in table.stdout and "attention" in table.stdout


def test_cost_unknown_checkpoint_is_exit_2():
    proc = cli("cost", "-c", "vit_bsae_patch16_224", "-m", "full")
    assert proc.returncode == 2 and "unknown checkpoint" in proc.stderr


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("attention", ["--set", "steps=30", "--set", "warmup_steps=3"]),
        ("lora", ["--set", "steps=30", "--set", "warmup_steps=3", "--set", "lora_rank=4"]),
        ("linear", ["--set", "c_grid=[0.1,10]"]),
    ],
)
def test_saved_delta_reproduces_the_test_predictions_exactly(tmp_path, mode, extra):
    db, deltas = tmp_path / "r.sqlite", tmp_path / "deltas"
    proc = cli(
        "run", "-c", "vit_demo", "-t", "digits", "-m", mode, "--results", db, "--save-delta", deltas, "--json", *extra
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json_lines(proc.stdout)
    (path,) = deltas.glob("*.safetensors")
    assert path.stat().st_size == row["bytes_per_task"]

    from transfer_eval import tasks
    from transfer_eval.tasks import LoadContext

    ck = checkpoints.load_registry()["vit_demo"]
    model, cfg = checkpoints.build_model(ck, 10)  # the shared checkpoint, fresh head
    meta = checkpoints.apply_delta(model, path)
    assert meta["task"] == "digits" and meta["mode"] == mode
    with safe_open(str(path), framework="pt") as f:  # the delta keeps the adapters; applied, they are merged
        assert any("lora_" in k for k in f.keys()) == (mode == "lora")
    assert not any("lora_" in k for k in model.state_dict())
    test = tasks.discover()["digits"].dataset("test", LoadContext(tmp_path))
    model.eval()
    logits = torch.cat(list(inference.outputs(model, test, cfg, CPU, batch_size=256))).numpy()
    labels, top5 = Store(db).predictions(row["run_id"])
    assert np.array_equal(labels, test.labels)
    assert np.array_equal(np.argsort(-logits, axis=1, kind="stable")[:, :5], top5)


def test_delta_that_does_not_fit_is_refused(tmp_path):
    from safetensors.torch import save_file

    from transfer_eval.errors import UserError

    model, _ = checkpoints.build_model(checkpoints.load_registry()["vit_demo"], 10)
    save_file({"head.weight": torch.zeros(7, 128)}, str(tmp_path / "d.safetensors"))
    with pytest.raises(UserError, match="head.weight"):
        checkpoints.apply_delta(model, tmp_path / "d.safetensors")


def test_peak_memory_is_measured_per_block():
    """In a fresh process (a long-lived one reuses freed pages without its resident set growing)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, torch; from transfer_eval.devices import PeakMemory\n"
        "with PeakMemory(torch.device('cpu')) as small: pass\n"
        "with PeakMemory(torch.device('cpu')) as big:\n"
        "    block = np.ones((64, 2**20), np.float32); block += 1\n"  # 256 MiB touched
        "del block\n"
        "with PeakMemory(torch.device('cpu')) as after: pass\n"
        "print(small.mb, big.mb, after.mb)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    small, big, after = map(float, out)
    assert big - small > 200  # the block's 256 MiB show in its own peak
    assert after < big - 200  # and the peak is reset for the next block


def test_bench_reports_side_by_side_figures():
    """The benchmark runs and its figures are consistent (targets are checked in BENCHMARKS.md, not here)."""
    proc = cli(
        "bench",
        "-c",
        "vit_demo",
        "-m",
        "attention,full",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--images",
        "16",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    (report,) = json_lines(proc.stdout)
    att, full = report["modes"]["attention"], report["modes"]["full"]
    assert report["matmul_peak_tflops"] > 0 and report["device"].startswith("cpu")
    for r in (att, full):
        assert r["suite_step_s"] > 0 and r["ref_step_s"] > 0
        assert r["ratio_vs_reference"] == pytest.approx(r["ref_step_s"] / r["suite_step_s"])
        assert r["suite_tflops"] == pytest.approx(r["train_gflops_per_step"] / 1e3 / r["suite_step_s"])
        assert r["suite_peak_mb"] > 0 and r["ref_peak_mb"] > 0
    assert att["params_trainable"] == 395_368 and full["params_trainable"] == 930_920  # the demo ViT, 1000 classes
    assert att["train_gflops_per_step"] < full["train_gflops_per_step"]
    assert report["attention_vs_full_step_time"] == pytest.approx(att["suite_step_s"] / full["suite_step_s"])
    e = report["extraction"]
    assert e["images"] == 16 and e["suite_images_per_s"] > 0 and e["startup_s"] > 0
    assert e["ratio_vs_reference"] == pytest.approx(e["suite_images_per_s"] / e["ref_images_per_s"])
    assert e["jpeg"]["images_per_s"] > 0 and e["jpeg"]["vs_model"] == pytest.approx(
        e["jpeg"]["images_per_s"] / e["ref_images_per_s"]
    )
    assert 70 <= e["jpeg"]["mean_jpeg_kb"] <= 160  # photo-like files, not a smooth few-kB image
    d = e["jpeg_device_decode"]  # the same files through --decode device (here on the CPU, the same code)
    assert d["images_per_s"] > 0 and d["vs_model"] == pytest.approx(d["images_per_s"] / e["ref_images_per_s"])
    assert "bench: extraction: {" in proc.stderr  # each part's figures logged as soon as they exist
    pipe = report["input_pipeline"]
    rates = [
        "small_cpu_images_per_s",
        "small_device_images_per_s",
        "jpeg_decode_images_per_s",
        "jpeg_cached_images_per_s",
        "jpeg_device_decode_images_per_s",
    ]
    assert all(pipe[k] > 0 for k in rates) and pipe["workers"] == 0 and 70 <= pipe["mean_jpeg_kb"] <= 160
    assert pipe["device_vs_cpu_small"] == pytest.approx(
        pipe["small_device_images_per_s"] / pipe["small_cpu_images_per_s"]
    )
    fastest = max(att["suite_images_per_s"], full["suite_images_per_s"])
    assert pipe["jpeg_cached_vs_training"] == pytest.approx(pipe["jpeg_cached_images_per_s"] / fastest)
    assert pipe["jpeg_device_decode_vs_training"] == pytest.approx(pipe["jpeg_device_decode_images_per_s"] / fastest)
    # on a CPU the device decode is libjpeg-turbo's and Pillow's resize: the CPU path's pixels, eval and training
    assert pipe["device_decode_levels"] == {k: {"max": 0.0, "mean": 0.0, "differing": 0.0} for k in ("eval", "train")}


def test_cost_of_lora_and_fewshot_as_a_run_counts_them():
    """`cost -m lora` injects the adapters before asking for the trainable set (it used to end in a traceback),
    and few-shot is charged forward passes only, as the runner records it (it used to get a backward pass)."""
    proc = cli("cost", "-c", "vit_demo", "-m", "lora,fewshot,linear", "--num-classes", "10", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["mode"]: r for r in json_lines(proc.stdout)}
    dim, depth, rank, head = 128, 4, 8, 128 * 10 + 10
    adapters = depth * 2 * (rank * dim + dim * rank)  # the q and v slices of each block's qkv (lora 2's default)
    assert rows["lora"]["params_per_task"] == adapters + head
    assert rows["lora"]["params_total"] == rows["linear"]["params_total"] + adapters
    assert rows["fewshot"]["train_gflops_per_image"] == rows["fewshot"]["fwd_gflops_per_image"]
    assert rows["lora"]["train_gflops_per_image"] > rows["lora"]["fwd_gflops_per_image"]


@pytest.mark.parametrize("with_metadata", [True, False])
def test_a_deltas_size_is_the_size_of_its_safetensors_file(tmp_path, with_metadata):
    """bytes_per_task is computed from safetensors' format without writing the file (a k-NN memory can be
    gigabytes): it must be the size of the file safetensors writes, whatever the dtypes, names and metadata."""
    import torch

    from transfer_eval.methods import deltas

    tensors = {
        "knn.features": torch.randn(37, 5),
        "knn.labels": torch.arange(37),
        "blocks.0.attn.qkv.weight": torch.randn(3, 2).bfloat16(),
        "mask": torch.ones(4, dtype=torch.bool),
        "z.scalar": torch.tensor(1.5, dtype=torch.float64),
        "a.empty": torch.zeros(0, 3, dtype=torch.uint8),
        "é.unicode": torch.ones(2, dtype=torch.int32),
        "h": torch.ones(3, dtype=torch.float16),
    }
    meta = {"checkpoint": 'a "quoted"\nname', "task": "fleurs-é", "seed": "0"} if with_metadata else None
    for keep in (tensors, {"fewshot.weight": torch.randn(10, 3)}, {k: tensors[k] for k in list(tensors)[:3]}):
        written = deltas.save(keep, tmp_path / "d.safetensors", meta)
        assert deltas.size(keep, meta) == written
