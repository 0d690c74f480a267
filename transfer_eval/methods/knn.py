"""Weighted k-NN on frozen features, as DINO (`eval_knn.py`) and DINOv2 (`eval/knn.py`) evaluate a representation.

Features are L2-normalised; a query's similarity to a memory item is their dot product (the cosine); its k most
similar memory items vote for their classes with weight exp(similarity / T) (T = 0.07); the classes ranked by
their summed votes give top-1 and top-5. DINOv2's softmax weights differ from DINO's by a constant per query, so
both rank the classes alike; here the weights are exp((s - s_max) / T), the same ranking without overflow.

Two things differ from the reference code, on purpose: the class scores are as wide as the task's class count (DINO's
are always 1,000 wide, so its top-5 of a task with fewer than 5 classes counts phantom classes; here such a row has
fewer than 5 entries), and any number of queries works (DINO's 100 chunks fail below 100). Ties are broken by order:
among equal similarities the memory item first in file order wins a place, among equal class scores the lower class
(`inference.topk`'s rule), so a result does not depend on the device.

It scales: the memory is read once, chunk by chunk, from the feature cache's memory-mapped files, and each chunk's
similarities to a block of queries are reduced on the device to a running top-k: nothing of size N x M is built.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from transfer_eval import devices
from transfer_eval.errors import UserError
from transfer_eval.methods.inference import topk

KS = (10, 20, 100, 200)  # DINO's and DINOv2's k; the mode's default is 20 ("usually working the best")
K = 20
TEMPERATURE = 0.07
ELEMENTS = {"cuda": 2**27, "cpu": 2**22}  # similarities per block (512 MiB / 16 MiB of fp32)
MEMORY_ROWS = 65536  # memory items read per chunk
VOTE_ELEMENTS = 2**24  # class scores per block of queries when voting (128 MiB of float64)


def _unit(x, device: torch.device) -> torch.Tensor:
    return F.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float32).to(device), dim=1)


def neighbours(
    memory: Sequence[np.ndarray], queries: np.ndarray, k: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most similar memory items of every query: (similarities, memory indices), each M x k on the device,
        best first; equal similarities keep file order. `memory` is a list of N_i x D arrays (memory-mapped, say), read
        as one of sum(N_i) rows, once. Where the memory holds fewer than k items, every item is a neighbour: the result
    is as wide as the memory (never k), so a huge k builds nothing beyond it."""
    device = torch.device(device)
    k = max(1, min(k, sum(len(part) for part in memory)))  # no tensor wider than the memory
    with devices.strict_fp32():
        q = _unit(queries, device)
        m = len(q)
        best_s = torch.full((m, k), -torch.inf, device=device)
        best_i = torch.full((m, k), -1, dtype=torch.int64, device=device)
        block = max(1, ELEMENTS.get(device.type, ELEMENTS["cuda"]) // MEMORY_ROWS)
        offset = 0
        for part in memory:
            for start in range(0, len(part), MEMORY_ROWS):
                mem = _unit(part[start : start + MEMORY_ROWS], device)
                for a in range(0, m, block):
                    s = q[a : a + block] @ mem.T
                    idx = topk(s, min(k, s.shape[1]))  # best first, equal similarities in memory order
                    sims = s.gather(1, idx)
                    # candidates: the running best (earlier memory items) before this chunk's; a stable sort by
                    # similarity keeps that order among equals, so earlier items win ties
                    cand_s = torch.cat([best_s[a : a + block], sims], 1)
                    cand_i = torch.cat([best_i[a : a + block], idx + offset], 1)
                    order = cand_s.argsort(dim=1, descending=True, stable=True)[:, :k]
                    best_s[a : a + block] = cand_s.gather(1, order)
                    best_i[a : a + block] = cand_i.gather(1, order)
                offset += len(mem)
    return best_s, best_i


def class_scores(
    sims: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """Each class's summed vote (M x classes, float64) from each query's first k neighbours (`sims`, `labels`:
    M x >=k, best first; label -1 and similarity -inf mark no neighbour)."""
    s, y = sims[:, :k], labels[:, :k]
    present = y >= 0
    w = torch.exp((s - s[:, :1]).double() / temperature) * present  # float64: small T does not underflow
    scores = torch.zeros(len(s), num_classes, dtype=w.dtype, device=s.device)
    return scores.scatter_add_(1, y.clamp(min=0), w)


def search(memory, queries, kmax: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, labels) of every query's kmax nearest memory items (label -1 where there is none), M x kmax
    on the device: one search serves every k up to kmax (`blocks` votes with any of them)."""
    sims, idx = neighbours([f for f, _ in memory], queries, kmax, device)
    all_labels = torch.as_tensor(np.concatenate([np.asarray(y) for _, y in memory]), dtype=torch.int64, device=device)
    return sims, torch.where(idx >= 0, all_labels[idx.clamp(min=0)], torch.full_like(idx, -1))


def classify(
    memory: Sequence[tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    ks: Sequence[int],
    num_classes: int,
    temperature: float = TEMPERATURE,
    device: torch.device | str = "cpu",
) -> dict[int, np.ndarray]:
    """Every k's top-5 classes of the queries (M x 5 int64, -1 padded), with `memory` a list of (features, labels)
    parts. One search for the largest k serves every k (as DINOv2). A k above the memory's size uses it all."""
    device = torch.device(device)
    sims, labels = search(memory, queries, max(ks), device)
    return {k: top5(sims, labels, k, num_classes, temperature) for k in ks}


def top5(sims: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int, temperature: float = TEMPERATURE):
    """The top-5 classes (M x 5 int64 on the host, -1 padded) of one k's vote, block by block (`blocks`)."""
    out = [topk(b).cpu() for b in blocks(sims, labels, k, num_classes, temperature)]
    return torch.cat(out).numpy() if out else np.zeros((0, 5), np.int64)


def scores(
    memory: Sequence[tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    num_classes: int,
    temperature: float = TEMPERATURE,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The class scores of one k's vote (M x classes, float64, on the device): `classify`'s top-5 for that k is
    their `inference.topk` (what `transfer-eval predict` serves a k-NN task's delta with)."""
    device = torch.device(device)
    sims, labels = search(memory, queries, k, device)
    return class_scores(sims, labels, k, num_classes, temperature)


def blocks(sims: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int, temperature: float = TEMPERATURE):
    """`class_scores` of one k's vote (`search`'s similarities and labels), block by block of queries (each rows x
    classes, float64, on the device): nothing of size M x classes is built at once."""
    rows = max(1, VOTE_ELEMENTS // max(num_classes, 1))
    for a in range(0, len(sims), rows):
        yield class_scores(sims[a : a + rows], labels[a : a + rows], k, num_classes, temperature)


def choose(val_top1: dict[int, float]) -> int:
    """The k with the best val accuracy; equal accuracies go to the smaller k."""
    top = max(val_top1.values())
    return min(k for k, a in val_top1.items() if a == top)


def ks_of(value) -> list[int]:
    """The recipe's k as a sorted list of distinct positive integers (one k, or a grid to choose from on val)."""
    ks = value if isinstance(value, (list, tuple)) else [value]
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks):
        raise UserError(f"knn k must be a positive integer or a list of them, got {value!r}")
    return sorted(set(ks))
