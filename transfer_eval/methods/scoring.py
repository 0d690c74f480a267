"""How a trained run scores a split: each image's top-5 classes, the probabilities of those five and of its true
class, and how well calibrated they are (methods/calibration.py).

Every stage hands back a `Scorer`, a function (split, task, plan, loader) -> `Scored`, or none, and then the run's
deployed model scores (`model_scorer`): the run applies it to its test split and then to each companion set's test
split (methods/companions.py), so the two are scored by one code path and nothing is fitted or trained again. The
task given says which classes count (`Task.scored_classes`, masked before top-k and before the softmax) and, for
a mode that reads features, under which task the split's features are cached.

Per batch, on the device (nothing N x K leaves it): the top-5 of the masked scores; softmax(logits) over the scored
classes; the probabilities of the five and of the true class (NaN where the truth is a label set; 0 for a class
outside the mask); and, where the run fitted a temperature T on val, the top-1 and true-class probabilities of
softmax(logits / T). The logits are the model's (fine-tuning, PEFT, pretrained), the linear probe's, or the k-NN's
log-votes (so that T = 1 gives its vote distribution, each class's share of the weighted vote). Few-shot ridge
regression gives no probabilities.

T is fitted on val (`calibration.fit_temperature`, never on test) from `ValLogits`: a bounded, evenly spaced sample
of val's logits kept on the device in float32, at most VAL_ELEMENTS of them (every row where val is small: ImageNet's
12,811-image minival x 1,000 classes; iNat2021's 10,000 classes keep 6,710 rows), so memory stays bounded at any
scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from transfer_eval.methods import calibration, inference

VAL_ELEMENTS = 2**26  # val logits kept for fitting T (256 MiB of float32)
VOTE_FLOOR = 1e-300  # the smallest k-NN vote a log is taken of: a class with no vote has probability ~0
NO_VOTE = float(np.log(VOTE_FLOOR)) + 1.0  # a log-vote at or below this is no vote


@dataclass
class Scored:
    """A split's scores: top-5 (N x 5, best first), probabilities (N x 6: calibration's PROBS, top-1..top-5 then
    the true class; None: the mode gives none), after temperature scaling the top-1's and the true class's (N x 2;
    None: no T) and the seconds it took (feature extraction included)."""

    top5: np.ndarray
    probs: np.ndarray | None
    scaled: np.ndarray | None
    seconds: float


class Scorer(Protocol):
    def __call__(self, split, task, plan=None, loader: Callable | None = None) -> Scored:
        """Score `split` (a test split) as test of `task` (its scored classes, its feature-cache entries) read
        through `plan`; `loader(batch_size)`: the (loader, pipe) to read it through, or None (made here)."""


def fields(scored: Scored, truth: np.ndarray, temperature: float | None) -> dict:
    """A result's accuracy and calibration fields: top-1, top-5, balanced top-1 (inference.scores); ECE of the
    top-1 confidence against `inference.hits` (so label sets work) and NLL of the true class (None for label
    sets), before and after scaling by `temperature` (None where the mode has no probabilities or no T)."""
    out = {**inference.scores(truth, scored.top5), "temperature": temperature}
    out.update(ece=None, nll=None, ece_scaled=None, nll_scaled=None)
    if scored.probs is None or not len(scored.top5):
        return out
    right, sets = inference.hits(truth, scored.top5, 1), np.ndim(truth) > 1
    out["ece"] = calibration.ece(scored.probs[:, 0], right)
    out["nll"] = None if sets else calibration.nll(scored.probs[:, 5])
    if scored.scaled is not None:
        out["ece_scaled"] = calibration.ece(scored.scaled[:, 0], right)
        out["nll_scaled"] = None if sets else calibration.nll(scored.scaled[:, 1])
    return out


class Collect:
    """Batches of one split's logits, in order, reduced on the device to top-5 and probabilities (`Scored`)."""

    def __init__(self, split, classes=None, temperature: float | None = None, probabilities: bool = True):
        truth = inference.truth(split)
        self.truth = torch.as_tensor(np.asarray(truth), dtype=torch.long) if np.ndim(truth) == 1 else None
        self.classes, self.temperature, self.probabilities = classes, temperature, probabilities
        self.top, self.probs, self.scaled, self.done = [], [], [], 0

    def add(self, logits: torch.Tensor, rank: torch.Tensor | None = None) -> None:
        """One batch: `logits` (rows x classes) give the probabilities; `rank` (default: the logits) the top-5."""
        z = inference.restrict(logits.float(), self.classes)
        top = inference.topk(z if rank is None else inference.restrict(rank, self.classes))
        rows, self.done = slice(self.done, self.done + len(z)), self.done + len(z)
        self.top.append(top.cpu())
        if not self.probabilities:
            return
        y = self.truth[rows].to(z.device) if self.truth is not None else None
        p, true = _chosen(torch.log_softmax(z, 1), top, y)
        self.probs.append(torch.cat([p, true[:, None]], 1).cpu())
        if self.temperature is not None:
            p, true = _chosen(torch.log_softmax(z / self.temperature, 1), top[:, :1], y)
            self.scaled.append(torch.cat([p, true[:, None]], 1).cpu())

    def result(self, seconds: float) -> Scored:
        def cat(parts, width):
            return torch.cat(parts).numpy() if parts else np.zeros((0, width), np.float32)

        top = torch.cat(self.top).numpy() if self.top else np.zeros((0, inference.TOP_K), np.int64)
        probs = cat(self.probs, 6) if self.probabilities else None
        scaled = cat(self.scaled, 2) if self.probabilities and self.temperature is not None else None
        return Scored(top, probs, scaled, seconds)


