"""The linear probe on frozen features: cached features, the C search on val, the refit on train+val."""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from transfer_eval import devices
from transfer_eval.input import pipeline
from transfer_eval.methods import logistic
from transfer_eval.progress import bar

# Inverse L2 strength C (scikit-learn's LogisticRegression convention): a coarse log grid, then a finer one around
# the best.
COARSE_C = tuple(float(c) for c in np.logspace(-4, 4, 9))
FINE_STEPS = 5


def linear_probe(
    train: tuple,
    val: tuple,
    num_classes: int,
    c_grid=COARSE_C,
    device: torch.device | str = "cpu",
    tol: float = logistic.TOL,
    max_iter: int = logistic.MAX_ITER,
) -> dict:
    """Multinomial logistic regression on standardised features (logistic.py); test is never seen here.

    C is searched on val over a coarse log grid then a finer grid around the best (ties go to the stronger
    regularisation), each fit warm-started from the nearest more strongly regularised one, and the chosen C is
    refitted on train+val. Returns the val accuracy, the selection record (with each C's iterations and the Cs
    that stopped at the iteration cap), and the classifier folded back into a linear head (weight K x D, bias K)
    on the raw features, to be set as the model's head and scored on test once.
    """
    (xtr, ytr), (xva, yva) = train, val
    device = torch.device(device)
    rows = logistic.chunk_rows(num_classes, device)
    rows_tr, rows_va = logistic.Rows([(xtr, ytr)], device, rows), logistic.Rows([(xva, yva)], device, rows)
    mean, std = rows_tr.moments()
    std = std + 1e-6
    z_tr, z_va = logistic.Standardised(rows_tr, mean, std), logistic.Standardised(rows_va, mean, std)
    classes, yva = np.unique(ytr), np.asarray(yva)

    fits: dict[float, logistic.Fit] = {}

    def score(c):
        lower = [k for k in fits if k < c]  # start from the nearest more strongly regularised fit
        fits[c] = logistic.fit(z_tr, classes, c, fits[max(lower)] if lower else None, tol, max_iter)
        return float((z_va.predict(fits[c])[:, 0] == yva).mean())

    best, scores = search_c(c_grid, score)
    w_train, b_train = logistic.as_head(fits[best], mean, std, num_classes)  # never saw val: T is fitted with it

    rows_all = logistic.Rows.concat(rows_tr, rows_va)
    mean, std = rows_all.moments()
    std = std + 1e-6
    classes_all = np.unique(np.concatenate([classes, np.unique(yva)]))
    final = logistic.fit(logistic.Standardised(rows_all, mean, std), classes_all, best, fits[best], tol, max_iter)
    weight, bias = logistic.as_head(final, mean, std, num_classes)
    capped = sorted(c for c, f in fits.items() if not f.converged)
    return {
        "val_top1": scores[best],
        "selection": {
            "searched": "C (inverse L2 strength) of a multinomial logistic regression on standardised features",
            "grid": {f"{c:.4g}": round(a, 6) for c, a in sorted(scores.items())},
            "chosen": {"C": best},
            "refit": "train+val",
            "solver": f"{logistic.SOLVER} on {device.type}",
            "tol": tol,
            "max_iter": max_iter,
            "iterations": {f"{c:.4g}": f.iterations for c, f in sorted(fits.items())},
            "refit_iterations": final.iterations,
            "not_converged": [f"{c:.4g}" for c in capped] + ([] if final.converged else ["refit"]),
        },
        "head_weight": weight.astype(np.float32),
        "head_bias": bias.astype(np.float32),
        "train_head": (w_train.astype(np.float32), b_train.astype(np.float32), classes),
    }


def search_c(c_grid, score: Callable[[float], float]) -> tuple[float, dict[float, float]]:
    """The probe's search for C: every C of the coarse grid in ascending order (so each fit can start from the
    last), then FINE_STEPS log-spaced values between the best one's neighbours; the best on val, ties to the
    stronger regularisation. `score(c)` (val accuracy of a fit at c) is called once per distinct C. Returns the
    chosen C and every score."""
    scores: dict[float, float] = {}

    def once(c):
        if c not in scores:
            scores[c] = score(c)

    grid = sorted(c_grid)
    for c in bar(grid, "probe: C grid"):
        once(c)
    i = grid.index(_best(scores))
    for c in np.logspace(np.log10(grid[max(i - 1, 0)]), np.log10(grid[min(i + 1, len(grid) - 1)]), FINE_STEPS):
        once(float(c))
    return _best(scores), scores


def _best(scores: dict[float, float]) -> float:
    top = max(scores.values())
    return min(c for c, a in scores.items() if a == top)


def cached_features(
    model,
    split,
    data_config: dict,
    device,
    batch_size: int,
    key_parts: dict,
    desc: str = "features",
    plan: pipeline.InputPlan | None = None,
    loader=None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The pooled pre-logits features (memory-mapped from the cache) and labels, and whether they were there
    already (True) or were extracted into the cache now (False): `cached_sources` of `pooled`."""
    args = (model, split, data_config, device, batch_size, key_parts, ["pooled"], desc, plan, loader)
    feats, labels, hit = cached_sources(*args)
    return feats["pooled"], labels, hit


def cached_sources(
    model,
    split,
    data_config: dict,
    device,
    batch_size: int,
    key_parts: dict,
    names=("pooled",),
    desc: str = "features",
    plan: pipeline.InputPlan | None = None,
    loader=None,
    projection: torch.nn.Module | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, bool]:
    """Each feature source of `names` (methods/sources.py; memory-mapped from the cache) and the labels, and
    whether every source was there already (True) or some were extracted now (False): the missing ones all in one
    pass over the split, each into its own cache entry. Features of another precision (bf16) or from other pixels
    (`--decode device`) are keyed apart; the device resize and the decoded-image cache give the CPU transforms'
    exact pixels, so they share their entries."""
    from transfer_eval.methods import inference, sources
    from transfer_eval.store.cache import features as cache

    precision = devices.current(torch.device(device)).features
    common = dict(
        manifest=split.manifest(),
        data_config=data_config,
        files=split.files_signature(),
        precision=precision,
        pixels=plan.pixels if plan is not None else None,
        **key_parts,
    )
    keys = {n: cache.key(**common, source=n) for n in names}
    found = {n: cache.load(k) for n, k in keys.items()}
    missing = [n for n, hit in found.items() if hit is None]
    if missing:
        about = {
            "checkpoint": key_parts["checkpoint"].name,
            "task": key_parts["task"].name,
            "split": key_parts["split_name"],
            "images": len(split),
        }
        # today's extraction where only `pooled` is missing; else one pass that gives every missing source
        forward = None if missing == ["pooled"] else sources.forward(model, missing, projection)
        with contextlib.ExitStack() as stack:
            writers = {n: stack.enter_context(cache.FeatureWriter(keys[n], len(split))) for n in missing}

            def write(rows):
                for n, part in rows.items() if isinstance(rows, dict) else [("pooled", rows)]:
                    writers[n].write(part)

            inference.features(model, split, data_config, device, write, batch_size, plan, desc, loader, forward)
            for n, writer in writers.items():
                writer.commit(split.labels, {**about, **({"source": n} if n != "pooled" else {})})
        for n in missing:
            found[n] = cache.load(keys[n], warn=False)
            if found[n] is None:
                raise OSError(
                    f"the feature cache entry {cache.folder() / keys[n]} cannot be read back after writing it"
                )
    labels = found[names[0]][1]
    return {n: found[n][0] for n in names}, labels, not missing
