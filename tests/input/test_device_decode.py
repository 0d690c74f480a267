"""`--decode device`: JPEG files decoded and resized on the device (here the CPU stands in for it, through the same
code: torchvision's decode_jpeg, libjpeg-turbo on a CPU, and Pillow's resize as matrix products). On a CPU its pixels
are the CPU path's to the bit, for evaluation and for training's crops and flips; its feature cache entries are kept
apart (nvJPEG's decode on a GPU is not libjpeg-turbo's), its record says which pipeline ran, and it refuses what it
cannot do."""

from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, cli, json_lines

from transfer_eval.input import pipeline, synthetic
from transfer_eval.tasks import ImageSplit

CFG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}
AUGMENT = {"augment": True, "hflip": 0.5, "crop_scale": (0.08, 1.0)}


def _batch(split, cfg, decode: bool, train=None, workers=0) -> torch.Tensor:
    plan = pipeline.InputPlan(decode_on_device=decode, train_decode_on_device=decode, workers=workers)
    pipe = pipeline.pipeline(split, cfg, torch.device("cpu"), plan, train=train)
    cpu = torch.device("cpu")
    if train is None:
        x, _ = next(iter(pipe.batches(pipeline.loader(pipe, len(split), cpu))))
        return x
    sampler = pipeline.EpochBatches(len(split), len(split), seed=3, draws=True)
    x, _ = next(iter(pipe.batches(pipeline.batch_loader(pipe, sampler, cpu))))
    return x


def _photos(tmp_path, n=6) -> list[Path]:
    paths = [tmp_path / f"{i}.jpg" for i in range(n)]
    synthetic.write_jpegs(paths, size=(500, 375))
    synthetic.write_jpegs(paths[:2], size=(333, 500))  # portrait: the other side is the shorter one
    return paths


@pytest.mark.parametrize("crop_mode, interpolation", [("center", "bicubic"), ("squash", "bilinear")])
def test_evaluation_pixels_are_the_cpu_paths(tmp_path, crop_mode, interpolation):
    split = ImageSplit.from_files(_photos(tmp_path), [0] * 6)
    cfg = {**CFG, "crop_mode": crop_mode, "interpolation": interpolation}
    cpu, dev = _batch(split, cfg, False), _batch(split, cfg, True)
    assert cpu.shape == dev.shape == (6, 3, 224, 224)
    assert torch.equal(cpu, dev)  # reduced 500x375 -> 256 px, cropped: PIL's very pixels


def test_training_crops_and_flips_are_the_cpu_paths_whatever_the_workers(tmp_path):
    """The same draw seeds give timm's RandomResizedCrop boxes and flips from the JPEG header alone, and Pillow's
    pixels from the device's decode and resize (enlarged and reduced crops alike); two workers change nothing."""
    split = ImageSplit.from_files(_photos(tmp_path), list(range(6)))
    cpu = _batch(split, CFG, False, AUGMENT)
    dev = _batch(split, CFG, True, AUGMENT)
    assert torch.equal(cpu, dev)
    assert torch.equal(dev, _batch(split, CFG, True, AUGMENT, workers=2))
    assert not torch.equal(dev, _batch(split, CFG, True, {**AUGMENT, "crop_scale": (1.0, 1.0)}))  # other crops


def test_files_that_are_not_rgb_jpegs_are_decoded_in_the_worker_as_on_the_cpu_path(tmp_path):
    """A PNG behind a .jpg name and a CMYK JPEG take the CPU path's decode and transform (the same draws); a
    grayscale JPEG is decoded on the device as RGB, as PIL converts it."""
    from PIL import Image

    paths = _photos(tmp_path, 4)
    photo = Image.open(paths[2]).convert("RGB")
    photo.save(paths[1], format="PNG")  # PNG bytes behind a .jpg name
    photo.convert("CMYK").save(paths[2], format="JPEG")
    photo.convert("L").save(paths[3], format="JPEG")
    split = ImageSplit.from_files(paths, [0, 1, 0, 1])
    for train in (None, AUGMENT):
        assert torch.equal(_batch(split, CFG, False, train), _batch(split, CFG, True, train))


