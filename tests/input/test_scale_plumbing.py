"""The pieces that let every mode run at ImageNet and iNaturalist size: features streamed to the cache, top-k on
the device, few-shot without N x K matrices, file signatures and unreadable-image scans computed once."""

import numpy as np
import pytest
import torch

from transfer_eval.input import transforms
from transfer_eval.methods import fewshot, inference
from transfer_eval.store.cache import features as cache


def test_feature_writer_streams_into_one_npy_and_publishes_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path))
    rows = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    with cache.FeatureWriter("k1", 10) as w:
        for i in range(0, 10, 4):
            w.write(rows[i : i + 4])
        assert cache.load("k1") is None  # nothing visible before the commit
        w.commit(np.arange(10), {"task": "t", "images": 10})
    feats, labels = cache.load("k1")
    assert isinstance(feats, np.memmap) and np.array_equal(feats, rows) and np.array_equal(labels, np.arange(10))
    (entry,) = cache.entries()
    assert entry["shape"] == [10, 3] and entry["task"] == "t"

    with pytest.raises(RuntimeError):  # a failed extraction leaves no entry and no partial folder
        with cache.FeatureWriter("k2", 10) as w:
            w.write(rows[:4])
            raise RuntimeError("the model failed")
    assert cache.load("k2") is None and [p.name for p in (tmp_path / "features").iterdir()] == ["k1"]
    with cache.FeatureWriter("k3", 10) as w:
        w.write(rows[:4])
        with pytest.raises(ValueError, match="4 feature rows written, 10 expected"):
            w.commit(np.arange(10), {})

    (tmp_path / "features" / "k1" / "features.npy").write_bytes(b"damaged")
    assert cache.load("k1") is None  # a damaged entry is a miss ...
    with cache.FeatureWriter("k1", 10) as w:
        w.write(rows)
        w.commit(np.arange(10), {})
    assert np.array_equal(cache.load("k1")[0], rows)  # ... and is replaced
    (tmp_path / "features" / "old.npz").write_bytes(b"x")  # an entry of the earlier format
    assert cache.clear() == 1 and cache.entries() == [] and not (tmp_path / "features" / "old.npz").exists()


@pytest.mark.parametrize("classes", [3, 5, 12])
def test_topk_on_the_device_is_a_stable_argsort(classes):
    rng = np.random.default_rng(classes)
    scores = rng.integers(0, 4, size=(50, classes)).astype(np.float32)  # many ties
    got = inference.topk(torch.from_numpy(scores)).numpy()
    ref = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    if classes < 5:
        ref = np.concatenate([ref, np.full((50, 5 - classes), -1)], axis=1)
    assert np.array_equal(got, ref)  # equal scores: the lower class first, at every place
    assert np.array_equal(got[:, 0], scores.argmax(1))
    distinct = rng.permutation(50 * classes).reshape(50, classes).astype(np.float32)  # no ties: topk alone
    assert np.array_equal(
        inference.topk(torch.from_numpy(distinct)).numpy()[:, : min(5, classes)], np.argsort(-distinct, axis=1)[:, :5]
    )


@pytest.mark.parametrize("n, d", [(60, 8), (12, 40)])
def test_fewshot_per_class_sums_match_the_one_hot_solve(n, d):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(n, d)) + 1.0, np.arange(n) % 6
    mean, std, w = fewshot.solve(x, y, 6)
    xz = np.hstack([(x - mean) / std, np.full((n, 1), 100.0)])
    t = 2 * np.eye(6)[y] - 1  # the N x K targets the solve no longer builds
    if n >= d + 1:
        ref = np.linalg.solve(xz.T @ xz + 1024.0 * np.eye(d + 1), xz.T @ t)
    else:
        ref = xz.T @ np.linalg.solve(xz @ xz.T + 1024.0 * np.eye(n), t)
    assert np.allclose(w, ref, rtol=1e-8, atol=1e-10)
    xt = rng.normal(size=(30, d))
    top = fewshot.predict(xt, mean, std, w)
    assert np.array_equal(top, np.argsort(-fewshot.scores(xt, mean, std, w), axis=1, kind="stable")[:, :5])


def test_fewshot_indices_match_the_per_class_scan():
    labels = np.random.default_rng(1).integers(0, 40, 5000)
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        ref = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:5] for c in np.unique(labels)])
        assert np.array_equal(fewshot.indices(labels, 5, seed), ref)


