"""Every file the suite writes has the mode `open()` would give it under the user's umask (issue 34, item 4): the
write-then-rename helper's temporary file is 0600, and a report copied to a web server or a cache shared by a team
must not stay that way."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, digits_results
from PIL import Image

from transfer_eval import io
from transfer_eval.tasks import ImageSplit


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def _files(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _expect(files: dict[str, int], mask: int):
    assert files, "nothing was written"
    wrong = {name: oct(mode) for name, mode in files.items() if mode != 0o666 & ~mask}
    assert not wrong, f"not {oct(0o666 & ~mask)} under umask {oct(mask)}: {wrong}"


def test_the_umask_is_read_without_being_changed(umask):
    assert io.umask() == umask and io.umask() == umask


def test_the_write_then_rename_helper_follows_the_umask(tmp_path, umask):
    io.write_text(tmp_path / "a.txt", "x")
    with io.replacing(tmp_path / "b.npz", ".npz") as tmp:
        np.savez(tmp, x=np.zeros(2))
    _expect(_files(tmp_path), umask)


def test_features_output_the_feature_cache_and_the_image_cache_follow_the_umask(tmp_path, umask):
    cache = tmp_path / "cache"
    proc = cli(
        "features", "-c", "vit_demo", "-t", "digits", "--split", "test", "--output", tmp_path / "out" / "f.npz",
        env={"TRANSFER_EVAL_CACHE": cache},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _expect(_files(tmp_path / "out"), umask)
    assert list((cache / "features").iterdir())
    _expect(_files(cache / "features"), umask)
    from transfer_eval.input import image_cache

    files = []
    for i in range(3):
        files.append(tmp_path / "jpg" / f"{i}.jpg")
        files[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (i * 60, 20, 90)).save(files[-1])
    cfg = {"input_size": (3, 16, 16), "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"}
    cfg |= {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    os.environ["TRANSFER_EVAL_CACHE"], before = str(cache), os.environ["TRANSFER_EVAL_CACHE"]
    try:
        image_cache.cached(ImageSplit.from_files(files, [0, 1, 0]), cfg)
    finally:
        os.environ["TRANSFER_EVAL_CACHE"] = before
    _expect(_files(cache / "images"), umask)


def test_report_html_and_leaderboard_files_follow_the_umask(tmp_path, umask):
    db = digits_results(tmp_path / "results.sqlite", {"vit_demo": 80, "vit_demo_shapes": 90})
    site = tmp_path / "site"
    proc = cli("report", "--html", site, "--resamples", "100", "--results", db)
    assert proc.returncode == 0, proc.stderr
    assert (site / "index.html").exists()
    _expect(_files(site), umask)
    out = tmp_path / "board"
    args = ("--format", "csv", "--output", out / "lb.csv", "--plot", out / "lb.png", "--results", db)
    proc = cli("leaderboard", *args)
    assert proc.returncode == 0, proc.stderr
    assert sorted(_files(out)) == ["lb.csv", "lb.png"]
    _expect(_files(out), umask)
