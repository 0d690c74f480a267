"""The pieces that let every mode run at ImageNet and iNaturalist size: features streamed to the cache, top-k on
the device, few-shot without N x K matrices, file signatures and unreadable-image scans computed once."""

import numpy as np
import pytest
import torch

from transfer_eval import cache, evaluate, fewshot


def test_feature_writer_streams_into_one_npy_and_publishes_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path))
    rows = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    with cache.FeatureWriter("k1", 10) as w:
        for i in range(0, 10, 4):
            w.write(rows[i:i + 4])
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
    got = evaluate.topk(torch.from_numpy(scores)).numpy()
    ref = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    if classes < 5:
        ref = np.concatenate([ref, np.full((50, 5 - classes), -1)], axis=1)
    assert np.array_equal(got, ref)  # equal scores: the lower class first, at every place
    assert np.array_equal(got[:, 0], scores.argmax(1))
    distinct = rng.permutation(50 * classes).reshape(50, classes).astype(np.float32)  # no ties: topk alone
    assert np.array_equal(evaluate.topk(torch.from_numpy(distinct)).numpy()[:, :min(5, classes)],
                          np.argsort(-distinct, axis=1)[:, :5])


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

    from transfer_eval import tasks
    from transfer_eval.tasks import ImageSplit

    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))
    files = _jpegs(tmp_path, 6)
    files[2].write_bytes(b"not a jpeg")
    split = ImageSplit.from_files(files, np.zeros(6, np.int64))
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(tasks.os, "stat", lambda p, *a, **k: (stats.append(p), real_stat(p, *a, **k))[1])
    first = split.files_signature()
    assert split.files_signature() == first and len(stats) == 6  # one pass, then memoised

    assert split.unreadable() == [2]
    decodes = []
    again = ImageSplit(lambda i: decodes.append(i), split.labels, paths=split.paths)  # same files, new object
    assert again.unreadable() == [2] and decodes == []  # the scan's answer was kept under the signature
    files[3].write_bytes(b"damaged later")  # a changed file changes the signature: scanned again
    changed = ImageSplit.from_files(files, np.zeros(6, np.int64))
    assert changed.files_signature() != first and changed.unreadable() == [2, 3]
