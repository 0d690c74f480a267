"""`--decode device`: JPEG files decoded and resized on the device (here the CPU stands in for it, through the same
code: torchvision's decode_jpeg and float resize). Its pixels against PIL's, its accuracy effect on the demo, its
feature cache entries kept apart, its record, and its refusals."""

from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, cli, json_lines

from transfer_eval import data, synthetic
from transfer_eval.tasks import ImageSplit

CFG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def _batch(split, cfg, decode: bool) -> torch.Tensor:
    plan = data.InputPlan(decode_on_device=decode, workers=0)
    pipe = data.pipeline(split, cfg, torch.device("cpu"), plan)
    x, _ = next(iter(pipe.batches(data.loader(pipe, len(split), torch.device("cpu")))))
    return x


@pytest.mark.parametrize("crop_mode, interpolation", [("center", "bicubic"), ("squash", "bilinear")])
def test_pixels_within_a_few_levels_of_pils(tmp_path, crop_mode, interpolation):
    paths = [tmp_path / f"{i}.jpg" for i in range(6)]
    synthetic.write_jpegs(paths, size=(500, 375))
    synthetic.write_jpegs(paths[:2], size=(333, 500))  # portrait: the other side is the shorter one
    split = ImageSplit.from_files(paths, [0] * len(paths))
    cfg = {**CFG, "crop_mode": crop_mode, "interpolation": interpolation}
    cpu, dev = _batch(split, cfg, False), _batch(split, cfg, True)
    assert cpu.shape == dev.shape == (6, 3, 224, 224)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    levels = ((dev - cpu) * std * 255).abs()  # back to 8-bit levels
    assert levels.max() <= 4 and levels.mean() < 0.5, (levels.max(), levels.mean())  # measured: 2 and 0.18
    assert levels.max() > 0  # not PIL's arithmetic: the plan must be named and cached apart (below)


def test_the_plan_refuses_what_it_cannot_decode(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    opts = data.InputOptions(decode="device")
    with pytest.raises(Exception, match="is not a JPEG file"):
        data.plan_input(opts, ImageSplit.from_files([tmp_path / "a.png"], [0]), CFG, torch.device("cpu"), None)
    with pytest.raises(Exception, match="not files"):
        data.plan_input(opts, ImageSplit(lambda i: None, [0]), CFG, torch.device("cpu"), None)


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


def test_the_accuracy_effect_is_within_half_a_point_and_stored_apart(tmp_path):
    root = _jpeg_digits(tmp_path / "digits_jpeg")
    common = ("run", "-c", "vit_demo_shapes", "-t", f"folder:{root}", "-m", "linear,knn", "--json")
    common += ("--results", tmp_path / "r.sqlite")
    env = {"TRANSFER_EVAL_CACHE": str(tmp_path / "cache")}
    cpu = {r["mode"]: r for r in json_lines(cli(*common, env=env).stdout)}
    dev_proc = cli(*common, "--decode", "device", env=env)
    assert dev_proc.returncode == 0, dev_proc.stderr
    dev = {r["mode"]: r for r in json_lines(dev_proc.stdout)}
    # the features were extracted again (cached apart), and the runs are the same runs (the same key): run again
    # with --decode device, a stored result is returned as it is, so the comparison uses --force
    assert dev["linear"]["run_id"] == cpu["linear"]["run_id"]
    forced = cli(*common, "--decode", "device", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    dev = {r["mode"]: r for r in json_lines(forced.stdout)}
    assert dev["linear"]["input_pipeline"] == "device-decode" and cpu["linear"]["input_pipeline"] == "cpu"
    assert dev["linear"]["selection"]["features_cached"] is False  # not the CPU pixels' entry
    for mode in ("linear", "knn"):
        assert abs(dev[mode]["top1"] - cpu[mode]["top1"]) <= 0.005, (mode, dev[mode]["top1"], cpu[mode]["top1"])
    assert cpu["linear"]["top1"] > 0.8
    entries = cli("cache", "list", "--json", env=env)
    assert len(json_lines(entries.stdout)) == 6  # train, val, test features for each kind of pixels


def test_decode_device_on_data_without_files_is_one_line(tmp_path):
    proc = cli(
        "run", "-c", "vit_demo", "-t", "digits", "-m", "linear", "--decode", "device", "--results", tmp_path / "r"
    )
    assert_one_line_error(proc, "--decode device: the task's images are not files")
