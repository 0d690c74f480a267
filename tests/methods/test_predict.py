"""`transfer-eval predict`: one task served from its delta file (`run --save-delta`) on the shared checkpoint gives
back the run's stored test predictions exactly, for every mode in MODES that saves a delta (new modes join here).

The digits task keeps its images in memory, so the test split's images are written as PNG files, named by their
position in the split (0000.png, 0001.png, ...): PNG is lossless and `load_image` gives back the very RGB pixels the
task's loader gives, so the folder, walked in sorted order, is the test split in its order, and predict reads it
through the transform the delta records. (A `folder:PATH` task would split and order its images its own way, and
the comparison would then be with another run than the one of the demo task.) Runs use --limit, as the registry
tests do, so each mode trains in seconds; the limited test split is the suite's own (`ImageSplit.limited`).
"""

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, cli, json_lines

from transfer_eval.methods.modes import MODES
from transfer_eval.store.results import Store

CHECKPOINT = "vit_demo_shapes"
LIMIT = 120  # images per split
FAST = {  # the quickest settings that still train, per stage
    "probe": ["--set", "c_grid=[0.1,10]"],
    "fewshot": ["--set", "shots=5"],
    "knn": [],
    "finetune": ["--set", "steps=6", "--set", "warmup_steps=1"],
}
NO_DELTA = {  # stage -> why its modes have no delta to serve here
    "eval": "trains nothing, and its run on digits is refused: vit_demo_shapes has no 10-class head of its own"
}


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    """(folder of the limited test split's images as PNG files in split order, the split)."""
    from transfer_eval import tasks
    from transfer_eval.tasks import LoadContext

    split = tasks.discover()["digits"].dataset("test", LoadContext(Path("."))).limited(LIMIT)
    folder = tmp_path_factory.mktemp("digits_test")
    for i in range(len(split)):
        split.image(i).save(folder / f"{i:04d}.png")
    return folder, split


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """mode name -> (store, delta file, result row) of its demo run with --save-delta, run once per module."""
    root, done = tmp_path_factory.mktemp("predict_runs"), {}

    def run(name):
        if name not in done:
            stage = MODES[name].stage
            db, folder = root / "r.sqlite", root / name
            args = ["-c", CHECKPOINT, "-t", "digits", "-m", name, "--seed", "0", "--limit", LIMIT, *FAST[stage]]
            proc = cli("run", *args, "--results", db, "--save-delta", folder, "--json")
            assert proc.returncode == 0, proc.stderr
            (row,) = json_lines(proc.stdout)
            (path,) = folder.glob("*.safetensors")
            done[name] = (db, path, row)
        return done[name]

    return run


