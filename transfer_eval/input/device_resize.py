"""Resizing small images on the device, to PIL's very pixels (the input plan `device-resize`).

For small images (CIFAR's 32 px) the DataLoader workers hand over uint8 images at their own size with each one's
Pillow coefficients (for the crop box timm's RandomResizedCrop draws and the flip, or the eval transform's resize
and centre crop: resample.py); one batched pair of matrix products on the device makes the model's inputs. Moving
32 px images instead of 224 px ones is 49x less data, and no CPU resizes. The tests compare with PIL image by image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from transfer_eval.input import resample
from transfer_eval.input.transforms import seeded
from transfer_eval.tasks import ImageSplit


class NativeSplit(Dataset):
    """(uint8 3xHxW image at its own size, its coefficients (resample.axes), label). An index may be (index, draw
    seed): see transforms.seeded.

    An odd image too large for the plan (which looked at a sample of the split) is transformed here by
    `fallback`, the CPU pipeline's uint8 transform with the same draws, and handed over at the input size with
    identity coefficients: its pixels are the CPU path's too."""

    def __init__(self, split: ImageSplit, geometry, fallback, data_config: dict):
        self.split, self.geometry, self.fallback = split, geometry, fallback
        self.out_h, self.out_w = data_config["input_size"][-2:]
        self.interpolation = data_config.get("interpolation", "bicubic")

    def __len__(self):
        return len(self.split)

    def __getitem__(self, item):
        i, draw = item if isinstance(item, tuple) else (item, None)
        img = self.split.image(i)
        label = int(self.split.labels[i])
        if max(img.size) > min(self.out_h, self.out_w):
            return (*self.on_cpu(img, draw), label)
        arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        with seeded(draw):
            geometry, flip = self.geometry(img)
        return arr, self.axes(geometry, flip), label

    def axes(self, geometry, flip):
        return resample.axes(geometry, flip, self.out_h, self.out_w, self.interpolation)

    def on_cpu(self, img, draw) -> tuple:
        """(the image through `fallback` with the sample's draws, identity coefficients): the CPU path's pixels."""
        with seeded(draw):
            arr = torch.from_numpy(np.asarray(self.fallback(img), dtype=np.uint8).copy())
        return arr, self.axes(resample.identity(self.out_h, self.out_w), False)


def collate(samples):
    """Images of one batch padded to the largest among them (each image's coefficients read its own pixels only)."""
    h = max(s[0].shape[1] for s in samples)
    w = max(s[0].shape[2] for s in samples)
    x = torch.zeros(len(samples), 3, h, w, dtype=torch.uint8)
    for k, s in enumerate(samples):
        x[k, :, : s[0].shape[1], : s[0].shape[2]] = s[0]
    return x, resample.stack([s[1] for s in samples]), torch.tensor([s[2] for s in samples])


class DeviceResize:
    """A collated batch (uint8 images, coefficients, labels) to the model's input on the device: uint8 values
    exactly as PIL's resize gives them, then scaled and normalised as the CPU pipeline does (`normalise`)."""

    def __init__(self, device: torch.device, normalise):
        self.device, self.normalise = device, normalise

    def __call__(self, batch):
        img, axes, y = batch
        coefficients = [a.to(self.device, non_blocking=True) for a in axes[:4]]
        x = resample.apply(img.to(self.device, non_blocking=True), *coefficients, axes[4])
        return self.normalise(x.div_(255), y.to(self.device, non_blocking=True))
