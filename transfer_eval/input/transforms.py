"""Image transforms from a checkpoint's data config: timm's evaluation and training transforms, and the
per-sample seeding of their random draws (`seeded`)."""

from __future__ import annotations

import contextlib
import random

import torch


def eval_transform(data_config: dict, uint8: bool = False):
    """timm's evaluation transform: resize to size/crop_pct, centre crop, normalise with the weights' mean/std.
    With `uint8`, it stops before normalising and gives uint8 CHW arrays (timm's prefetcher form): the device
    normalises (`Pipeline.batches`)."""
    from timm.data import create_transform

    return create_transform(**_transform_args(data_config), is_training=False, use_prefetcher=uint8)


def train_transform(
    data_config: dict,
    augment: bool = True,
    hflip: float = 0.5,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    randaugment: str | None = None,
    random_erasing: float = 0.0,
    uint8: bool = False,
):
    """Random-resized crop and flip (the ViT/BiT fine-tuning augmentation), plus timm's RandAugment and random
    erasing where the recipe asks; the eval transform if not augment. With `uint8`, uint8 CHW arrays, and random
    erasing is left to the device (timm's PrefetchLoader erases after normalising, as the CPU transform does)."""
    from timm.data import create_transform

    if not augment:
        return eval_transform(data_config, uint8)
    return create_transform(
        **_transform_args(data_config),
        is_training=True,
        hflip=hflip,
        scale=tuple(crop_scale),
        color_jitter=None,
        auto_augment=randaugment,
        re_prob=random_erasing,
        use_prefetcher=uint8,
    )


def _transform_args(cfg: dict) -> dict:
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return {k: cfg[k] for k in keys if k in cfg}


@contextlib.contextmanager
def seeded(draw: int | None):
    """Within the block, Python's and torch's CPU generators (what timm's and torchvision's random transforms
    draw from) start from `draw`, and are restored afterwards; nothing happens for None. A training sample's
    crop and flip are then a function of its draw seed alone (EpochBatches: run seed, epoch, position), not of
    which DataLoader worker, or how many, transformed it."""
    if draw is None:
        yield
        return
    saved_py, saved_torch = random.getstate(), torch.get_rng_state()
    random.seed(draw)
    torch.set_rng_state(torch.Generator().manual_seed(draw).get_state())
    try:
        yield
    finally:
        random.setstate(saved_py)
        torch.set_rng_state(saved_torch)
