"""Few-shot linear regression (Scaling ViT; big_vision's evaluators/fewshot_lsr.py), on the run's device.

k examples per class, closed-form ridge regression onto 2*onehot-1 targets, test scored once. Nothing of size
N x K is built: x't = 2 (per-class sums of x) - (the column sum of x); the test scores are made and reduced to
their top-5 chunk by chunk. The solve is in float64 (the Gram matrix and its eigendecomposition need it).
"""

from __future__ import annotations

import numpy as np
import torch

SHOTS = (1, 5, 10, 25)
L2 = 2.0**10
BIAS_CONSTANT = 100.0
CHUNK_ELEMENTS = 2**24  # test scores per chunk (128 MiB in float64)


def indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """big_vision's sampling: default_rng(seed) permutes each class's indices (classes in order); first k each."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")  # each class's indices, ascending: one sort, no scan per class
    _, starts = np.unique(labels[order], return_index=True)
    ends = list(starts[1:]) + [len(labels)]
    chosen = [rng.permutation(order[a:b])[:shots] for a, b in zip(starts, ends)]
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def _standardised(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with the constant feature appended (so the bias is almost unregularised): N x (D+1)."""
    z = (x.double() - mean) / std
    return torch.cat([z, z.new_full((len(z), 1), BIAS_CONSTANT)], 1)


def solve(
    x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = L2, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form ridge regression onto 2*onehot-1 targets, as big_vision solves it.

    Features are standardised with the few-shot set's mean and std (+1e-5), a constant feature of 100 is
    appended, and the solution uses the eigendecomposition of x'x (N >= D) or xx' (N < D). Returns (mean, std,
    w), float64: predict with argmax(((x - mean) / std | 100) @ w).
    """
    dev = torch.device(device)
    xt = torch.as_tensor(np.asarray(x), device=dev).double()
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64, device=dev)
    mean, std = xt.mean(0, keepdim=True), xt.std(0, keepdim=True, correction=0) + 1e-5
    xz = _standardised(xt, mean, std)
    del xt
    n, d = xz.shape
    if n >= d:
        eigs, q = torch.linalg.eigh(xz.T @ xz)
        sums = torch.zeros(num_classes, d, dtype=xz.dtype, device=dev).index_add_(0, yt, xz)  # K x (D+1)
        xt_t = 2.0 * sums.T - xz.sum(0)[:, None]  # x' (2 onehot - 1): (D+1) x K
        w = q @ ((q.T @ xt_t) / (eigs + l2)[:, None])  # (x'x + l2 I)^-1 x' t
    else:
        eigs, q = torch.linalg.eigh(xz @ xz.T)
        sums = torch.zeros(num_classes, n, dtype=xz.dtype, device=dev).index_add_(0, yt, q)  # K x N
        qt_t = 2.0 * sums.T - q.sum(0)[:, None]  # q' (2 onehot - 1): N x K
        w = xz.T @ (q @ (qt_t / (eigs + l2)[:, None]))  # x' (xx' + l2 I)^-1 t
    return mean.cpu().numpy(), std.cpu().numpy(), w.cpu().numpy()


def scores(x: np.ndarray, mean, std, w, device: torch.device | str = "cpu") -> np.ndarray:
    """N x K float64 scores (for small N: tests and cross-checks; runs use `predict`)."""
    dev = torch.device(device)
    t = lambda a: torch.as_tensor(np.asarray(a), device=dev).double()  # noqa: E731
    return (_standardised(t(x), t(mean), t(std)) @ t(w)).cpu().numpy()


def predict(x: np.ndarray, mean, std, w, device: torch.device | str = "cpu", k: int = 5, classes=None) -> np.ndarray:
    """The top-k classes of every row of x (N x k int64), scored chunk by chunk on the device; `classes`: the only
    classes predicted (a task's `scored_classes`: inference.restrict)."""
    from transfer_eval.methods.inference import restrict, topk

    dev = torch.device(device)
    mean_t, std_t, w_t = (torch.as_tensor(np.asarray(a), device=dev).double() for a in (mean, std, w))
    rows = max(1, CHUNK_ELEMENTS // w_t.shape[1])
    out = [
        topk(
            restrict(
                _standardised(torch.as_tensor(np.asarray(x[i : i + rows]), device=dev), mean_t, std_t) @ w_t, classes
            ),
            k,
        ).cpu()
        for i in range(0, len(x), rows)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, k), np.int64)
