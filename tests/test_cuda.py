"""On a CUDA GPU: bf16 autocast, fused AdamW, the on-device resize, the probe, the out-of-memory back-off, DDP over
NCCL and the record's device fields. Skipped, saying why, where no GPU is visible (CI's CPU); run them with
`python -m pytest -m cuda` or scripts/gpu_check.sh on a GPU machine."""

import os

import numpy as np
import pytest
import torch
from conftest import cli, json_lines

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible: GPU tests skipped"),
]

CUDA = torch.device("cuda")
DEMO = ["-c", "vit_demo_shapes", "-t", "digits", "--json"]


def _beside(wing: str) -> None:
    """Import helpers of another wing's tests (their folder is on sys.path only once one of them was collected)."""
    import sys
    from pathlib import Path

    folder = str(Path(__file__).parent / wing)
    if folder not in sys.path:
        sys.path.insert(0, folder)


def test_the_demo_on_cuda_gives_the_cpus_numbers_and_the_record_says_how(tmp_path):
    """The pretrained demo checkpoint (a stable setting: random-init fine-tuning for 200 steps is chaotic):
    the probe chooses the same C and scores within 0.5 point; full fine-tuning (bf16 steps) within 1 point."""
    out = {}
    for device in ("cuda", "cpu"):
        proc = cli(
            "run",
            *DEMO,
            "-m",
            "linear,full",
            "--device",
            device,
            "--results",
            tmp_path / f"{device}.sqlite",
            env={"TRANSFER_EVAL_CACHE": tmp_path / device},
        )
        assert proc.returncode == 0, proc.stderr
        out[device] = {r["mode"]: r for r in json_lines(proc.stdout)}
    g, c = out["cuda"], out["cpu"]
    assert g["linear"]["selection"]["chosen"]["C"] == c["linear"]["selection"]["chosen"]["C"]
    assert abs(g["linear"]["top1"] - c["linear"]["top1"]) <= 0.005, (g["linear"]["top1"], c["linear"]["top1"])
    assert abs(g["full"]["top1"] - c["full"]["top1"]) <= 0.01, (g["full"]["top1"], c["full"]["top1"])
    assert (
        g["full"]["precision"] == "features fp32, train bf16-autocast, eval fp32" and c["full"]["precision"] == "fp32"
    )
    assert g["full"]["device"] == torch.cuda.get_device_name(0)
    assert 0 < g["full"]["peak_memory_mb"] < torch.cuda.get_device_properties(0).total_memory / 2**20
    assert g["full"]["gpu_hours"] and g["full"]["gpu_hours"] > 0