def _jpegs(folder, n):
    from PIL import Image

    files = []
    for i in range(n):
        files.append(folder / f"{i}.jpg")
        Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(files[-1])
    return files


def test_signature_and_unreadable_scan_are_computed_once(tmp_path, monkeypatch):
    import os

    from transfer_eval.tasks import ImageSplit, splits

    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))
    files = _jpegs(tmp_path, 6)
    files[2].write_bytes(b"not a jpeg")
    split = ImageSplit.from_files(files, np.zeros(6, np.int64))
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(splits.os, "stat", lambda p, *a, **k: (stats.append(p), real_stat(p, *a, **k))[1])
    first = split.files_signature()
    assert split.files_signature() == first and len(stats) == 6  # one pass, then memoised

    assert split.unreadable() == [2]
    decodes = []
    again = ImageSplit(lambda i: decodes.append(i), split.labels, paths=split.paths)  # same files, new object
    assert again.unreadable() == [2] and decodes == []  # the scan's answer was kept under the signature
    files[3].write_bytes(b"damaged later")  # a changed file changes the signature: scanned again
    changed = ImageSplit.from_files(files, np.zeros(6, np.int64))
    assert changed.files_signature() != first and changed.unreadable() == [2, 3]


def test_loss_is_read_every_n_steps_and_a_nan_still_names_its_step(monkeypatch):
    import torch.nn.functional as F

    from transfer_eval import checkpoints
    from transfer_eval.methods import finetune
    from transfer_eval.tasks import ImageSplit

    model, cfg = checkpoints.build_model(checkpoints.load_registry()["vit_demo"], 10)
    images = np.random.default_rng(0).integers(0, 256, size=(16, 16, 16, 3), dtype=np.uint8)
    from PIL import Image

    split = ImageSplit(lambda i: Image.fromarray(images[i]), np.arange(16) % 10)
    recipe = finetune.make_recipe({"steps": 30, "warmup_steps": 1, "batch_size": 8, "augment": False})
    calls = []
    real = F.cross_entropy

    def nan_at_step_7(logits, y, **kw):
        calls.append(1)
        loss = real(logits, y, **kw)
        return loss * float("nan") if len(calls) == 8 else loss

    monkeypatch.setattr(finetune.F, "cross_entropy", nan_at_step_7)
    reads = []
    real_check = finetune.check_losses
    monkeypatch.setattr(
        finetune, "check_losses", lambda losses, lr: (reads.append(len(losses)), real_check(losses, lr))[1]
    )
    with pytest.raises(finetune.Diverged, match=r"loss became nan at step 7 .*read at step 19"):
        finetune.train(model, split, cfg, recipe, 0.01, torch.device("cpu"), seed=0)
    assert reads == [finetune.LOSS_EVERY] and len(calls) == 20  # one read for 20 steps, none per step


def test_default_workers_follow_the_cores(monkeypatch):
    from transfer_eval.input import pipeline

    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert pipeline.default_workers(torch.device("cuda")) == 15  # not capped at 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert pipeline.default_workers(torch.device("cuda")) == 7  # two processes share the machine's cores
    assert pipeline.default_workers(torch.device("cpu")) == 0


def test_workers_hand_over_uint8_and_the_device_normalises():
    from PIL import Image

    from transfer_eval.input import pipeline
    from transfer_eval.tasks import ImageSplit

    images = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    split = ImageSplit(lambda i: Image.fromarray(images[i]), [0, 1, 2, 3])
    cfg = {
        "input_size": (3, 16, 16),
        "interpolation": "bilinear",
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.25, 0.3),
        "crop_pct": 1.0,
    }
    pipe = pipeline.pipeline(split, cfg, torch.device("cpu"))
    dl = pipeline.loader(pipe, 4, torch.device("cpu"))
    raw, _ = next(iter(dl))
    assert raw.dtype == torch.uint8 and raw.shape == (4, 3, 16, 16)  # what crosses the worker boundary
    x, y = next(pipe.batches(dl))
    ref = transforms.eval_transform(cfg)  # timm's float transform: ToTensor + Normalize on the CPU
    expected = torch.stack([ref(split.image(i)) for i in range(4)])
    assert torch.equal(x, expected) and y.tolist() == [0, 1, 2, 3]  # bit for bit: results do not move
