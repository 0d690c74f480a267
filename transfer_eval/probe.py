"""Probes on frozen features: feature extraction and the linear (logistic-regression) probe."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from transfer_eval import data
from transfer_eval.progress import bar

# Inverse L2 strength C of scikit-learn's LogisticRegression: a coarse log grid, then a finer one around the best.
COARSE_C = tuple(float(c) for c in np.logspace(-4, 4, 9))
FINE_STEPS = 5


@torch.no_grad()
def extract_features(model, split, data_config: dict, device: torch.device, batch_size: int = 256,
                     desc: str = "features", plan: data.InputPlan | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits features (N x D float32) and labels, in the split's order."""
    model.eval().to(device)
    feats = []
    pipe = data.pipeline(split, data_config, device, plan)
    dl = data.loader(pipe, batch_size, device)
    for batch in bar(dl, desc, "batch"):
        x, _ = pipe.to_device(batch)
        with data.autocast(device):
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        feats.append(f.float().cpu())
    out = torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)
    return out.astype(np.float32), split.labels.copy()


def _fit(x, y, c, seed, start=None):
    """A fit at C, warm-started from `start` (a fit at a nearby C) when given: the regularisation path."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=1000, tol=1e-4, random_state=seed, warm_start=start is not None)
    if start is not None:
        clf.coef_, clf.intercept_, clf.classes_ = start.coef_.copy(), start.intercept_.copy(), start.classes_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at extreme C: that C simply scores worse on val
        clf.fit(x, y)
    return clf


def linear_probe(train: tuple, val: tuple, num_classes: int, seed: int = 0, c_grid=COARSE_C) -> dict:
    """Multinomial logistic regression on standardised features; test is never seen here.

    C is searched on val over a coarse log grid then a finer grid around the best (ties go to the stronger
    regularisation), and the chosen C is refitted on train+val. Returns the val accuracy, the selection
    record, and the classifier folded back into a linear head (weight K x D, bias K) on the raw features, to
    be set as the model's head and scored on test once.
    """
    (xtr, ytr), (xva, yva) = train, val
    mu = xtr.mean(0)
    sd = xtr.std(0) + 1e-6
    z = lambda x: (x - mu) / sd  # noqa: E731

    scores: dict[float, float] = {}
    fits: dict[float, object] = {}

    def score(c):
        if c not in scores:
            lower = [k for k in fits if k < c]  # start from the nearest more strongly regularised fit
            fits[c] = _fit(z(xtr), ytr, c, seed, fits[max(lower)] if lower else None)
            scores[c] = float((fits[c].predict(z(xva)) == yva).mean())
        return scores[c]

    for c in bar(sorted(c_grid), "probe: C grid"):  # ascending C: each fit starts from the last solution
        score(c)
    best = _best(scores)
    grid = sorted(c_grid)
    i = grid.index(best)
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    for c in np.logspace(np.log10(lo), np.log10(hi), FINE_STEPS):
        score(float(c))
    best = _best(scores)

    xall, yall = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
    mu, sd = xall.mean(0), xall.std(0) + 1e-6
    clf = _fit((xall - mu) / sd, yall, best, seed, fits[best])
    w_std = np.zeros((num_classes, xtr.shape[1]), np.float64)
    b_std = np.zeros(num_classes, np.float64)
    if len(clf.classes_) == 2 and clf.coef_.shape[0] == 1:  # sklearn's binary case: one row for class 1
        w_std[clf.classes_[1]], b_std[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
    else:
        w_std[clf.classes_], b_std[clf.classes_] = clf.coef_, clf.intercept_
    weight = w_std / sd  # fold the standardisation into the head: logits = weight @ x + bias
    bias = b_std - weight @ mu
    return {
        "val_top1": scores[best],
        "selection": {"searched": "C (inverse L2 strength) of LogisticRegression on standardised features",
                      "grid": {f"{c:.4g}": round(a, 6) for c, a in sorted(scores.items())},
                      "chosen": {"C": best}, "refit": "train+val"},
        "head_weight": weight.astype(np.float32),
        "head_bias": bias.astype(np.float32),
    }


def _best(scores: dict[float, float]) -> float:
    top = max(scores.values())
    return min(c for c, a in scores.items() if a == top)


def cached_features(model, split, data_config: dict, device, batch_size: int, key_parts: dict,
                    desc: str = "features", plan: data.InputPlan | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Features from the cache when present (True), else extracted and cached (False). Features resized on the
    device are keyed apart from those of the CPU transforms (the pixels differ slightly); the decoded-image
    cache gives the CPU transforms' exact pixels, so it shares their entries."""
    from transfer_eval import cache

    resize = "device" if plan is not None and plan.eval_on_device else "cpu"
    key = cache.feature_key(manifest=split.manifest(), data_config=data_config, files=split.files_signature(),
                            resize=resize, **key_parts)
    hit = cache.load(key)
    if hit is not None:
        return hit[0], hit[1], True
    feats, labels = extract_features(model, split, data_config, device, batch_size, desc, plan)
    about = {"checkpoint": key_parts["checkpoint"].name, "task": key_parts["task"].name,
             "split": key_parts["split_name"], "images": len(labels)}
    cache.save(key, feats, labels, about)
    return feats, labels, False


# --------------------------------------------------------------------------------------------------------------
# Few-shot linear regression (Scaling ViT; big_vision's evaluators/fewshot_lsr.py)

FEWSHOT_SHOTS = (1, 5, 10, 25)
FEWSHOT_L2 = 2.0**10
BIAS_CONSTANT = 100.0


def fewshot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """big_vision's sampling: default_rng(seed) permutes each class's indices (classes in order); first k each."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(idx)[:shots])
    return np.concatenate(chosen)


def fewshot_solve(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = FEWSHOT_L2) -> tuple:
    """Closed-form ridge regression onto 2*onehot-1 targets, as big_vision solves it.

    Features are standardised with the few-shot set's mean and std (+1e-5), a constant feature of 100 is
    appended (so the bias is almost unregularised), and the solution uses the eigendecomposition of x'x (N >= D)
    or xx' (N < D). Returns (mean, std, w): predict with argmax(((x - mean) / std | 100) @ w).
    """
    x = x.astype(np.float64)
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5
    xz = np.concatenate([(x - mean) / std, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)
    t = 2.0 * np.eye(num_classes)[y] - 1.0
    n, d = xz.shape
    if n >= d:
        eigs, q = np.linalg.eigh(xz.T @ xz)
        w = q @ np.diag(1.0 / (eigs + l2)) @ q.T @ xz.T @ t  # (x'x + l2 I)^-1 x' t
    else:
        eigs, q = np.linalg.eigh(xz @ xz.T)
        w = xz.T @ q @ np.diag(1.0 / (eigs + l2)) @ q.T @ t  # x' (xx' + l2 I)^-1 t
    return mean, std, w


def fewshot_predict(x: np.ndarray, mean, std, w) -> np.ndarray:
    xz = np.concatenate([(x.astype(np.float64) - mean) / std, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)
    return xz @ w  # N x K scores
