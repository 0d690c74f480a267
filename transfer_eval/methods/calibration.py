"""How far a model's confidence can be trusted: expected calibration error, negative log-likelihood and temperature
scaling (Guo et al. 2017, "On calibration of modern neural networks").

- `ece`: 15 equal-width bins of top-1 confidence, each bin (lo, hi] (a confidence of exactly 0 in the first);
  ECE = sum over bins of |bin| / n * |accuracy(bin) - mean confidence(bin)|.
- `nll`: the mean of -log p(true class).
- `fit_temperature`: one scalar T > 0 minimising the NLL of softmax(logits / T) on val (never on test); T > 1
  softens an over-confident model. Top-1 predictions do not change with T.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BINS = 15
TINY = 1e-12  # the smallest probability -log is taken of (a float16 zero stays finite)


def bin_index(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each confidence's bin: (k/bins, (k+1)/bins] is bin k; exactly 0 is bin 0."""
    c = np.asarray(confidence, np.float64)
    return np.clip(np.ceil(c * bins).astype(np.int64) - 1, 0, bins - 1)


def reliability(confidence, correct, bins: int = BINS) -> dict:
    """Per bin: its edges, the number of images, their accuracy and mean confidence (NaN for an empty bin): what a
    reliability diagram draws."""
    c = np.asarray(confidence, np.float64)
    ok = np.asarray(correct, bool)
    idx = bin_index(c, bins)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=ok, minlength=bins) / count
        conf = np.bincount(idx, weights=c, minlength=bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count, "accuracy": acc, "confidence": conf}


def ece(confidence, correct, bins: int = BINS) -> float:
    """Expected calibration error of top-1 confidences against whether top-1 was right (a fraction, 0 = perfect)."""
    r = reliability(confidence, correct, bins)
    n = r["count"].sum()
    if n == 0:
        return float("nan")
    full = r["count"] > 0
    return float(np.sum(r["count"][full] / n * np.abs(r["accuracy"][full] - r["confidence"][full])))


def nll(p_true) -> float:
    """Mean negative log-likelihood of the true class's probabilities."""
    p = np.asarray(p_true, np.float64)
    return float(np.mean(-np.log(np.clip(p, TINY, 1.0))))


@torch.no_grad()
def _nll_at(logits: torch.Tensor, labels: torch.Tensor, t: float, chunk: int = 65536) -> float:
    total = 0.0
    for i in range(0, len(logits), chunk):
        z = logits[i : i + chunk].float() / t
        total += float((torch.logsumexp(z, 1) - z.gather(1, labels[i : i + chunk, None])[:, 0]).sum())
    return total / max(len(logits), 1)


def fit_temperature(logits: torch.Tensor, labels, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T in `bounds` minimising the mean NLL of softmax(logits / T) against `labels` (one class per image):
    a bounded 1-d search over log T (scipy's Brent), in row chunks on the logits' device. Fit on val only."""
    from scipy.optimize import minimize_scalar

    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=logits.device)
    res = minimize_scalar(
        lambda s: _nll_at(logits, labels, math.exp(s)),
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(res.x))
