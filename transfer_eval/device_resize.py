"""Resizing small images on the device, to PIL's very pixels.

For small images (CIFAR's 32 px) the DataLoader workers hand over uint8 images at their own size with each one's
geometry (the crop box timm's RandomResizedCrop draws, or the eval transform's resize and centre crop) and flip;
one batched pair of matrix products on the device makes the model's inputs. Moving 32 px images instead of 224 px
ones is 49x less data, and no CPU resizes.

The products reproduce Pillow's resampling (`Image.resize`, which torchvision and timm call) bit for bit: its
filters (bilinear; bicubic with a = -0.5, not torch's -0.75), its normalised fixed-point coefficients (22
fractional bits), its horizontal-then-vertical passes with each pass rounded and clipped to 8 bits. Sums of
8-bit pixels times 22-bit integer coefficients are exact in float64. Only enlargement is done here (the model's
input at least the image's size), the case every device-resize plan has: a crop of an image enlarged to the
input, or the image enlarged to size / crop_pct and centre-cropped. The tests compare with PIL image by image.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from transfer_eval.tasks import ImageSplit
from transfer_eval.transforms import seeded

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2
INTERPOLATIONS = ("bicubic", "bilinear")  # done on the device; others (nearest, lanczos, box) on the CPU


def cpu_only(data_config: dict) -> str | None:
    """Why the evaluation transform of `data_config` cannot be done on the device (None: it can): the device does
    bilinear and bicubic resizes, with a centre crop or a squash (device_resize.py, device_decode.py)."""
    if data_config.get("interpolation", "bicubic") not in INTERPOLATIONS:
        return f"interpolation {data_config.get('interpolation')!r} is done on the CPU only"
    if data_config.get("crop_mode", "center") not in ("center", "squash", None):
        return f"crop_mode {data_config.get('crop_mode')!r} is done on the CPU only"
    return None


RRC_RATIO = (3 / 4, 4 / 3)  # timm's RandomResizedCrop aspect-ratio range


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


@lru_cache(maxsize=4096)
def coefficients(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """Pillow's integer coefficients for resizing a line of `in_size` pixels to `out_size` (out_size x in_size,
    float64 holding integers): precompute_coeffs then normalize_coeffs_8bpc of its Resample.c."""
    kernel, support = FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    out = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = np.array([kernel((x + lo - center + 0.5) / filterscale) for x in range(hi - lo)])
        if w.sum() != 0.0:
            w = w / w.sum()
        out[xx, lo:hi] = np.trunc(np.where(w < 0, w * (1 << PRECISION_BITS) - 0.5, w * (1 << PRECISION_BITS) + 0.5))
    return out


@lru_cache(maxsize=2048)  # at most 2,048 x 224 x 64 float64: 235 MB; 32 px crops need about 1,100
def axis_matrix(size: int, start: int, length: int, resized: int, offset: int, out: int, interpolation: str):
    """The (out x size) matrix that takes one axis of an image to the model's input along it: the pixels
    start..start+length, resized to `resized`, of which out pixels from `offset` are kept. Cached (read-only):
    a small image has few distinct crops, and every batch asks for them again."""
    m = np.zeros((out, size))
    m[:, start : start + length] = coefficients(length, resized, interpolation)[offset : offset + out]
    m.setflags(write=False)
    return m


class EvalGeometry:
    """The eval transform's geometry (timm: resize the shorter side to floor(size / crop_pct), both sides under
    crop_mode squash; then the centre crop), as torchvision rounds it."""

    def __init__(self, data_config: dict):
        self.out_h, self.out_w = data_config["input_size"][-2:]
        self.crop_pct = data_config.get("crop_pct") or 0.875
        self.squash = data_config.get("crop_mode") == "squash"

    def __call__(self, img) -> tuple[list[int], bool]:
        w, h = img.size
        sh, sw = math.floor(self.out_h / self.crop_pct), math.floor(self.out_w / self.crop_pct)
        if self.squash:
            new_w, new_h = sw, sh
        elif sh != sw:
            raise ValueError("a non-square input size resizes with timm's ResizeKeepRatio, on the CPU only")
        elif w <= h:  # torchvision's Resize(int): the shorter side to sh, the longer one truncated
            new_w, new_h = sh, int(sh * h / w)
        else:
            new_w, new_h = int(sh * w / h), sh
        top, left = int(round((new_h - self.out_h) / 2.0)), int(round((new_w - self.out_w) / 2.0))
        return [0, 0, w, h, new_w, new_h, left, top], False


class RandomGeometry:
    """timm's RandomResizedCrop box (its own get_params, drawn with Python's random as timm does) and
    torchvision's horizontal flip draw (torch.rand), in that order: the same draws as the CPU transforms."""

    def __init__(self, data_config: dict, scale, hflip: float):
        from timm.data.transforms import RandomResizedCropAndInterpolation

        self.out_h, self.out_w = data_config["input_size"][-2:]
        self.scale, self.hflip = tuple(scale), hflip
        self.get_params = RandomResizedCropAndInterpolation.get_params

    def __call__(self, img) -> tuple[list[int], bool]:
        i, j, ch, cw = self.get_params(img, self.scale, RRC_RATIO)
        flip = self.hflip > 0 and bool(torch.rand(1) < self.hflip)
        return [int(j), int(i), int(cw), int(ch), self.out_w, self.out_h, 0, 0], flip


