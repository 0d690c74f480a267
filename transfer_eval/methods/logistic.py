"""L2-regularised multinomial logistic regression, the linear probe's classifier, at any scale.

The objective is scikit-learn's `LogisticRegression(C=C)` with its lbfgs solver, on standardised features z:

    mean_i CE(W z_i + b, y_i) + ||W||^2 / (2 C N)        (the intercept b is not penalised)

over the classes present in y; with two classes it is scikit-learn's binary model (one row of weights, the
other class's logit fixed at 0). scipy's L-BFGS-B drives it with scikit-learn's options (gtol = tol on the
projected gradient, ftol 64 eps, 50 line-search steps), but the loss and gradient are computed here in torch, in
row chunks, on the run's device: float32 matmuls, float64 sums across chunks. Nothing of size N x K is ever held
(one chunk's logits at a time), the features stay on the GPU where they fit, and every core (or the GPU) works
on the softmax, where scikit-learn's runs on one thread.

The standardisation (x - mean) / std is applied chunk by chunk as the features are read, so train, val and the
train+val refit share one resident copy of the raw features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SOLVER = "L-BFGS-B (scipy) with the loss and gradient in torch, float32 in row chunks"
# scikit-learn's default gtol, 1e-4, stops fits at large C far from their optimum: on the demo's features the val
# accuracy of C = 100 was 0.864 here, 0.876 with scikit-learn, 0.868 for both at 1e-6 (warm or cold start). At
# 1e-6 every C's val accuracy agreed with scikit-learn's at 1e-6: the probe measures the features, not where a
# solver happened to stop.
TOL = 1e-6
MAX_ITER = 10_000  # a cap that converged fits do not reach; a fit that reaches it is recorded as capped
CHUNK_ELEMENTS = {"cpu": 2**20, "cuda": 2**26}  # logits per chunk (4 MiB: cache-sized; 256 MiB: a full GPU)


class Rows:
    """Row chunks of one or more feature matrices (each N_i x D, numpy or memory-mapped) with their labels, on a
    device: resident there where they fit in a third of its free memory, else kept on the host (pinned under
    CUDA) and copied at each pass. `chunk_rows` rows per chunk."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]], device: torch.device, chunk_rows: int):
        self.device = torch.device(device)
        self.n = sum(len(y) for _, y in parts)
        self.dim = parts[0][0].shape[1]
        resident = self.device.type != "cuda" or _fits(self.n * self.dim * 4, self.device)
        target = self.device if resident else torch.device("cpu")
        self.chunks = []  # (x float32, y int64), both on `target`
        for x, y in parts:
            for i in range(0, len(y), chunk_rows):
                xc = torch.from_numpy(np.ascontiguousarray(x[i : i + chunk_rows], dtype=np.float32))
                yc = torch.from_numpy(np.asarray(y[i : i + chunk_rows], dtype=np.int64))
                if not resident and self.device.type == "cuda":
                    xc, yc = xc.pin_memory(), yc.pin_memory()
                self.chunks.append((xc.to(target), yc.to(target)))
        self.resident = resident

    @classmethod
    def concat(cls, *parts: "Rows") -> "Rows":
        """The rows of several Rows, sharing their tensors (nothing is copied)."""
        out = cls.__new__(cls)
        out.device, out.dim = parts[0].device, parts[0].dim
        out.n = sum(p.n for p in parts)
        out.chunks = [c for p in parts for c in p.chunks]
        out.resident = all(p.resident for p in parts)
        return out

    def __iter__(self):
        for x, y in self.chunks:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of every column (float64 sums, two passes)."""
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        for x, _ in self:
            total += x.sum(0, dtype=torch.float64)
        mean = total / self.n
        sq = torch.zeros_like(total)
        for x, _ in self:
            sq += ((x.double() - mean) ** 2).sum(0)
        return mean.cpu().numpy(), (sq / self.n).sqrt().cpu().numpy()


def _fits(nbytes: int, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free / 3


def chunk_rows(num_classes: int, device: torch.device) -> int:
    return max(256, CHUNK_ELEMENTS.get(torch.device(device).type, 2**24) // max(num_classes, 1))


@dataclass
class Fit:
    """A solution on standardised features. Rows of `coef` (R x D) and `intercept` (R) stand for `classes`; in the
    binary case R = 1 and the row is the logit of classes[1] against classes[0]."""

    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    iterations: int
    converged: bool  # False where the fit stopped at max_iter (or the line search gave up) before gtol
    message: str

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2


class Standardised:
    """The loss, gradient and predictions of the linear model on z = (x - mean) / std over `rows`."""

    def __init__(self, rows: Rows, mean: np.ndarray, std: np.ndarray):
        self.rows = rows
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=rows.device)
        self.inv_std = 1.0 / torch.as_tensor(std, dtype=torch.float32, device=rows.device)

    def _z(self, x):
        return (x - self.mean).mul_(self.inv_std)

    def loss_grad(self, w: torch.Tensor, b: torch.Tensor, index: torch.Tensor, binary: bool):
        """Summed cross-entropy over the rows and its gradient in (w, b), float64. `index` maps a label to its
        row of the model (-1: a class the model does not know, which must not occur)."""
        dev = self.rows.device
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        gw = torch.zeros(w.shape, dtype=torch.float64, device=dev)
        gb = torch.zeros(b.shape, dtype=torch.float64, device=dev)
        for x, y in self.rows:
            z = self._z(x)
            t = index[y]  # m
            logits = torch.addmm(b, z, w.T)  # m x R
            if binary:  # the reference class's logit is 0: logits m x 2
                logits = torch.cat([torch.zeros_like(logits), logits], 1)
            lse = torch.logsumexp(logits, 1)
            loss += lse.sum(dtype=torch.float64) - logits.gather(1, t[:, None]).sum(dtype=torch.float64)
            p = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            p[torch.arange(len(t), device=dev), t] -= 1.0  # d CE / d logits
            if binary:
                p = p[:, 1:]
            gw += (p.T @ z).double()
            gb += p.sum(0, dtype=torch.float64)
        return loss, gw, gb

    def predict(self, fit: Fit, k: int = 1) -> np.ndarray:
        """The top-k class labels of every row (N x k), best first."""
        w = torch.as_tensor(fit.coef, dtype=torch.float32, device=self.rows.device)
        b = torch.as_tensor(fit.intercept, dtype=torch.float32, device=self.rows.device)
        classes = torch.as_tensor(fit.classes, device=self.rows.device)
        out = []
        for x, _ in self.rows:
            logits = torch.addmm(b, self._z(x), w.T)
            if fit.binary:
                logits = torch.cat([torch.zeros_like(logits), logits], 1)
            out.append(classes[logits.topk(min(k, logits.shape[1]), dim=1).indices].cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, k), np.int64)


def fit(
    data: Standardised,
    classes: np.ndarray,
    c: float,
    start: Fit | None = None,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> Fit:
    """Minimise the objective at inverse L2 strength `c` over `classes` (sorted labels present in the data),
    starting from `start` (a fit at a nearby C: the regularisation path) where given, else from zero."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    dev, n, d = data.rows.device, data.rows.n, data.rows.dim
    binary = len(classes) == 2
    r = 1 if binary else len(classes)
    index = torch.full((int(classes.max()) + 1,), -1, dtype=torch.int64, device=dev)
    index[torch.as_tensor(classes, device=dev)] = torch.arange(len(classes), device=dev)
    l2 = 1.0 / (c * n)
    theta0 = np.zeros((r, d + 1))
    if start is not None and start.coef.shape == (r, d) and np.array_equal(start.classes, classes):
        theta0[:, :d], theta0[:, d] = start.coef, start.intercept

    def objective(theta):
        t = theta.reshape(r, d + 1)
        wt = torch.as_tensor(t, dtype=torch.float32, device=dev)
        loss, gw, gb = data.loss_grad(wt[:, :d].contiguous(), wt[:, d].contiguous(), index, binary)
        w64 = t[:, :d]
        f = float(loss) / n + 0.5 * l2 * float((w64 * w64).sum())
        g = np.empty_like(t)
        g[:, :d] = gw.cpu().numpy() / n + l2 * w64
        g[:, d] = gb.cpu().numpy() / n
        return f, g.ravel()

    # L-BFGS-B's own vector work is light; BLAS threads left spinning after it would take the cores from torch's
    # threads (measured: 12x slower on 2 cores), so the driver's BLAS runs on one thread.
    with threadpool_limits(1, user_api="blas"):
        res = minimize(
            objective,
            theta0.ravel(),
            method="L-BFGS-B",
            jac=True,
            options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps},
        )
    t = res.x.reshape(r, d + 1)
    return Fit(
        coef=t[:, :d].copy(),
        intercept=t[:, d].copy(),
        classes=np.asarray(classes),
        iterations=int(res.nit),
        converged=res.status == 0,
        message=str(res.message),
    )


def as_head(f: Fit, mean: np.ndarray, std: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The fit folded into a linear head on the raw features (weight K x D, bias K, float64): logits = weight x +
    bias. A class absent from the fitting data gets a bias far below every other logit: it is never predicted."""
    d = f.coef.shape[1]
    w_std = np.zeros((num_classes, d))
    b_std = np.full(num_classes, -1e4)
    if f.binary:  # logit(classes[1]) - logit(classes[0]) = coef z + intercept
        w_std[f.classes[0]], b_std[f.classes[0]] = 0.0, 0.0
        w_std[f.classes[1]], b_std[f.classes[1]] = f.coef[0], f.intercept[0]
    else:
        w_std[f.classes], b_std[f.classes] = f.coef, f.intercept
    weight = w_std / std
    return weight, b_std - weight @ mean
