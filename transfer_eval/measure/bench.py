"""`transfer-eval bench`: the suite's own training step and feature extraction against bare reference loops,
on the same architecture, seed, batch and device, one after the other.

Reference training loop: a plain timm model, a plain torch optimiser (the recipe's kind, default settings), the
same trainable parameters, bf16 autocast on CUDA, forward, backward, step (with `compile`, both loops' forward
passes go through torch.compile). Each training loop runs in a fresh
process, so its peak memory is its own. Reference inference: the plain model's
`forward_features` + pre-logits on tensors already on the device. The suite's extraction includes its whole input
pipeline (PIL images through timm's transform), so the ratio shows what that pipeline costs.

The input pipelines are timed alone too (`input_pipeline`): images per second delivered to the device for small
images resized in CPU workers or on the device, and for JPEG files decoded each time or read from the
decoded-image cache; compared with the training step's images per second, they show whether data keeps up.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transfer_eval import checkpoints, devices
from transfer_eval.input import pipeline
from transfer_eval.methods import costs, finetune, inference, modes
from transfer_eval.tasks import ImageSplit

log = logging.getLogger(__name__)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, steps: int, warmup: int, device) -> float:
    """Seconds per call, after warm-up."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def matmul_peak_tflops(device, size: int = 4096, steps: int = 10) -> float:
    """Measured dense matmul throughput: bf16 on CUDA, fp32 on CPU (the precision training runs in)."""
    if device.type != "cuda":
        size = min(size, 2048)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = _time(lambda: a @ b, steps, 2, device)
    return 2 * size**3 / seconds / 1e12


def _build(ck, mode, num_classes, resolution, device):
    """The suite's model for a mode: built (seeded random init, no download), adapted, on the device."""
    model, cfg = checkpoints.build_model(ck, num_classes, resolution, load_weights=False)
    model = modes.prepare(mode, model)
    names = modes.apply(mode, model)
    return model.to(device), cfg, names


def _bare_model(ck, mode, num_classes, resolution, device):
    """A plain timm model of the same architecture, seed and trainable parameters."""
    import timm

    torch.manual_seed(ck.seed)
    kwargs = {**ck.model_args, "num_classes": num_classes, **({"img_size": resolution} if resolution else {})}
    ref = timm.create_model(ck.architecture, pretrained=False, **kwargs)
    ref = modes.prepare(mode, ref)  # LoRA's adapters; other modes leave the model as it is
    names = modes.trainable_names(mode, ref)
    for n, p in ref.named_parameters():
        p.requires_grad_(n in names)
    return ref.to(device)