@pytest.mark.parametrize("name", sorted(MODES))
def test_predict_gives_the_stored_test_predictions_exactly(name, saved, test_split):
    mode = MODES[name]
    if mode.stage in NO_DELTA:
        pytest.skip(f"{name}: {NO_DELTA[mode.stage]}")
    db, path, row = saved(name)
    folder, split = test_split
    proc = cli("predict", "-c", CHECKPOINT, "--delta", path, folder, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert [Path(r["path"]).name for r in rows] == [f"{i:04d}.png" for i in range(len(split))]
    labels, top5 = Store(db).predictions(row["run_id"])
    assert np.array_equal(labels, split.labels)  # the files are the stored run's test split, in its order
    assert np.array_equal(np.array([r["labels"] for r in rows]), top5)
    for r in rows:  # JSON Lines parsed back: class names and scores beside the labels, best first
        assert r["names"] == [str(c) for c in r["labels"]] and len(r["scores"]) == 5
        assert r["scores"] == sorted(r["scores"], reverse=True)


SOURCES = {  # probes reading another feature source, normalised: served from the chosen source, as the run read it
    "linear": ["--set", "c_grid=[0.1,10]", "--set", "features=[pooled,cls+avg]", "--set", "normalise=standard"],
    "knn": ["--set", "features=last2", "--set", "normalise=standard"],
    "fewshot": ["--set", "shots=5", "--set", "features=avg", "--set", "normalise=l2"],
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_predict_serves_a_probe_of_another_feature_source(name, tmp_path, test_split):
    folder, split = test_split
    db, out = tmp_path / "r.sqlite", tmp_path / "delta"
    args = ["-c", CHECKPOINT, "-t", "digits", "-m", name, "--seed", "0", "--limit", LIMIT, *SOURCES[name]]
    proc = cli("run", *args, "--results", db, "--save-delta", out, "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json_lines(proc.stdout)
    assert row["recipe"]["normalise"] != "none"  # not the default path
    (path,) = out.glob("*.safetensors")
    rows = json_lines(cli("predict", "-c", CHECKPOINT, "--delta", path, folder, "--json").stdout)
    _, top5 = Store(db).predictions(row["run_id"])
    assert np.array_equal(np.array([r["labels"] for r in rows]), top5)


def test_the_delta_describes_its_task(saved):
    from transfer_eval.methods import deltas

    _, path, row = saved("linear")
    meta, _ = deltas.read(path)
    info = deltas.served(meta, path)
    assert (info["mode"], info["mode_version"], info["stage"]) == ("linear", MODES["linear"].version, "probe")
    assert info["recipe"] == row["recipe"] and info["chosen"] == {"C": row["selection"]["chosen"]["C"]}
    assert info["classes"] == [str(i) for i in range(10)] and info["task"] == "digits"
    assert info["data_config"]["input_size"] == (3, row["resolution"], row["resolution"])
    assert info["checkpoint"] == CHECKPOINT and info["weights_sha256"] == row["weights_sha256"]


def test_table_and_api_give_the_same_predictions(saved, test_split):
    import transfer_eval as te

    _, path, _ = saved("linear")
    folder, _ = test_split
    files = [folder / "0003.png", folder / "0001.png"]  # files keep the order given
    listed = json_lines(cli("predict", "-c", CHECKPOINT, "--delta", path, *files, "--json", "--top-k", 3).stdout)
    got = te.predict(CHECKPOINT, path, files, top_k=3)
    assert [p.to_dict() for p in got] == listed and [p.path for p in got] == [str(f) for f in files]
    assert all(len(p.labels) == 3 and 0 < sum(p.scores) <= 1 + 1e-6 for p in got)  # softmax probabilities
    table = cli("predict", "-c", CHECKPOINT, "--delta", path, *files, "--top-k", 2)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["image", "top-1", "top-2"]
    for p, line in zip(got, lines[2:]):
        assert line.split()[:3] == [p.path, p.names[0], f"({p.scores[0]:.4f})"]


def test_bad_input_is_one_line(saved, test_split, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from transfer_eval.methods import deltas

    _, path, _ = saved("linear")
    folder, _ = test_split
    image = folder / "0000.png"
    # a delta for other weights: vit_demo is the same architecture, randomly initialised
    assert_one_line_error(cli("predict", "-c", "vit_demo", "--delta", path, image), "other weights", "vit_demo")
    assert_one_line_error(cli("predict", "-c", CHECKPOINT, "--delta", tmp_path / "none.safetensors", image), "exist")
    assert_one_line_error(cli("predict", "-c", CHECKPOINT, "--delta", image, image), "not a transfer-eval delta")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    assert_one_line_error(
        cli("predict", "-c", CHECKPOINT, "--delta", tmp_path / "bare.safetensors", image), "not a transfer-eval delta"
    )
    older = {k: v for k, v in meta.items() if k not in deltas.SERVED}  # what a delta of the first format held
    save_file(tensors, str(tmp_path / "older.safetensors"), metadata=older)
    assert_one_line_error(
        cli("predict", "-c", CHECKPOINT, "--delta", tmp_path / "older.safetensors", image), "--save-delta"
    )
    save_file(tensors, str(tmp_path / "later.safetensors"), metadata={**meta, "mode_version": "99"})
    assert_one_line_error(
        cli("predict", "-c", CHECKPOINT, "--delta", tmp_path / "later.safetensors", image), "version 99"
    )
    assert_one_line_error(cli("predict", "-c", CHECKPOINT, "--delta", tmp_path, image), "is a folder")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert_one_line_error(
        cli("predict", "-c", CHECKPOINT, "--delta", path, image, tmp_path / "broken.png"), "broken.png"
    )
    assert_one_line_error(cli("predict", "-c", CHECKPOINT, "--delta", path, tmp_path / "gone.png"), "gone.png")
    # a truncated JPEG: predict and a run's line say the same of it (the decoder's words)
    from io import BytesIO

    from PIL import Image

    from transfer_eval.run import checks
    from transfer_eval.tasks.splits import ImageSplit, UnreadableImage, load_image

    jpeg = BytesIO()
    Image.open(image).convert("RGB").resize((64, 64)).save(jpeg, "JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    with pytest.raises(UnreadableImage) as found:
        load_image(trunc)
    reason = found.value.reason
    said = f"unreadable image {trunc}: {reason}; fix or remove the file"
    assert_one_line_error(cli("predict", "-c", CHECKPOINT, "--delta", path, trunc), said)
    line, _ = checks.unreadable_images("t", {"train": ImageSplit.from_files([str(trunc)], [0])}, str(found.value))
    assert f"{trunc} (the first: {reason})" in line
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("predict", "-c", CHECKPOINT, "--delta", path, tmp_path / "empty"), "no image files")