def _digits_batch(n=256):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:n], dtype=torch.float32).view(n, 1, 8, 8).repeat(1, 3, 2, 2) / 8 - 1  # 16 px, 3 channels
    return x, torch.tensor(y[:n])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_optimizers_train_on_cuda(optimizer):
    from transfer_eval import checkpoints
    from transfer_eval.methods import finetune

    model, _ = checkpoints.build_model(checkpoints.load_registry()["vit_demo"], 10)
    model.to(CUDA).train()
    recipe = finetune.make_recipe(
        {
            "optimizer": optimizer,
            "lr": 1e-3 if optimizer == "adamw" else 0.03,
            "steps": 30,
            "warmup_steps": 1,
            "batch_size": 256,
        }
    )
    step = finetune.step_fn(model, recipe, recipe.lr, CUDA)
    x, y = _digits_batch()
    losses = [float(step(x, y)) for _ in range(30)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    if optimizer == "adamw":
        opt = finetune._optimizer(model, recipe, recipe.lr, CUDA)
        assert opt.defaults.get("fused") is True  # the fused kernel on CUDA


def test_device_resize_on_cuda_gives_the_cpu_transforms_pixels():
    """Bit for bit, evaluation and augmented training alike: the same draw seeds, whatever the workers."""
    _beside("input")
    from test_input_pipeline import AUGMENT, CFG, ON_DEVICE, small_split

    from transfer_eval.input import pipeline

    split = small_split()

    def batch(device, plan, train):
        pipe = pipeline.pipeline(split, CFG, device, plan, train=train)
        if train is None:
            dl = pipeline.loader(pipe, len(split), device)
        else:
            dl = pipeline.batch_loader(pipe, pipeline.EpochBatches(len(split), len(split), 3, draws=True), device)
        x, y = next(pipe.batches(dl))
        return x.cpu(), y.cpu()

    for train in (None, AUGMENT):
        cpu_x, cpu_y = batch(torch.device("cpu"), pipeline.InputPlan(), train)
        dev_x, dev_y = batch(CUDA, ON_DEVICE, train)  # CUDA's default: DataLoader workers
        assert torch.equal(cpu_y, dev_y) and torch.equal(cpu_x, dev_x), train


def test_pillows_resize_on_cuda_is_the_cpus_to_the_bit():
    """resample.apply's integer passes on CUDA give what they give on the CPU (PIL's pixels, tested there), for
    reductions and enlargements, both pass orders."""
    from transfer_eval.input import resample

    rng = np.random.default_rng(0)
    per_image, images = [], []
    for t in range(24):
        h, w = (int(v) for v in rng.integers(8, 400, 2))
        cw, ch = int(rng.integers(1, w + 1)), int(rng.integers(1, h + 1))
        geometry = [int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch, 224, 224, 0, 0]
        per_image.append(resample.axes(geometry, bool(t % 2), 224, 224, ("bicubic", "bilinear")[t % 3 == 0]))
        images.append(torch.from_numpy(rng.integers(0, 256, (3, 400, 400), dtype=np.uint8)))
    x, axes = torch.stack(images), resample.stack(per_image)
    cpu = resample.apply(x, *axes)
    gpu = resample.apply(x.to(CUDA), *(a.to(CUDA) for a in axes[:4]), axes[4])
    assert torch.equal(cpu, gpu.cpu())


def test_decode_device_on_cuda_is_within_a_few_levels_of_the_cpu_path(tmp_path):
    """nvJPEG's decode against libjpeg-turbo's, through the whole plan (the resize is exact): evaluation and
    training batches with the same draws."""
    _beside("input")
    from test_device_decode import AUGMENT, CFG, _photos

    from transfer_eval.measure import bench
    from transfer_eval.tasks import ImageSplit

    split = ImageSplit.from_files(_photos(tmp_path, 8), list(range(8)))
    for train in (None, AUGMENT):
        levels = bench.decode_levels(split, CFG, CUDA, train)
        assert levels["max"] <= 8 and levels["mean"] < 0.5, (train, levels)


def test_probe_on_cuda_chooses_as_on_cpu():
    _beside("methods")
    from test_linear_probe import GRID, blobs

    from transfer_eval.methods import probe

    train, val, (xte, _) = blobs()
    on_gpu = probe.linear_probe(train, val, 7, c_grid=GRID, device=CUDA)
    on_cpu = probe.linear_probe(train, val, 7, c_grid=GRID, device="cpu")
    assert on_gpu["selection"]["chosen"]["C"] == on_cpu["selection"]["chosen"]["C"]
    assert "cuda" in on_gpu["selection"]["solver"] and on_gpu["selection"]["not_converged"] == []
    pred = lambda o: (xte @ o["head_weight"].T + o["head_bias"]).argmax(1)  # noqa: E731
    assert (pred(on_gpu) == pred(on_cpu)).mean() >= 0.995


def test_a_real_out_of_memory_backs_off_and_keeps_the_effective_batch():
    from PIL import Image

    from transfer_eval import checkpoints
    from transfer_eval.checkpoints import Checkpoint
    from transfer_eval.methods import finetune
    from transfer_eval.tasks import ImageSplit

    ck = Checkpoint(name="vit_s16_random", model="vit_small_patch16_224", weights="none")
    model, cfg = checkpoints.build_model(ck, 10)
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 224, 224, 3), dtype=np.uint8)
    split = ImageSplit(lambda i: Image.fromarray(pixels[i % 8]), np.arange(512) % 10)
    recipe = finetune.make_recipe(
        {"optimizer": "sgd", "lr": 0.01, "steps": 2, "warmup_steps": 1, "batch_size": 512, "augment": False}
    )
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(3 * 2**30 / total)  # 3 GiB: a 512-image ViT-S step does not fit
    try:
        out = finetune.train(model, split, cfg, recipe, recipe.lr, CUDA, seed=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert out["oom_backoffs"] >= 1 and out["micro_batch_size"] < 512
    assert out["images"] == 2 * 512  # every step still took the whole effective batch


def test_ddp_over_nccl_with_one_process_is_no_ddp():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from transfer_eval import checkpoints
    from transfer_eval.methods import finetune

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        recipe = finetune.make_recipe(
            {"optimizer": "sgd", "lr": 0.03, "steps": 5, "warmup_steps": 1, "batch_size": 128}
        )
        x, y = _digits_batch(128)
        weights = []
        for wrap in (False, True):
            torch.manual_seed(0)
            model, _ = checkpoints.build_model(checkpoints.load_registry()["vit_demo"], 10)
            model.to(CUDA).train()
            net = DistributedDataParallel(model, device_ids=[0]) if wrap else model
            step = finetune.step_fn(net, recipe, recipe.lr, CUDA)
            for _ in range(5):
                step(x, y)
            weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert torch.allclose(weights[0], weights[1], rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()