def _in_use_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _loop(spec: dict, results) -> None:
    """In a fresh process: build one loop (the suite's or the bare one), time it, and measure its peak memory
    above what the process held before building it (on CPU a process never gives freed memory back, so
    measuring two loops in one process would hide the second one's memory)."""
    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    ck, mode = spec["checkpoint"], modes.MODES[spec["mode"]]
    before = _in_use_mb(device)
    if spec["which"] == "suite":
        model, cfg, _ = _build(ck, mode, spec["num_classes"], spec["resolution"], device)
        recipe = finetune.make_recipe(
            {
                "optimizer": spec["optimizer"],
                "lr": 1e-4,
                "steps": 10**6,
                "warmup_steps": 0,
                "batch_size": spec["batch_size"],
                "grad_clip": None,
            }
        )
        step_fn = finetune.step_fn(model.train(), recipe, recipe.lr, device, compile=spec["compile"])
        flops = costs.train_step_flops(model, cfg, device) * spec["batch_size"]
    else:
        model = _bare_model(ck, mode, spec["num_classes"], spec["resolution"], device).train()
        cfg = checkpoints.data_config(model, ck, spec["resolution"])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = (
            torch.optim.AdamW(params, lr=1e-4)
            if spec["optimizer"] == "adamw"
            else torch.optim.SGD(params, lr=1e-4, momentum=0.9)
        )
        forward = torch.compile(model) if spec["compile"] else model

        def step_fn(x, y):
            with devices.autocast(device):
                loss = F.cross_entropy(forward(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        flops = None
    c, h, w = cfg["input_size"]
    x = torch.randn(spec["batch_size"], c, h, w, device=device)
    y = torch.randint(0, spec["num_classes"], (spec["batch_size"],), device=device)
    seconds = _time(lambda: step_fn(x, y), spec["steps"], 2, device)  # warm-up creates the optimiser state
    with devices.PeakMemory(device) as mem:
        step_fn(x, y)
    results.put(
        {
            "seconds": seconds,
            "peak_mb": mem.mb - before,
            "flops": flops,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
    )


def _in_child(spec: dict) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_loop, args=(spec, results))
    proc.start()
    out = results.get(timeout=3600)
    proc.join()
    return out


def train_step(
    ck,
    mode,
    batch_size: int,
    steps: int,
    device,
    resolution=None,
    num_classes=1000,
    optimizer: str = "adamw",
    compile: bool = False,
) -> dict:
    spec = {
        "checkpoint": ck,
        "mode": mode.name,
        "batch_size": batch_size,
        "steps": steps,
        "device": str(device),
        "resolution": resolution,
        "num_classes": num_classes,
        "optimizer": optimizer,
        "threads": torch.get_num_threads(),
        "compile": compile,
    }
    suite = _in_child({**spec, "which": "suite"})
    bare = _in_child({**spec, "which": "bare"})
    return {
        "suite_step_s": suite["seconds"],
        "ref_step_s": bare["seconds"],
        "suite_images_per_s": batch_size / suite["seconds"],
        "ref_images_per_s": batch_size / bare["seconds"],
        "ratio_vs_reference": bare["seconds"] / suite["seconds"],
        "suite_peak_mb": suite["peak_mb"],
        "ref_peak_mb": bare["peak_mb"],
        "train_gflops_per_step": suite["flops"] / 1e9,
        "suite_tflops": suite["flops"] / suite["seconds"] / 1e12,
        "params_trainable": suite["trainable"],
    }


def extraction(
    ck, batch_size: int, steps: int, device, resolution=None, num_classes=1000, images: int | None = None
) -> dict:
    """Feature extraction through the suite (PIL images, timm transform, loader, features to the host) against
    bare inference at the same precision, at steady state: the loader's start-up (its workers and first batch)
    is timed apart. On decoded images at the model's size, and on photo-like 500x375 JPEG files (decode and
    resize included) through the CPU workers and through `--decode device`, those against the model's own rate."""
    import tempfile

    from PIL import Image

    from transfer_eval.input import synthetic

    model, cfg, _ = _build(ck, modes.MODES["linear"], num_classes, resolution, device)
    ref = _bare_model(ck, modes.MODES["linear"], num_classes, resolution, device)
    c, h, w = cfg["input_size"]
    n = max(images or batch_size * steps, 2 * batch_size)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    split = ImageSplit(lambda i: Image.fromarray(pixels[i]), np.zeros(n, dtype=np.int64))
    _steady_features(model, split.subset(range(batch_size)), cfg, device, batch_size)  # warm-up
    decoded = _steady_features(model, split, cfg, device, batch_size)
    x = torch.randn(batch_size, c, h, w, device=device)
    ref.eval()

    @torch.no_grad()
    def bare():
        with devices.autocast(device, "features"):  # the suite's extraction precision: a like-for-like ratio
            ref.forward_head(ref.forward_features(x), pre_logits=True)

    ref_rate = batch_size / _time(bare, steps, 1, device)
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"{i}.jpg" for i in range(n)]
        mean_kb = synthetic.write_jpegs(files, workers=max(1, pipeline.default_workers(device)))
        on_files = ImageSplit.from_files(files, np.zeros(n, dtype=np.int64))
        jpegs = _steady_features(model, on_files, cfg, device, batch_size)
        decode = pipeline.InputPlan(decode_on_device=True, no_training=True)  # --decode device (nvJPEG on CUDA)
        on_device = _steady_features(model, on_files, cfg, device, batch_size, decode)
    return {
        "images": n,
        "startup_s": decoded["startup_s"],
        "suite_images_per_s": decoded["images_per_s"],
        "ref_images_per_s": ref_rate,
        "ratio_vs_reference": decoded["images_per_s"] / ref_rate,
        "jpeg": {**jpegs, "mean_jpeg_kb": mean_kb, "vs_model": jpegs["images_per_s"] / ref_rate},
        "jpeg_device_decode": {**on_device, "vs_model": on_device["images_per_s"] / ref_rate},
    }


def _steady_features(model, split, cfg: dict, device, batch_size: int, plan: pipeline.InputPlan | None = None) -> dict:
    """The suite's extraction (inference.features, each batch's features to the host): seconds to the first
    batch's features (the loader's start-up), and images per second over the batches after it."""
    marks: list[tuple[float, int]] = []  # (when a batch's features reached the host, rows)

    def write(rows):
        marks.append((time.perf_counter(), len(rows)))

    start = time.perf_counter()
    inference.features(model, split, cfg, device, write, batch_size, plan)
    (first, _), (last, _) = marks[0], marks[-1]
    count = sum(n for _, n in marks[1:])
    return {"startup_s": first - start, "images_per_s": count / (last - first) if last > first else float("nan")}


def input_pipeline(cfg: dict, batch_size: int, batches: int, device, workers: int | None = None) -> dict:
    """Images per second each input pipeline delivers to the device, training augmentation on, no model: 32 px
    images (CIFAR's size) through the CPU transforms and through the on-device resize; 500x375 JPEG files
    (the size of a typical Flowers or iNaturalist photo, photo-like: transfer_eval/synthetic.py) decoded each time
    in the workers, from the decoded-image cache, and decoded and resized on the device (`--decode device`)."""
    import os
    import tempfile

    from PIL import Image

    from transfer_eval.input import image_cache as image_cache
    from transfer_eval.input import synthetic

    aug = {"augment": True, "hflip": 0.5, "crop_scale": (0.05, 1.0), "randaugment": None, "random_erasing": 0.0}
    n = batch_size * (batches + 1)
    rng = np.random.default_rng(0)
    side = min(32, cfg["input_size"][-1])  # the device resize enlarges: a model input under 32 px gets its size
    small = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    cifar = ImageSplit(lambda i: Image.fromarray(small[i]), np.zeros(n, dtype=np.int64))

    def rate(split, plan) -> float:
        pipe = pipeline.pipeline(split, cfg, device, plan, train=aug)
        sampler = pipeline.EpochBatches(len(split), batch_size, 0, draws=True)  # per-sample draws, as training
        it = pipe.batches(pipeline.batch_loader(pipe, sampler, device))
        next(it)  # warm-up: workers started
        _sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            x, _ = next(it)
        _sync(device)
        return batch_size * batches / (time.perf_counter() - start)

    on_device = pipeline.InputPlan(native_size=(side, side), train_on_device=True, eval_on_device=True, workers=workers)
    out = {
        "workers": pipeline.default_workers(device) if workers is None else workers,
        "small_cpu_images_per_s": rate(cifar, pipeline.InputPlan(workers=workers)),
        "small_device_images_per_s": rate(cifar, on_device),
    }
    with tempfile.TemporaryDirectory() as tmp:
        previous = os.environ.get("TRANSFER_EVAL_CACHE")
        os.environ["TRANSFER_EVAL_CACHE"] = tmp
        try:
            files = [os.path.join(tmp, f"{i}.jpg") for i in range(n)]
            out["mean_jpeg_kb"] = synthetic.write_jpegs(files, workers=max(1, out["workers"]))
            jpegs = ImageSplit.from_files(files, np.zeros(n, dtype=np.int64))
            out["jpeg_decode_images_per_s"] = rate(jpegs, pipeline.InputPlan(workers=workers))
            on_device = pipeline.InputPlan(decode_on_device=True, train_decode_on_device=True, workers=workers)
            out["jpeg_device_decode_images_per_s"] = rate(jpegs, on_device)
            out["device_decode_levels"] = {
                k: decode_levels(jpegs.subset(range(batch_size)), cfg, device, t)
                for k, t in (("eval", None), ("train", aug))
            }
            image_cache.cached(jpegs, cfg, kind=image_cache.JPEG)  # built once, as training stores it; not timed
            out["jpeg_cached_images_per_s"] = rate(jpegs, pipeline.InputPlan(cache_images=True, workers=workers))
            (entry,) = [e for e in image_cache.entries() if e.get("format") == image_cache.JPEG]
            out["train_cache_vs_source_bytes"] = entry["bytes"] / sum(os.path.getsize(f) for f in files)
        finally:
            if previous is None:
                os.environ.pop("TRANSFER_EVAL_CACHE", None)
            else:
                os.environ["TRANSFER_EVAL_CACHE"] = previous
    out["device_vs_cpu_small"] = out["small_device_images_per_s"] / out["small_cpu_images_per_s"]
    out["cache_vs_decode_jpeg"] = out["jpeg_cached_images_per_s"] / out["jpeg_decode_images_per_s"]
    return out


def decode_levels(split, cfg: dict, device, train: dict | None) -> dict:
    """How far `--decode device`'s pixels are from the CPU path's on one batch with the same draws, in 8-bit levels
    (0 on a CPU, where both decode with libjpeg-turbo; on a GPU, nvJPEG's decode)."""
    sampler = pipeline.EpochBatches(len(split), len(split), 0, draws=True)
    x = []
    for decode in (False, True):
        plan = pipeline.InputPlan(decode_on_device=decode, train_decode_on_device=decode, workers=0)
        pipe = pipeline.pipeline(split, cfg, device, plan, train=train)
        loader = (
            pipeline.loader(pipe, len(split), device) if train is None else pipeline.batch_loader(pipe, sampler, device)
        )
        x.append(next(iter(pipe.batches(loader)))[0].float())
    std = torch.tensor(cfg["std"], device=x[0].device).view(1, -1, 1, 1)
    levels = ((x[1] - x[0]) * std * 255).abs().round()
    return {"max": float(levels.max()), "mean": float(levels.mean()), "differing": float((levels > 0).float().mean())}


def run(
    ck,
    mode_list,
    batch_size: int,
    steps: int,
    device,
    resolution=None,
    workers: int | None = None,
    compile: bool = False,
    images: int | None = None,
) -> dict:
    report = {
        "checkpoint": ck.name,
        "model": ck.model,
        "batch_size": batch_size,
        "steps": steps,
        "compile": compile,
        "device": devices.device_name(device),
        "precision": devices.precision(device),
        "torch": torch.__version__,
        "matmul_peak_tflops": matmul_peak_tflops(device),
        "modes": {},
    }
    for mode in mode_list:
        if mode.stage == "finetune":
            r = train_step(ck, mode, batch_size, steps, device, resolution, compile=compile)
            r["fraction_of_matmul_peak"] = r["suite_tflops"] / report["matmul_peak_tflops"]
            report["modes"][mode.name] = r
            _partial(mode.name, r)
    report["extraction"] = extraction(ck, batch_size, steps, device, resolution, images=images)
    _partial("extraction", report["extraction"])
    cfg = checkpoints.data_config(
        _bare_model(ck, modes.MODES["linear"], 1000, resolution, torch.device("cpu")), ck, resolution
    )
    report["input_pipeline"] = pipe = input_pipeline(cfg, batch_size, steps, device, workers)
    _partial("input_pipeline", pipe)
    if report["modes"]:  # does the fastest pipeline keep up with the fastest training step?
        fastest = max(r["suite_images_per_s"] for r in report["modes"].values())
        pipe["small_device_vs_training"] = pipe["small_device_images_per_s"] / fastest
        pipe["jpeg_cached_vs_training"] = pipe["jpeg_cached_images_per_s"] / fastest
        pipe["jpeg_decode_vs_training"] = pipe["jpeg_decode_images_per_s"] / fastest
        pipe["jpeg_device_decode_vs_training"] = pipe["jpeg_device_decode_images_per_s"] / fastest
    m = report["modes"]
    if "attention" in m and "full" in m:
        report["attention_vs_full_step_time"] = m["attention"]["suite_step_s"] / m["full"]["suite_step_s"]
        report["attention_vs_full_peak_memory"] = m["attention"]["suite_peak_mb"] / m["full"]["suite_peak_mb"]
    return report


def _partial(part: str, figures: dict) -> None:
    """Each part's figures as soon as they exist (a bench cut short by a time limit still leaves numbers)."""
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    log.info("bench: %s: %s", part, json.dumps(shown))
