"""One evaluation loop over a split, on the device: every mode's top-k predictions and the probes' features.

Nothing of size N x K leaves the device: each batch's logits become its top-k class indices there, and the host
keeps those (N x k integers). Features go batch by batch to a writer (the feature cache's, or an array).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from transfer_eval import devices
from transfer_eval.input import pipeline
from transfer_eval.progress import bar

TOP_K = 5  # every run stores its test top-5


def eval_loader(
    split, data_config: dict, device: torch.device, batch_size: int = 256, plan: pipeline.InputPlan | None = None
):
    """(DataLoader, Pipeline) over a split for evaluation; a loader kept and iterated again reuses its workers."""
    pipe = pipeline.pipeline(split, data_config, device, plan)
    return pipeline.loader(pipe, batch_size, device), pipe


@torch.no_grad()
def outputs(
    forward: Callable,
    split,
    data_config: dict,
    device: torch.device,
    batch_size: int = 256,
    plan: pipeline.InputPlan | None = None,
    desc: str = "eval",
    loader=None,
    phase: str = "eval",
) -> Iterator[torch.Tensor]:
    """`forward(x)` of every batch of the split, in order, on the device (no grad), in the precision the run's
    policy gives `phase` ("eval" or "features": devices.py). `loader`: an eval_loader pair to reuse."""
    dl, pipe = loader or eval_loader(split, data_config, device, batch_size, plan)
    for x, _ in bar(pipe.batches(dl), desc, "batch", total=len(dl)):
        with devices.autocast(device, phase):
            yield forward(x)


def topk(scores: torch.Tensor, k: int = TOP_K) -> torch.Tensor:
    """The k best classes of each row (N x k, best first), exactly as a stable argsort of -scores orders them
    (equal scores: the lower class first), padded with -1 where there are fewer than k classes. topk does the
    work; only rows where equal scores straddle the k-th place are sorted whole."""
    n, classes = scores.shape
    kk = min(k, classes)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    vals, idx = scores.topk(kk, dim=1)
    idx, order = idx.sort(dim=1)  # class order, then a stable sort by score keeps it among equal scores
    vals = vals.gather(1, order)
    idx = idx.gather(1, (-vals).argsort(dim=1, stable=True))
    straddle = (scores >= vals.min(1, keepdim=True).values).sum(1) > kk
    if straddle.any():
        rows = straddle.nonzero()[:, 0]
        idx[rows] = scores[rows].argsort(dim=1, descending=True, stable=True)[:, :kk]
    if kk < k:
        idx = torch.cat([idx, idx.new_full((n, k - kk), -1)], 1)
    return idx


def restrict(scores: torch.Tensor, classes) -> torch.Tensor:
    """`scores` (N x K) with every class outside `classes` (a task's `scored_classes`; None: all) set to -inf, so
    that top-k picks only among them: ImageNet-A and -R score a 1,000-class model over their 200 classes, as their
    authors and timm's `validate.py --valid-labels` do."""
    if classes is None:
        return scores
    keep = torch.as_tensor(classes, dtype=torch.long, device=scores.device)
    out = torch.full_like(scores, float("-inf"))
    out[:, keep] = scores[:, keep]
    return out


def features(
    model,
    split,
    data_config: dict,
    device: torch.device,
    write: Callable[[np.ndarray], None],
    batch_size: int = 256,
    plan: pipeline.InputPlan | None = None,
    desc: str = "features",
    loader=None,
    forward: Callable | None = None,
) -> None:
    """Pre-logits features (float32 rows, in the split's order) handed to `write` batch by batch. `loader`: an
    eval_loader pair (or pipeline.EvalLoaders.get's) to read through. `forward`: x -> {source: rows} (one pass for
    several feature sources, methods/sources.py); `write` then receives {source: float32 rows}."""
    model.to(device).eval()

    def pooled(x):
        return model.forward_head(model.forward_features(x), pre_logits=True)

    for f in outputs(forward or pooled, split, data_config, device, batch_size, plan, desc, loader, phase="features"):
        if isinstance(f, dict):
            write({k: v.float().cpu().numpy() for k, v in f.items()})
        else:
            write(f.float().cpu().numpy())


def feature_array(
    model,
    split,
    data_config: dict,
    device: torch.device,
    batch_size: int = 256,
    plan: pipeline.InputPlan | None = None,
    desc: str = "features",
) -> np.ndarray:
    """The features of a split as one N x D float32 array in memory, filled in place (no list of batches)."""
    out: list[np.ndarray] = []
    done = 0

    def write(rows):
        nonlocal done
        if not out:
            out.append(np.empty((len(split), rows.shape[1]), np.float32))
        out[0][done : done + len(rows)] = rows
        done += len(rows)

    features(model, split, data_config, device, write, batch_size, plan, desc)
    return out[0] if out else np.zeros((0, 0), np.float32)


def truth(split) -> np.ndarray:
    """What a split's predictions are scored against and stored beside them: each image's label (N), or where its
    images have several right answers (ImageNet ReaL, ObjectNet) their label sets (N x M, padded with -1)."""
    return split.labels if getattr(split, "label_sets", None) is None else split.label_sets


def hits(truth: np.ndarray, top: np.ndarray, k: int = 1) -> np.ndarray:
    """Whether each image's first `k` predictions hold a right answer (N bools): its label, or any class of its
    label set (`truth`); -1 (padding on either side) never counts."""
    top = np.asarray(top)[:, :k]
    truth = np.asarray(truth)
    if truth.ndim == 1:
        return (top == truth[:, None]).any(1)
    return ((top[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)).any((1, 2))


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `labels`."""
    classes = np.unique(labels)
    return float(np.mean([(predictions[labels == c] == c).mean() for c in classes]))


def scores(truth: np.ndarray, top5: np.ndarray) -> dict:
    """A result's accuracy fields from its test truth (`truth`: labels, or label sets) and top-5 predictions.
    Balanced top-1 (mean per-class recall) needs one class per image: None for label sets."""
    return {
        "top1": float(hits(truth, top5, 1).mean()),
        "top5": float(hits(truth, top5, 5).mean()),
        "balanced_top1": balanced_accuracy(truth, top5[:, 0]) if np.ndim(truth) == 1 else None,
    }


def eval_batch_size(recipe: dict) -> int:
    """The batch size a run scores test with: the recipe's eval_batch_size, else its batch size, else 256."""
    return int(recipe.get("eval_batch_size", recipe.get("batch_size", 256)))
