"""Transforms from the checkpoint's data config (timm), and loaders over a task's splits."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from transfer_eval.tasks import ImageSplit


def eval_transform(data_config: dict):
    """timm's evaluation transform: resize to size/crop_pct, centre crop, normalise with the weights' mean/std."""
    from timm.data import create_transform

    return create_transform(**_transform_args(data_config), is_training=False)


def train_transform(data_config: dict, augment: bool = True, hflip: float = 0.5,
                    crop_scale: tuple[float, float] = (0.08, 1.0), randaugment: str | None = None,
                    random_erasing: float = 0.0):
    """Random-resized crop and flip (the ViT/BiT fine-tuning augmentation), plus timm's RandAugment and random
    erasing where the recipe asks; the eval transform if not augment."""
    from timm.data import create_transform

    if not augment:
        return eval_transform(data_config)
    return create_transform(**_transform_args(data_config), is_training=True, hflip=hflip, scale=tuple(crop_scale),
                            color_jitter=None, auto_augment=randaugment, re_prob=random_erasing)


def _transform_args(cfg: dict) -> dict:
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return {k: cfg[k] for k in keys if k in cfg}


class TransformedSplit(Dataset):
    """(tensor, label) pairs from an ImageSplit."""

    def __init__(self, split: ImageSplit, transform):
        self.split, self.transform = split, transform

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.transform(self.split.image(i)), int(self.split.labels[i])


def default_workers(device: torch.device) -> int:
    # On a CPU the workers would compete with the model for the same cores.
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def loader(split: ImageSplit, transform, batch_size: int, device: torch.device, shuffle: bool = False,
           generator: torch.Generator | None = None, drop_last: bool = False,
           num_workers: int | None = None) -> DataLoader:
    workers = default_workers(device) if num_workers is None else num_workers
    return DataLoader(TransformedSplit(split, transform), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, drop_last=drop_last, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def batch_loader(split: ImageSplit, transform, batch_sampler, device: torch.device,
                 num_workers: int | None = None) -> DataLoader:
    workers = default_workers(device) if num_workers is None else num_workers
    return DataLoader(TransformedSplit(split, transform), batch_sampler=batch_sampler, num_workers=workers,
                      pin_memory=device.type == "cuda")


def pick_device(name: str = "auto") -> torch.device:
    from transfer_eval.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is visible here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu or cuda[:N]") from None


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def precision(device: torch.device) -> str:
    return "bf16-autocast" if device.type == "cuda" else "fp32"


class EpochBatches(torch.utils.data.Sampler):
    """Endless micro-batches of indices. Epoch e is a permutation drawn from a generator seeded by (seed, e), cut
    into effective batches of `batch_size` (the last partial one dropped, unless the split is smaller than a
    batch); each effective batch is yielded as consecutive chunks of at most `micro_size`.

    Effective batch b is a pure function of (seed, b): a resumed run starts at its batch without reading the ones
    before it, and a smaller micro-batch (after running out of memory) splits the very same effective batch."""

    def __init__(self, n: int, batch_size: int, seed: int, start_batch: int = 0, micro_size: int | None = None,
                 rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start_batch
        self.rank, self.world = rank, world
        self.micro = micro_size or batch_size
        self.per_epoch = max(1, n // batch_size)

    def _epoch(self, e: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        b = self.start
        while True:
            e, j = divmod(b, self.per_epoch)
            perm = self._epoch(e)
            for k in range(j, self.per_epoch):
                batch = perm[k * self.batch_size:(k + 1) * self.batch_size]
                share = len(batch) // self.world  # this process's contiguous share of the effective batch
                batch = batch[self.rank * share:(self.rank + 1) * share]
                for c in range(0, len(batch), self.micro):
                    yield batch[c:c + self.micro].tolist()
            b = (e + 1) * self.per_epoch

    def chunks_per_batch(self) -> int:
        return -(-(min(self.batch_size, self.n) // self.world) // self.micro)