def _chosen(logp: torch.Tensor, top: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The probabilities of the `top` classes (0 for -1 padding) and of each row's true class `y` (NaN: none)."""
    p = logp.gather(1, top.clamp(min=0)).exp().masked_fill(top < 0, 0.0)
    if y is None:
        return p, torch.full((len(p),), float("nan"), device=p.device)
    return p, logp.gather(1, y[:, None])[:, 0].exp()


def log_votes(votes: torch.Tensor) -> torch.Tensor:
    """A k-NN's class votes as logits: softmax of them is each class's share of the vote (T = 1)."""
    return votes.clamp_min(VOTE_FLOOR).log()


def model_scorer(model, data_config: dict, device: torch.device, batch_size: int, temperature=None) -> Scorer:
    """The scorer of a model's own logits (fine-tuning, every PEFT mode after its merge, the checkpoint's head,
    the linear probe's head set into the model): one evaluation pass over the split."""

    def score(split, task, plan=None, loader=None) -> Scored:
        model.to(device).eval()
        out = Collect(split, task.scored_classes, temperature)
        desc = "test" if loader is not None else f"test {task.name}"
        start = time.perf_counter()
        pair = loader(batch_size) if loader is not None else None
        for logits in inference.outputs(model, split, data_config, device, batch_size, plan, desc, pair):
            out.add(logits)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out.result(time.perf_counter() - start)

    return score


class ValLogits:
    """A bounded sample of val's logits, rows evenly spaced over the split (every row where n x classes is at most
    `elements`), kept on the device in float32 as batches arrive in the split's order: what T is fitted on."""

    def __init__(self, n: int, elements: int = VAL_ELEMENTS):
        self.n, self.elements, self.keep, self.rows, self.done = n, elements, None, [], 0

    def add(self, logits: torch.Tensor) -> None:
        if self.keep is None:
            m = min(self.n, max(1, self.elements // max(logits.shape[1], 1)))
            self.keep = np.unique(np.linspace(0, self.n - 1, m).round().astype(np.int64)) if self.n else []
        lo, hi = np.searchsorted(self.keep, [self.done, self.done + len(logits)])
        if hi > lo:
            at = torch.as_tensor(self.keep[lo:hi] - self.done, device=logits.device)
            self.rows.append(logits.float().index_select(0, at))
        self.done += len(logits)

    def fit(self, labels: np.ndarray, known: np.ndarray | None = None, floor: float | None = None) -> float | None:
        """T on the sampled rows against their `labels` (one per val image, all of val). Left out: rows whose label
        is not in `known` (classes the scored model never saw), and rows whose true class's logit is at `floor`
        (a k-NN's class that got no vote has probability 0 at every T: such a row does not move T, and its floor
        would). None where no row is left."""
        if not self.rows:
            return None
        z, y = torch.cat(self.rows), np.asarray(labels)[self.keep]
        ok = np.isin(y, known) if known is not None else np.ones(len(y), bool)
        if floor is not None:
            true = z.gather(1, torch.as_tensor(y, dtype=torch.long, device=z.device)[:, None])[:, 0]
            ok &= (true > floor).cpu().numpy()
        if not ok.all():
            z, y = z[torch.as_tensor(ok, device=z.device)], y[ok]
        return calibration.fit_temperature(z, y) if len(y) else None


def val_pass(model, split, data_config, device, batch_size: int, plan=None, loader=None, desc: str = "val"):
    """A model's top-1 class of every val image (N x 1) and T fitted on its val logits (`ValLogits`), in one pass."""
    model.to(device).eval()
    sample, out = ValLogits(len(split)), []
    for logits in inference.outputs(model, split, data_config, device, batch_size, plan, desc, loader):
        out.append(inference.topk(logits, 1).cpu())
        sample.add(logits)
    top1 = torch.cat(out).numpy() if out else np.zeros((0, 1), np.int64)
    return top1, sample.fit(split.labels)
