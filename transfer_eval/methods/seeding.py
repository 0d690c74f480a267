"""Where a run's new tensors come from: a generator per tensor, seeded from the run.

A run's key is its checkpoint, weights, task, mode, recipe and seed, and the store skips a run whose key it holds,
so a run must give one result whatever ran before it in the process. Every tensor a method adds to a model (VPT's
prompts, the adapters' and AdaptFormer's bottlenecks, SSF's scales and shifts, LoRA's factors) is therefore drawn
from a CPU generator of its own, seeded from the run's seed, the mode's name and the tensor's name (`generator`),
never from torch's global generator: the same starting point alone, after another run, in a sweep job or resumed,
a different one for each seed, and one tensor's draw does not move when another tensor is added. The draw is made
in fp32 on the CPU and then copied where the model lives, so it is the same on every device.

The classifier head draws nothing: `checkpoints.build_model` zeroes it (the ViT paper's zero-initialised head).
What draws during training (data order, augmentation, dropout, drop path) is seeded by the training loop from
the run's seed (`finetune.seed_everything`, `pipeline.EpochBatches`); docs/ARCHITECTURE.md lists every draw.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from transfer_eval import keys

Init = Callable[[torch.Tensor, torch.Generator], object]  # fills a CPU fp32 tensor in place from the generator


def generator(seed: int, mode: str, name: str) -> torch.Generator:
    """The CPU generator tensor `name` of mode `mode` is drawn from in a run of seed `seed`."""
    digest = keys.digest({"seed": int(seed), "mode": mode, "tensor": name})
    return torch.Generator().manual_seed(int(digest[:16], 16) & (2**63 - 1))


@torch.no_grad()
def fill_(tensor: torch.Tensor, init: Init, seed: int, mode: str, name: str) -> torch.Tensor:
    """`tensor` filled in place by `init` from its own generator (drawn in fp32 on the CPU, then copied to the
    tensor's device and dtype); a tensor on the meta device (shapes only) is left as it is."""
    if tensor.device.type != "meta":
        drawn = torch.empty(tensor.shape, dtype=torch.float32)
        init(drawn, generator(seed, mode, name))
        tensor.copy_(drawn)
    return tensor


def drawn(shape, like: torch.Tensor, init: Init, seed: int, mode: str, name: str) -> torch.Tensor:
    """A new tensor of `shape` where, and in the precision, `like` is, filled by `init` from its own generator."""
    return fill_(torch.empty(shape, device=like.device, dtype=like.dtype), init, seed, mode, name)


# The initialisations the methods use, as Init functions.


def normal(mean: float, std: float) -> Init:
    return lambda t, g: nn.init.normal_(t, mean, std, generator=g)


def uniform(bound: float) -> Init:
    return lambda t, g: nn.init.uniform_(t, -bound, bound, generator=g)


def xavier_uniform(t: torch.Tensor, g: torch.Generator):
    return nn.init.xavier_uniform_(t, generator=g)


def linear_default(t: torch.Tensor, g: torch.Generator):
    """How torch initialises a Linear's weight (and peft and LoRA's A): Kaiming uniform with a = sqrt(5)."""
    return nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)


def zeros(t: torch.Tensor, g: torch.Generator):
    return nn.init.zeros_(t)
