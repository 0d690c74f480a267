"""Unreadable images on the terminal (issue 34, item 8): with --bad-images stop the files are found by one scan
and named in one line, once for the command, not once per mode; with skip the run's line says how many were left
out."""

import numpy as np
from conftest import cli, json_lines
from PIL import Image

BAD = ("train/a/bad0.jpg", "train/b/bad1.jpg", "test/a/bad2.png")


def _folder(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c, cls in enumerate("ab"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((16, 16, 3)) * 80 + 120 * c).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    for name in BAD:
        (root / name).write_bytes(b"not an image at all")
    return root


def test_stop_names_every_unreadable_file_once_for_all_modes(tmp_path):
    root = _folder(tmp_path / "data")
    db = tmp_path / "r.sqlite"
    args = ("run", "-c", "vit_demo", "-t", f"folder:{root}", "-m", "linear,knn,fewshot", "--results", db, "--json")
    proc = cli(*args, "--set", "c_grid=[1.0]", "--set", "k=[3]", "--set", "shots=[1]", "--seed", "0")
    assert proc.returncode == 1, proc.stderr
    rows = json_lines(proc.stdout)
    assert [r["status"] for r in rows] == ["failed"] * 3
    said = [line for line in proc.stderr.splitlines() if "bad0.jpg" in line]
    assert len(said) == 1, proc.stderr  # printed once, not once per mode
    assert said[0].startswith("transfer-eval: run failed: unreadable images in folder:")
    assert all(str(root / name) in said[0] for name in BAD) and "3 of the" in said[0]
    assert "--bad-images skip" in said[0]
    assert sum("not run: it reads the unreadable images" in line for line in proc.stderr.splitlines()) == 2
    for r in rows:  # every record says what was found
        assert r["error"] == said[0].split("run failed: ", 1)[1]
        assert sorted(f for files in r["selection"]["unreadable"].values() for f in files) == sorted(
            str(root / name) for name in BAD
        )
    assert proc.stderr.count("Traceback") == 0


def test_stop_names_the_first_few_and_the_count(tmp_path, monkeypatch):
    from transfer_eval.run import checks

    monkeypatch.setattr(checks, "SHOWN_UNREADABLE", 2)
    root = _folder(tmp_path / "data")
    proc = cli("run", "-c", "vit_demo", "-t", f"folder:{root}", "-m", "knn", "--results", tmp_path / "r.sqlite")
    assert proc.returncode == 1, proc.stderr
    (said,) = [line for line in proc.stderr.splitlines() if "unreadable images in" in line]
    named = [name for name in BAD if str(root / name) in said]
    assert named == list(BAD[:2]) and " and 1 more " in said and "3 of the" in said


def test_skip_says_on_the_runs_line_how_many_were_left_out(tmp_path):
    root = _folder(tmp_path / "data")
    args = ("run", "-c", "vit_demo", "-t", f"folder:{root}", "-m", "knn", "--bad-images", "skip")
    proc = cli(*args, "--set", "k=[3]", "--results", tmp_path / "r.sqlite")
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if "stored as run" in ln]
    assert "top-1" in line and "3 unreadable images left out" in line