def test_an_unreadable_jpeg_is_named(tmp_path):
    from transfer_eval.tasks import UnreadableImage

    paths = _photos(tmp_path, 3)
    raw = paths[1].read_bytes()
    paths[1].write_bytes(raw[:600] + bytes(len(raw) - 600))  # a JPEG header, then garbage
    with pytest.raises(UnreadableImage, match=f"unreadable image {paths[1]}"):
        _batch(ImageSplit.from_files(paths, [0, 0, 0]), CFG, True)


def test_the_plan_refuses_what_it_cannot_decode(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    opts, cpu = pipeline.InputOptions(decode="device"), torch.device("cpu")
    with pytest.raises(Exception, match="files are not JPEG"):
        pipeline.plan_input(opts, ImageSplit.from_files([tmp_path / "a.png"], [0]), CFG, cpu, None)
    with pytest.raises(Exception, match="not files"):
        pipeline.plan_input(opts, ImageSplit(lambda i: None, [0]), CFG, cpu, None)
    with pytest.raises(Exception, match="lanczos"):
        split = ImageSplit.from_files(_photos(tmp_path, 2), [0, 0])
        pipeline.plan_input(opts, split, {**CFG, "interpolation": "lanczos"}, cpu, None)
    split = ImageSplit.from_files(_photos(tmp_path, 2), [0, 0])
    assert pipeline.plan_input(opts, split, CFG, cpu, AUGMENT).describe() == "device-decode"
    # RandAugment works on PIL images: training input stays on the CPU, evaluation is decoded on the device
    mixed = pipeline.plan_input(opts, split, CFG, cpu, {**AUGMENT, "randaugment": "rand-m9-mstd0.5"})
    assert mixed.describe() == "train: cpu; eval: device-decode"


def _jpeg_digits(root: Path) -> Path:
    """The digits task as a folder of JPEG files (train/ and test/), for the folder: task."""
    from transfer_eval import tasks
    from transfer_eval.tasks import LoadContext

    digits = tasks.discover()["digits"]
    for split in ("train", "test"):
        ds = digits.dataset(split, LoadContext(root))
        for i in range(len(ds)):
            d = root / split / str(int(ds.labels[i]))
            d.mkdir(parents=True, exist_ok=True)
            ds.image(i).resize((32, 32)).save(d / f"{i:05d}.jpg", quality=95)
    return root


def test_the_same_accuracy_on_a_cpu_stored_apart_and_named(tmp_path):
    root = _jpeg_digits(tmp_path / "digits_jpeg")
    common = ("run", "-c", "vit_demo_shapes", "-t", f"folder:{root}", "--json", "--results", tmp_path / "r.sqlite")
    probes = (*common, "-m", "linear,knn")
    env = {"TRANSFER_EVAL_CACHE": str(tmp_path / "cache")}
    cpu = {r["mode"]: r for r in json_lines(cli(*probes, env=env).stdout)}
    dev_proc = cli(*probes, "--decode", "device", env=env)
    assert dev_proc.returncode == 0, dev_proc.stderr
    dev = {r["mode"]: r for r in json_lines(dev_proc.stdout)}
    # the runs are the same runs (the same key): run again with --decode device, a stored result is returned as it
    # is, so the comparison uses --force
    assert dev["linear"]["run_id"] == cpu["linear"]["run_id"]
    forced = cli(*probes, "--decode", "device", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    dev = {r["mode"]: r for r in json_lines(forced.stdout)}
    assert dev["linear"]["input_pipeline"] == "device-decode" and cpu["linear"]["input_pipeline"] == "cpu"
    assert dev["linear"]["selection"]["features_cached"] is False  # not the CPU pixels' entry
    for mode in ("linear", "knn"):
        assert dev[mode]["top1"] == cpu[mode]["top1"], mode  # the CPU path's pixels: the very same result
    assert cpu["linear"]["top1"] > 0.8
    entries = cli("cache", "list", "--json", env=env)
    assert len(json_lines(entries.stdout)) == 6  # train, val, test features for each kind of pixels
    # training input decoded on the device: the same crops, the same pixels, the same model
    short = (*common, "-m", "attention", "--set", "steps=12", "--set", "lr_grid=[0.001]", "--set", "retrain=false")
    trained = [json_lines(cli(*short, *extra, "--force", env=env).stdout)[0] for extra in ((), ("--decode", "device"))]
    assert [t["input_pipeline"] for t in trained] == ["cpu", "device-decode"]
    assert trained[0]["top1"] == trained[1]["top1"] and trained[0]["val_top1"] == trained[1]["val_top1"]


def test_decode_device_on_data_without_files_is_one_line(tmp_path):
    proc = cli(
        "run", "-c", "vit_demo", "-t", "digits", "-m", "linear", "--decode", "device", "--results", tmp_path / "r"
    )
    assert_one_line_error(proc, "--decode device: the task's images are not files")


def test_batches_made_ahead_come_in_order_raise_where_they_failed_and_stop_when_left():
    import threading

    from transfer_eval.input import prefetch

    def made(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"batch {i} failed")
            yield torch.full((2,), i), torch.tensor([i])

    cpu = torch.device("cpu")
    assert [int(x[0]) for x, _ in prefetch.ahead(made(7), cpu)] == list(range(7))
    seen = []
    with pytest.raises(ValueError, match="batch 3 failed"):
        for x, _ in prefetch.ahead(made(7, fail_at=3), cpu):
            seen.append(int(x[0]))
    assert seen == [0, 1, 2]  # the batches before the failure, then the failure itself
    before = threading.active_count()
    it = prefetch.ahead(made(10_000), cpu)
    next(it)
    it.close()  # left early (a training phase that ends, an OOM back-off that starts a new loader)
    assert threading.active_count() == before


def test_a_jpeg_the_device_refuses_is_decoded_on_the_host(tmp_path, monkeypatch):
    """nvJPEG does not take every JPEG libjpeg-turbo does (12-bit, arithmetic coding): such a file is decoded on
    the host, as PIL decodes it, instead of failing the run. Here the device's decode is made to refuse one file."""
    import torchvision.io

    paths = _photos(tmp_path, 3)
    refused = paths[1].read_bytes()
    real = torchvision.io.decode_jpeg
    calls = []

    def device_refuses(data, mode=torchvision.io.ImageReadMode.UNCHANGED, device=None):
        batch = data if isinstance(data, list) else [data]
        calls.append(device is not None)
        if device is not None and any(bytes(d.numpy()) == refused for d in batch):
            raise RuntimeError("nvjpeg: unsupported JPEG")
        return real(data, mode=mode)

    split = ImageSplit.from_files(paths, [0, 0, 0])
    cpu = _batch(split, CFG, False)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", device_refuses)
    assert torch.equal(_batch(split, CFG, True), cpu)
    assert calls.count(False) == 1  # the refused file, on the host; the others on the device


def test_a_split_whose_images_are_not_its_files_pixels_is_read_through_its_images(tmp_path):
    """A split whose loader edits each decoded file (ImageSplit.edit: ObjectNet's cropped border) is refused by
    --decode device's plan; and where a plan made on another split reaches it, its images are still the edited
    ones (image(i)), never the files' own pixels."""
    from transfer_eval.input import device_decode
    from transfer_eval.tasks import load_image

    paths = [str(tmp_path / f"{i}.jpg") for i in range(2)]
    synthetic.write_jpegs([Path(p) for p in paths], size=(96, 72))
    cfg = {**CFG, "input_size": (3, 32, 32)}

    def cropped(i):
        img = load_image(paths[i])
        return img.crop((2, 2, img.width - 2, img.height - 2))

    edited = ImageSplit(cropped, [0, 1], paths=paths, edit="2 px border cropped off")
    plain = ImageSplit.from_files(paths, [0, 1])
    assert "2 px border" in device_decode.unsuitable(edited, cfg) and device_decode.unsuitable(plain, cfg) is None
    assert torch.equal(_batch(edited, cfg, True), _batch(edited, cfg, False))
    assert not torch.equal(_batch(edited, cfg, True), _batch(plain, cfg, True))
