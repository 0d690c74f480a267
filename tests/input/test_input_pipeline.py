"""The input pipelines: on-device resizing of small images, the decoded-image cache, seeding of the augmentation,
and torch.compile. Everything here runs on the CPU: the on-device path is the same code on any device.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_eval.errors import UserError
from transfer_eval.input import image_cache as image_cache
from transfer_eval.input import pipeline, transforms
from transfer_eval.methods import finetune
from transfer_eval.tasks import ImageSplit

sys.path.insert(0, str(Path(__file__).parent.parent))
import conftest  # noqa: E402
from fixtures import cifar as fixtures_cifar  # noqa: E402

CPU = torch.device("cpu")
CFG = {
    "input_size": (3, 96, 96),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.9,
    "crop_mode": "center",
}
AUGMENT = {"augment": True, "hflip": 0.5, "crop_scale": (0.05, 1.0), "randaugment": None, "random_erasing": 0.0}


def photo(seed: int, size=(32, 32)) -> Image.Image:
    """A small image with structure at several scales, like a downsampled photograph (and not symmetric, so
    a wrong flip or box shows)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    arr = np.asarray(coarse, dtype=np.int16)
    arr[: size[1] // 4, : size[0] // 3] = (250, 20, 20)  # a red block in the top-left corner
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def small_split(n=12, size=(32, 32)) -> ImageSplit:
    images = [photo(i, size) for i in range(n)]
    return ImageSplit(lambda i: images[i], [i % 3 for i in range(n)])


def first_batch(split, plan, train, seed=3, workers=0, cfg=CFG):
    """The first batch a training run (train: its augmentation) or an evaluation (train None) would see."""
    pipe = pipeline.pipeline(split, cfg, CPU, plan, train=train)
    if train is None:
        return next(pipe.batches(pipeline.loader(pipe, len(split), CPU)))
    sampler = pipeline.EpochBatches(len(split), len(split), seed, draws=True)
    return next(
        pipe.batches(
            pipeline.batch_loader(pipe, sampler, CPU) if not workers else _with_workers(pipe, sampler, workers)
        )
    )


def _with_workers(pipe, sampler, workers):
    from torch.utils.data import DataLoader

    return DataLoader(pipe.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=pipe.collate)


def gray_levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in 0..255 units (the inputs are normalised)."""
    return (a - b).abs() * torch.tensor(CFG["std"]).view(1, 3, 1, 1) * 255


ON_DEVICE = pipeline.InputPlan(native_size=(32, 32), train_on_device=True, eval_on_device=True)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(32, 32), (30, 17), (8, 8)])
def test_device_eval_resize_is_timms_eval_transform_bit_for_bit(interpolation, size):
    cfg = {**CFG, "interpolation": interpolation}
    images = [photo(i, size) for i in range(6)]
    split = ImageSplit(lambda i: images[i], [i % 3 for i in range(6)])
    plan = pipeline.InputPlan(native_size=size, train_on_device=True, eval_on_device=True)
    cpu = first_batch(split, pipeline.InputPlan(), None, cfg=cfg)
    dev = first_batch(split, plan, None, cfg=cfg)
    assert dev[0].shape == cpu[0].shape == (6, 3, 96, 96)
    assert torch.equal(cpu[1], dev[1])
    assert torch.equal(cpu[0], dev[0])  # PIL's pixels exactly, not "close"


@pytest.mark.parametrize("reduce", [False, True], ids=["enlarge", "reduce"])
def test_device_resize_matches_pil_on_random_crops(reduce):
    """Pillow's resize, image by image, for random sizes and crops, enlarged or reduced (with Pillow's widened,
    antialiasing filter): the coefficient matrices are its own."""
    from transfer_eval.input import resample

    rng = np.random.default_rng(1 if reduce else 0)
    orders = set()
    for t in range(40):
        h, w = (int(v) for v in rng.integers(2, 300 if reduce else 40, 2))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cw, ch = int(rng.integers(1, w + 1)), int(rng.integers(1, h + 1))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        if reduce:
            out_w, out_h = int(rng.integers(1, cw + 1)), int(rng.integers(1, ch + 1))
        else:
            out_w, out_h = int(rng.integers(cw, 120)), int(rng.integers(ch, 120))
        kind = ("bicubic", "bilinear")[t % 2]
        pil = Image.fromarray(arr).crop((x0, y0, x0 + cw, y0 + ch)).resize((out_w, out_h), getattr(Image, kind.upper()))
        axes = resample.axes([x0, y0, cw, ch, out_w, out_h, 0, 0], False, out_h, out_w, kind)
        orders.add(axes[4])
        x = resample.apply(torch.from_numpy(arr).permute(2, 0, 1)[None], *resample.stack([axes]))[0]
        assert np.array_equal(x.permute(1, 2, 0).numpy().astype(np.uint8), np.asarray(pil)), (t, kind)
    if reduce and resample.ORDERS_PASSES:
        assert orders == {False, True}  # both of Pillow 13's pass orders were met


def test_device_train_crops_and_flips_are_the_cpu_transforms_bit_for_bit():
    """The same draw seeds give timm's RandomResizedCrop boxes and flips, and PIL's pixels, on the device."""
    split = small_split()
    cpu_x, _ = first_batch(split, pipeline.InputPlan(), AUGMENT)
    dev_x, _ = first_batch(split, ON_DEVICE, AUGMENT)
    assert torch.equal(cpu_x, dev_x)
    other, _ = first_batch(split, ON_DEVICE, AUGMENT, seed=4)
    assert gray_levels(cpu_x, other).flatten(1).mean(1).mean() > 10  # another seed: other crops
    mirrored, _ = first_batch(split, ON_DEVICE, {**AUGMENT, "hflip": 1.0, "crop_scale": (1.0, 1.0)})
    straight, _ = first_batch(split, ON_DEVICE, {**AUGMENT, "hflip": 0.0, "crop_scale": (1.0, 1.0)})
    assert torch.equal(mirrored, straight.flip(3))  # a flipped full-image box is the mirror image
    red = straight[0, 0] * CFG["std"][0] + CFG["mean"][0]  # the red block of the top-left corner stays there
    assert red[:10, :10].mean() > 0.9 and red[-10:, -10:].mean() < 0.9


@pytest.mark.parametrize("plan", [pipeline.InputPlan(), ON_DEVICE], ids=["cpu", "device-resize"])
def test_training_draws_do_not_depend_on_the_workers(plan):
    """Each sample's crop and flip come from its own draw seed (run seed, epoch, position): two worker
    processes give the batch that the main process gives alone, and the main process's generators are left as
    they were."""
    split = small_split()
    dataset = pipeline.pipeline(split, CFG, CPU, plan, train=AUGMENT).dataset
    torch.manual_seed(7)
    random.seed(7)
    before = torch.rand(1), random.random()
    torch.manual_seed(7)
    random.seed(7)
    dataset[(0, 12345)]
    assert (torch.rand(1), random.random()) == before  # a sample's draws do not consume the run's generators
    alone, _ = first_batch(split, plan, AUGMENT)
    with_workers, _ = first_batch(split, plan, AUGMENT, workers=2)
    assert torch.equal(alone, with_workers)


def test_draw_seeds_are_a_function_of_seed_epoch_and_position():
    a = pipeline.EpochBatches(10, 4, seed=1, draws=True)
    b = pipeline.EpochBatches(10, 4, seed=1, draws=True, micro_size=2)
    first = [pair for _, chunk in zip(range(4), iter(a)) for pair in chunk]
    second = [pair for _, chunk in zip(range(8), iter(b)) for pair in chunk]
    assert first == second  # micro-batching does not change a sample's draw
    assert len({d for _, d in first}) == len(first)
    resumed = [
        pair
        for _, chunk in zip(range(2), iter(pipeline.EpochBatches(10, 4, 1, start_batch=2, draws=True)))
        for pair in chunk
    ]
    assert resumed == first[8:]  # a resumed run draws as an uninterrupted one
    halves = [pipeline.EpochBatches(10, 4, 1, draws=True, rank=r, world=2) for r in (0, 1)]
    ddp = [pair for k in range(2) for h in halves for pair in list(zip(range(2), iter(h)))[k][1]]
    assert ddp == first[:8]  # two processes draw what one does


def test_plan_input_decides_where_to_resize():
    split = small_split()
    assert pipeline.plan_input(pipeline.InputOptions("auto"), split, CFG, CPU, AUGMENT) == pipeline.InputPlan()
    assert pipeline.plan_input(pipeline.InputOptions("off"), split, CFG, CPU, AUGMENT) == pipeline.InputPlan()
    plan = pipeline.plan_input(pipeline.InputOptions("on"), split, CFG, CPU, AUGMENT)
    assert (plan.native_size, plan.train_on_device, plan.eval_on_device) == ((32, 32), True, True)
    assert plan.describe() == "device-resize from 32x32"
    probe = pipeline.plan_input(pipeline.InputOptions("on"), split, CFG, CPU, None)
    assert probe.train_on_device and probe.eval_on_device  # a probe's train features use the eval pipeline

    cases = [
        (small_split(size=(80, 80)), CFG, AUGMENT, "larger than 64 px"),
        (split, {**CFG, "input_size": (3, 16, 16)}, AUGMENT, "smaller than the images"),
        (split, {**CFG, "interpolation": "lanczos"}, AUGMENT, "interpolation 'lanczos'"),
        (split, CFG, {**AUGMENT, "randaugment": "rand-m9-mstd0.5-inc1"}, "RandAugment"),
    ]
    mixed = [photo(0), photo(1, (30, 32))]
    cases.append((ImageSplit(lambda i: mixed[i], [0, 1]), CFG, AUGMENT, "differ in size"))
    for s, cfg, recipe, why in cases:
        with pytest.raises(UserError, match="--device-resize on: .*" + why):
            pipeline.plan_input(pipeline.InputOptions("on"), s, cfg, CPU, recipe)
    # where only training cannot, evaluation still may (auto on CUDA; the same decision is shown here with `on`
    # only for evaluation-compatible recipes)
    assert pipeline._train_blocker({"randaugment": "rand-m9"}) and pipeline._train_blocker({"augment": True}) is None


@pytest.mark.parametrize("train", [None, AUGMENT], ids=["eval", "train"])
def test_odd_sized_images_get_the_cpu_paths_pixels_too(train):
    """Another small size is resized from its own pixels; one too large to enlarge (the plan probes only some
    images) is transformed in the worker as on the CPU path, with the same draws."""
    images = [photo(0), photo(1, (30, 31)), photo(2, (120, 100)), photo(3)]
    split = ImageSplit(lambda i: images[i], [0, 1, 2, 0])
    x, _ = first_batch(split, ON_DEVICE, train)
    assert x.shape == (4, 3, 96, 96)
    assert torch.equal(x, first_batch(split, pipeline.InputPlan(), train)[0])


# --------------------------------------------------------------------------------------------------------------
# The decoded-image cache


def write_jpegs(folder: Path, n=6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img_{i}.jpg"
        photo(i, (180 + 20 * i, 140 + 10 * (i % 3))).save(p, quality=92)
        out.append(p)
    return out


def test_image_cache_gives_the_eval_transforms_exact_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))
    files = write_jpegs(tmp_path / "jpg")
    split = ImageSplit.from_files(files, [0, 1, 2, 0, 1, 2])
    cached = image_cache.cached(split, CFG)
    transform = transforms.eval_transform(CFG)
    for i in range(len(split)):
        assert cached.image(i).size != split.image(i).size  # stored resized (shorter side 106)
        assert min(cached.image(i).size) == 106
        assert torch.equal(transform(cached.image(i)), transform(split.image(i)))
    assert list(cached.labels) == list(split.labels) and cached.ids == split.ids
    # the pipeline takes the cache when the plan says so, and evaluation sees the same tensors
    plain, _ = first_batch(split, pipeline.InputPlan(), None)
    via_cache, _ = first_batch(split, pipeline.InputPlan(cache_images=True), None)
    assert torch.equal(plain, via_cache)
    (entry,) = image_cache.entries()
    assert entry["images"] == 6 and entry["source"] == str(tmp_path / "jpg")


def test_image_cache_is_built_once_and_keyed_by_files_and_resize(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))
    files = write_jpegs(tmp_path / "jpg")
    split = ImageSplit.from_files(files, [0] * 6)
    image_cache.cached(split, CFG)
    (pixels,) = (tmp_path / "cache" / "images").glob("*.u8")
    stamp = pixels.stat().st_mtime_ns
    image_cache.cached(split, CFG)
    assert pixels.stat().st_mtime_ns == stamp and len(image_cache.entries()) == 1  # a hit: nothing rebuilt
    image_cache.cached(split, {**CFG, "input_size": (3, 64, 64)})
    assert len(image_cache.entries()) == 2  # another resolution is another entry
    before = image_cache.key(split, CFG)
    photo(99, (200, 150)).save(files[2], quality=92)  # a replaced file
    os.utime(files[2], ns=(stamp + 10**9, stamp + 10**9))
    assert image_cache.key(split, CFG) == before  # a split's signature is taken once (one run's snapshot) ...
    split = ImageSplit.from_files(files, [0] * 6)
    assert image_cache.key(split, CFG) != before  # ... and the next run's split sees the replaced file
    fresh = image_cache.cached(split, CFG)
    assert len(image_cache.entries()) == 3
    assert torch.equal(transforms.eval_transform(CFG)(fresh.image(2)), transforms.eval_transform(CFG)(split.image(2)))
    # a damaged entry is rebuilt, not served
    (pixels,) = [p for p in (tmp_path / "cache" / "images").glob("*.u8") if p.stem == image_cache.key(split, CFG)]
    pixels.write_bytes(pixels.read_bytes()[:100])
    again = image_cache.cached(split, CFG)
    assert torch.equal(transforms.eval_transform(CFG)(again.image(5)), transforms.eval_transform(CFG)(split.image(5)))
    assert image_cache.clear() == 3 and image_cache.entries() == []
    # train+val (retraining) is served by its parts' entries, not a third one
    train, val = split.subset([0, 1, 2]), split.subset([3, 4, 5])
    image_cache.cached(train, CFG)
    image_cache.cached(val, CFG)
    both = image_cache.cached(ImageSplit.concat(train, val), CFG)
    assert len(image_cache.entries()) == 2 and both.ids == split.ids
    assert torch.equal(transforms.eval_transform(CFG)(both.image(4)), transforms.eval_transform(CFG)(split.image(4)))


# --------------------------------------------------------------------------------------------------------------
# Training: seeding, compile


def tiny_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3
    )


TINY_CFG = {**CFG, "input_size": (3, 32, 32)}


def train_once(compile=False, plan=None, augment=True):
    model = tiny_vit()
    recipe = finetune.Recipe(optimizer="adamw", lr=1e-3, batch_size=6, steps=4, warmup_steps=1, augment=augment)
    random.random()  # whatever drew from Python's generator before must not matter
    np.random.rand()
    finetune.train(model, small_split(), TINY_CFG, recipe, 1e-3, CPU, seed=5, compile=compile, plan=plan)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_augmented_training_is_deterministic_whatever_ran_before():
    """timm's crops draw from Python's `random`: train seeds it, so the same seed gives the same model."""
    a = train_once()
    random.seed(12345)
    b = train_once()
    assert torch.equal(a, b)


def test_training_on_device_resized_inputs(tmp_path):
    plan = pipeline.InputPlan(native_size=(32, 32), train_on_device=True, eval_on_device=True)
    a = train_once(plan=plan)
    assert torch.isfinite(a).all() and torch.equal(a, train_once())  # the same pixels, so the same model


def test_compile_trains_the_same_model(monkeypatch):
    """--compile goes through torch.compile (here its aot_eager backend: the graph capture without a C++
    compiler) and trains the same weights as eager mode."""
    calls = []
    real = torch.compile

    def compile_for_test(model, **kwargs):
        calls.append(type(model).__name__)
        return real(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_for_test)
    eager = train_once(augment=False)
    compiled = train_once(compile=True, augment=False)
    assert calls == ["VisionTransformer"]
    assert torch.allclose(eager, compiled, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Through the CLI


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar_pipeline")
    fixtures_cifar.write_cifar10(root)
    return root


@pytest.mark.slow
def test_cli_device_resize_on_cifar_is_recorded(cifar_root, tmp_path):
    db = tmp_path / "r.sqlite"
    common = [
        "-c",
        "vit_demo",
        "-t",
        "cifar10",
        "--data-dir",
        cifar_root,
        "--skip-verify",
        "--device",
        "cpu",
        "--device-resize",
        "on",
    ]
    out = conftest.cli(
        "run",
        "-m",
        "linear,attention",
        *common,
        "--results",
        db,
        "--resolution",
        "32",
        "--json",
        "--set",
        "steps=4",
        "--set",
        "batch_size=16",
        "--set",
        "lr_grid=[]",
        "--set",
        "retrain=false",
    )
    assert out.returncode == 0, out.stderr
    rows = conftest.json_lines(out.stdout)
    assert [r["input_pipeline"] for r in rows] == ["device-resize from 32x32"] * 2
    assert all(r["status"] == "ok" for r in rows)
    # the model's input smaller than the images: refused under `on`, nothing stored
    db2 = tmp_path / "r2.sqlite"
    bad = conftest.cli("run", "-m", "linear", *common, "--results", db2, "--resolution", "16")
    conftest.assert_one_line_error(bad, "--device-resize on", "smaller than the images")
    assert conftest.stored_rows(db2) == 0


@pytest.mark.slow
def test_cli_cache_images_gives_the_same_probe_and_is_listed(tmp_path):
    """A linear probe with --cache-images scores exactly as one without (the eval pixels are the same)."""
    from fixtures import flowers_cars as FC

    root = tmp_path / "data"
    FC.write_flowers(root)
    results = []
    for flag, cache in (([], "c1"), (["--cache-images"], "c2")):
        env = {"TRANSFER_EVAL_CACHE": str(tmp_path / cache)}
        out = conftest.cli(
            "run",
            "-c",
            "vit_demo",
            "-t",
            "flowers102",
            "-m",
            "linear",
            "--data-dir",
            root,
            "--skip-verify",
            "--results",
            tmp_path / f"{cache}.sqlite",
            "--device",
            "cpu",
            "--json",
            *flag,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        results.append(conftest.json_lines(out.stdout)[0])
    assert results[0]["input_pipeline"] == "cpu" and results[1]["input_pipeline"] == "cpu+image-cache"
    assert results[0]["top1"] == results[1]["top1"] and results[0]["val_top1"] == results[1]["val_top1"]
    env = {"TRANSFER_EVAL_CACHE": str(tmp_path / "c2")}
    listed = conftest.json_lines(conftest.cli("cache", "list", "--json", env=env).stdout)
    assert sorted({r["kind"] for r in listed}) == ["features", "images"]
    assert len([r for r in listed if r["kind"] == "images"]) == 3  # train, val, test
    cleared = conftest.cli("cache", "clear", "--images", env=env)
    assert "removed 3 cached decoded-image entries" in cleared.stdout
    assert not list((tmp_path / "c2" / "images").glob("*.u8"))


def test_a_machine_that_cannot_compile_gets_one_clear_error(monkeypatch):
    real = torch.compile

    def broken_backend(graph, inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend=broken_backend))
    with pytest.raises(UserError, match="--compile: torch.compile failed here .*no C\\+\\+ compiler.*without"):
        train_once(compile=True, augment=False)


def test_training_splits_are_cached_as_jpeg_and_evaluation_splits_raw(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))
    files = write_jpegs(tmp_path / "jpg")
    split = ImageSplit.from_files(files, [0, 1, 2, 0, 1, 2])
    plan = pipeline.InputPlan(cache_images=True)
    pipeline.pipeline(split, CFG, CPU, plan)  # evaluation: raw
    pipeline.pipeline(split, CFG, CPU, plan, train=AUGMENT)  # training: JPEG
    entries = {e["format"]: e for e in image_cache.entries()}
    assert set(entries) == {"raw", "jpeg"}
    assert entries["jpeg"]["bytes"] < entries["raw"]["bytes"] / 2
    raw = image_cache.cached(split, CFG)
    jpeg = image_cache.cached(split, CFG, kind=image_cache.JPEG)
    for i in range(len(split)):
        a, b = np.asarray(raw.image(i), dtype=np.int16), np.asarray(jpeg.image(i), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).mean() < 3.0  # quality 90: close to the raw pixels
    estimate = image_cache.estimate_bytes(split, CFG, image_cache.JPEG)
    assert 0.8 * entries["jpeg"]["bytes"] < estimate < 1.5 * entries["jpeg"]["bytes"]


def test_an_image_cache_that_would_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from transfer_eval.errors import UserError

    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))
    split = ImageSplit.from_files(write_jpegs(tmp_path / "jpg"), [0] * 6)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(UserError, match=r"needs about .* GB .* free; free some space, set TRANSFER_EVAL_CACHE"):
        image_cache.cached(split, CFG)
    assert image_cache.entries() == [] and list((tmp_path / "cache" / "images").iterdir()) == []


@pytest.mark.parametrize(
    "plan", [pipeline.InputPlan(workers=2), dataclasses_replace(ON_DEVICE, workers=2)], ids=["cpu", "device-resize"]
)
def test_a_runs_evaluation_workers_start_once_and_keep_the_test_seal(plan, tmp_path, monkeypatch):
    """pipeline.EvalLoaders: every split's passes (train and val features, then test) through one DataLoader whose
    workers start once, giving each split's batches as a loader of its own does; the test split, sealed when the
    workers started, stays sealed in them until it is unsealed here, then reads without a new start."""
    import torch.utils.data._utils.worker as worker

    from transfer_eval.tasks import SealedSplitRead

    starts = tmp_path / "starts"
    loop = worker._worker_loop

    def counted(*args, **kwargs):
        with open(starts, "a") as f:
            f.write("start\n")
        return loop(*args, **kwargs)

    monkeypatch.setattr(worker, "_worker_loop", counted)
    splits = {"train": small_split(12), "val": small_split(5), "test": small_split(7)}
    splits["test"].seal("model selection")
    loaders = pipeline.EvalLoaders(splits, CFG, CPU, plan)

    def read(name, bs, loaders=loaders):
        dl, pipe = loaders.get(name, bs)
        assert len(dl) == -(-len(splits[name]) // bs)
        return [(x, y) for x, y in pipe.batches(dl)]

    def alone(name, bs):
        pipe = pipeline.pipeline(splits[name], CFG, CPU, dataclasses_replace(plan, workers=0))
        return [(x, y) for x, y in pipe.batches(pipeline.loader(pipe, bs, CPU))]

    for name, bs in (("train", 5), ("val", 4), ("train", 12)):
        got, want = read(name, bs), alone(name, bs)
        assert len(got) == len(want) and all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want)
        )
    with pytest.raises(SealedSplitRead):
        read("test", 4)  # read in a worker forked while the split was sealed
    splits["test"].unseal()
    assert sum(len(y) for _, y in read("test", 4)) == 7
    assert starts.read_text().count("start") == 2  # the two workers, started once for all the passes