class NativeSplit(Dataset):
    """(uint8 3xHxW image at its own size, its geometry [x, y, w, h of the crop, resized w, h, left, top of the
    kept window], flip, label). An index may be (index, draw seed): see transforms.seeded.

    An odd image too large to be enlarged to the model's input (the plan looked at a sample of the split) is
    transformed here by `fallback`, the CPU pipeline's uint8 transform with the same draws, and handed over at
    the input size with an identity geometry: its pixels are the CPU path's too."""

    def __init__(self, split: ImageSplit, geometry, fallback, input_size: tuple[int, int]):
        self.split, self.geometry, self.fallback = split, geometry, fallback
        self.out_h, self.out_w = input_size

    def __len__(self):
        return len(self.split)

    def __getitem__(self, item):
        i, draw = item if isinstance(item, tuple) else (item, None)
        img = self.split.image(i)
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        label = int(self.split.labels[i])
        if max(img.size) > min(self.out_h, self.out_w):
            with seeded(draw):
                arr = torch.from_numpy(np.asarray(self.fallback(rgb), dtype=np.uint8).copy())
            identity = [0, 0, self.out_w, self.out_h, self.out_w, self.out_h, 0, 0]
            return arr, torch.tensor(identity), torch.tensor(False), label
        arr = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
        with seeded(draw):
            geometry, flip = self.geometry(img)
        return arr, torch.tensor(geometry), torch.tensor(flip), label


def collate(samples):
    """Images of one batch padded to the largest among them (each image's matrices read its own pixels only)."""
    h = max(s[0].shape[1] for s in samples)
    w = max(s[0].shape[2] for s in samples)
    x = torch.zeros(len(samples), 3, h, w, dtype=torch.uint8)
    for k, s in enumerate(samples):
        x[k, :, : s[0].shape[1], : s[0].shape[2]] = s[0]
    geometry = torch.stack([s[1] for s in samples])
    return x, geometry, torch.stack([s[2] for s in samples]), torch.tensor([s[3] for s in samples])


class DeviceResize:
    """A collated batch (uint8 images, geometries, flips, labels) to the model's input on the device: uint8
    values exactly as PIL's resize gives them, then scaled and normalised as the CPU pipeline does (`normalise`)."""

    def __init__(self, data_config: dict, device: torch.device, normalise):
        self.device, self.normalise = device, normalise
        self.out_h, self.out_w = data_config["input_size"][-2:]
        self.interpolation = data_config.get("interpolation", "bicubic")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is done on the CPU only")

    def matrices(self, geometry: torch.Tensor, flip: torch.Tensor, h: int, w: int):
        """(rows: n x out_h x h, columns: n x w x out_w), float64 on the host."""
        n = len(geometry)
        rows, cols = np.empty((n, self.out_h, h)), np.empty((n, w, self.out_w))
        for k, ((x0, y0, cw, ch, rw, rh, left, top), flipped) in enumerate(zip(geometry.tolist(), flip.tolist())):
            if rw < cw or rh < ch:
                raise ValueError(f"the device resize only enlarges (a {cw}x{ch} crop to {rw}x{rh} asked)")
            rows[k] = axis_matrix(h, y0, ch, rh, top, self.out_h, self.interpolation)
            c = axis_matrix(w, x0, cw, rw, left, self.out_w, self.interpolation)
            cols[k] = (c[::-1] if flipped else c).T
        return torch.from_numpy(rows), torch.from_numpy(cols)

    def __call__(self, batch):
        img, geometry, flip, y = batch
        n, _, h, w = img.shape
        rows, cols = self.matrices(geometry, flip, h, w)
        x = img.to(self.device, non_blocking=True).double()
        rows, cols = rows.to(self.device).unsqueeze(1), cols.to(self.device).unsqueeze(1)
        half, unit = float(1 << (PRECISION_BITS - 1)), float(1 << PRECISION_BITS)
        x = torch.floor((x @ cols + half) / unit).clamp_(0, 255)  # Pillow's horizontal pass, rounded to 8 bits
        x = torch.floor((rows @ x + half) / unit).clamp_(0, 255)  # then its vertical pass
        return self.normalise(x.float().div_(255), y.to(self.device, non_blocking=True))
