"""`transfer-eval bench --scale`: how the probe and feature extraction grow with the data, on synthetic data.

- The linear probe: synthetic features (N train + N/5 val + N/5 test rows, D dimensions, K classes: Gaussian
  class means under per-dimension noise) through the suite's probe (transfer_eval.methods.logistic on the device) and
  through the same protocol written with scikit-learn (the solver the suite used before, warm starts along the C
  path as it did), with the same grid and tolerance, one after the other: time, iterations, the chosen C, val
  accuracies, and their agreement (test predictions, coefficients).
- Feature extraction: folders of tiny JPEG files of two sizes extracted into a fresh feature cache, each in its
  own process, by a wide, shallow ViT (width 1024, so the features are large and the compute small): the peak
  resident memory of each, which should not grow with N (the features go to a file, not to memory).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import tempfile
import time
import warnings

import numpy as np
import torch

from transfer_eval import devices
from transfer_eval.methods import logistic, probe


def synthetic_features(n: int, dim: int, classes: int, seed: int = 0):
    """(train, val, test) pairs of float32 features and labels: n, n/5 and n/5 rows, every class in train."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)).astype(np.float32) * 0.15  # classes overlap: no easy task
    noise = rng.uniform(0.5, 1.5, size=dim).astype(np.float32)

    def rows(m):
        y = np.concatenate([np.arange(classes), rng.integers(0, classes, max(m - classes, 0))])[:m]
        x = means[y] + rng.standard_normal((m, dim), dtype=np.float32) * noise + 2.0
        return x, y

    return rows(n), rows(max(n // 5, classes)), rows(max(n // 5, classes))


def sklearn_probe(train, val, num_classes: int, c_grid, tol: float, max_iter: int) -> dict:
    """The probe's protocol with scikit-learn's LogisticRegression (lbfgs), warm-started along the C path as the
    suite did before its own solver: the reference the suite's probe is timed and checked against."""
    from sklearn.linear_model import LogisticRegression

    (xtr, ytr), (xva, yva) = train, val
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    fits, iterations = {}, {}

    def fit(x, y, c, start):
        clf = LogisticRegression(C=c, tol=tol, max_iter=max_iter, warm_start=start is not None)
        if start is not None:
            clf.coef_, clf.intercept_, clf.classes_ = start.coef_.copy(), start.intercept_.copy(), start.classes_
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return clf.fit(x, y)

    def score(c):
        lower = [k for k in fits if k < c]
        fits[c] = fit((xtr - mu) / sd, ytr, c, fits[max(lower)] if lower else None)
        iterations[c] = int(fits[c].n_iter_[0])
        return float((fits[c].predict((xva - mu) / sd) == yva).mean())

    best, scores = probe.search_c(c_grid, score)  # the suite's own search: only the solver differs
    xall, yall = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
    mu, sd = xall.mean(0), xall.std(0) + 1e-6
    clf = fit((xall - mu) / sd, yall, best, fits[best])
    weight = np.zeros((num_classes, xtr.shape[1]))
    bias = np.zeros(num_classes)
    weight[clf.classes_], bias[clf.classes_] = clf.coef_ / sd, clf.intercept_
    bias = bias - weight @ mu
    return {
        "chosen_c": best,
        "grid": {f"{c:.4g}": a for c, a in sorted(scores.items())},
        "iterations": {f"{c:.4g}": n for c, n in sorted(iterations.items())},
        "refit_iterations": int(clf.n_iter_[0]),
        "head_weight": weight,
        "head_bias": bias,
    }


def _predict(x, weight, bias) -> np.ndarray:
    return (x @ weight.T.astype(np.float32) + bias.astype(np.float32)).argmax(1)


def probe_scale(
    n: int,
    dim: int,
    classes: int,
    device,
    c_grid,
    tol: float = logistic.TOL,
    max_iter: int = logistic.MAX_ITER,
    sklearn: bool = True,
) -> dict:
    train, val, (xte, yte) = synthetic_features(n, dim, classes)
    out = {
        "n_train": n,
        "n_val": len(val[1]),
        "dim": dim,
        "classes": classes,
        "c_grid": list(c_grid),
        "tol": tol,
        "device": devices.device_name(device),
    }
    start = time.perf_counter()
    ours = probe.linear_probe(train, val, classes, c_grid, device, tol, max_iter)
    seconds = time.perf_counter() - start
    sel = ours["selection"]
    iters = sum(sel["iterations"].values()) + sel["refit_iterations"]
    pred = _predict(xte, ours["head_weight"], ours["head_bias"])
    out["suite"] = {
        "seconds": seconds,
        "chosen_c": sel["chosen"]["C"],
        "grid": sel["grid"],
        "iterations": sel["iterations"],
        "refit_iterations": sel["refit_iterations"],
        "total_iterations": iters,
        "seconds_per_iteration": seconds / max(iters, 1),
        "not_converged": sel["not_converged"],
        "test_top1": float((pred == yte).mean()),
    }
    if sklearn:
        start = time.perf_counter()
        ref = sklearn_probe(train, val, classes, c_grid, tol, max_iter)
        seconds = time.perf_counter() - start
        ref_pred = _predict(xte, ref["head_weight"], ref["head_bias"])
        iters = sum(ref["iterations"].values()) + ref["refit_iterations"]
        out["sklearn"] = {
            "seconds": seconds,
            "chosen_c": ref["chosen_c"],
            "grid": ref["grid"],
            "iterations": ref["iterations"],
            "refit_iterations": ref["refit_iterations"],
            "total_iterations": iters,
            "seconds_per_iteration": seconds / max(iters, 1),
            "test_top1": float((ref_pred == yte).mean()),
        }
        w, w_ref = ours["head_weight"].astype(np.float64), ref["head_weight"]
        out["agreement"] = {
            "same_c": bool(np.isclose(out["suite"]["chosen_c"], ref["chosen_c"])),
            "test_predictions_identical": float((pred == ref_pred).mean()),
            "head_weight_max_diff_relative": float(np.abs(w - w_ref).max() / np.abs(w_ref).max()),
        }
        out["speedup_vs_sklearn"] = out["sklearn"]["seconds"] / out["suite"]["seconds"]
    return out


# --------------------------------------------------------------------------------------------------------------
# Extraction's peak memory

EXTRACT_WIDTH = 1024


def _jpeg_folder(folder: str, n: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    files = []
    for i in range(n):
        files.append(os.path.join(folder, f"{i:07d}.jpg"))
        if not os.path.exists(files[-1]):
            base.rotate(i % 360).save(files[-1], quality=90)
    return files


def _extract_child(files: list[str], cache: str, queue) -> None:
    """In a fresh process: extract the features of `files` into the feature cache at `cache`; report the peak
    resident memory (the kernel's high-water mark), the features' size and the time."""
    import timm

    from transfer_eval import checkpoints, tasks
    from transfer_eval.tasks import ImageSplit

    os.environ["TRANSFER_EVAL_CACHE"] = cache
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_large_patch16_224", pretrained=False, img_size=16, patch_size=16, depth=1, num_classes=0
    )
    cfg = {**timm.data.resolve_model_data_config(model), "input_size": (3, 16, 16), "crop_pct": 1.0}
    split = ImageSplit.from_files(files, np.zeros(len(files), np.int64))
    ck = checkpoints.Checkpoint(name="bench-wide", model="vit_large_patch16_224")
    task = tasks.Task(name="bench-jpegs", num_classes=1, load=lambda s, c: split)
    parts = {"weights_sha256": "0" * 64, "checkpoint": ck, "task": task, "split_name": "train"}
    start = time.perf_counter()
    feats, _, _ = probe.cached_features(model, split, cfg, torch.device("cpu"), 256, parts)
    seconds = time.perf_counter() - start
    queue.put(
        {
            "images": len(files),
            "feature_mb": feats.nbytes / 2**20,
            "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def extraction_memory(sizes: tuple[int, ...]) -> dict:
    ctx = multiprocessing.get_context("spawn")
    out = {"width": EXTRACT_WIDTH, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        files = _jpeg_folder(tmp, max(sizes))
        for n in sizes:
            queue = ctx.Queue()
            proc = ctx.Process(target=_extract_child, args=(files[:n], os.path.join(tmp, f"cache{n}"), queue))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise RuntimeError(f"the extraction of {n} images failed in its process (exit {proc.exitcode})")
            out["runs"].append(queue.get(timeout=10))
    first, last = out["runs"][0], out["runs"][-1]
    out["peak_growth"] = last["peak_rss_mb"] / first["peak_rss_mb"]
    return out
