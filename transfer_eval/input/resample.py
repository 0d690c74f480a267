"""Pillow's resize, reproduced on the device to the bit: the geometry of timm's transforms (which box of an image
becomes the model's input), Pillow's coefficients for it, and the two passes that apply them to a batch.

Pillow's resampling (`Image.resize`, which torchvision and timm call) is separable: a horizontal pass then a
vertical one, each rounded and clipped to 8 bits (Pillow 13 runs the vertical one first where the height shrinks
more than twice as much as the width: `vertical_first`). Each output pixel of a pass is a weighted sum of a window
of input pixels; the weights are its filter (bilinear; bicubic with a = -0.5, not torch's -0.75), widened by the
scale when the image is reduced (antialiasing), normalised, and rounded to integers with 22 fractional bits
(precompute_coeffs and normalize_coeffs_8bpc of its Resample.c, computed here in the same float64 operations in the
same order). The passes then are integer arithmetic, Pillow's own: each output pixel the int32 sum of its window's
8-bit pixels times those coefficients, shifted and clipped. Integer sums do not depend on their order, so the
device's passes (`apply`: one gather and multiply-add per window position, batched over images) give PIL's very
pixels, enlarging or reducing, with work proportional to the window, not to the image.

The coefficients travel compactly (each output pixel's first input pixel and its window of weights: `axes`, computed
in the DataLoader workers).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2
INTERPOLATIONS = ("bicubic", "bilinear")  # done on the device; others (nearest, lanczos, box) on the CPU
RRC_RATIO = (3 / 4, 4 / 3)  # timm's RandomResizedCrop aspect-ratio range


def cpu_only(data_config: dict) -> str | None:
    """Why the evaluation transform of `data_config` cannot be done on the device (None: it can): the device does
    bilinear and bicubic resizes, with a centre crop (of a square input) or a squash."""
    if data_config.get("interpolation", "bicubic") not in INTERPOLATIONS:
        return f"interpolation {data_config.get('interpolation')!r} is done on the CPU only"
    mode = data_config.get("crop_mode", "center")
    if mode not in ("center", "squash", None):
        return f"crop_mode {mode!r} is done on the CPU only"
    h, w = data_config["input_size"][-2:]
    if mode != "squash" and h != w:
        return f"a non-square input ({w}x{h}) is resized with timm's ResizeKeepRatio, on the CPU only"
    return None


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


@lru_cache(maxsize=1024)  # per worker; an entry is about 20 kB at 224 px (random crops rarely repeat)
def compact(in_size: int, resized: int, offset: int, out: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's integer coefficients for resizing a line of `in_size` pixels to `resized`, output pixels
    offset..offset+out: (first input pixel of each: int32 [out], weights: int32 [out, window]). Read-only: cached,
    as images of one size share them."""
    kernel, support = FILTERS[interpolation]
    scale = in_size / resized
    filterscale = max(scale, 1.0)
    support *= filterscale
    ss = 1.0 / filterscale
    center = (np.arange(offset, offset + out) + 0.5) * scale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int): towards zero
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - first
    window = int(count.max()) if out else 0
    x = np.arange(window)
    w = kernel(((x[None, :] + first[:, None]) - center[:, None] + 0.5) * ss)
    w = np.where(x[None, :] < count[:, None], w, 0.0)
    total = np.zeros(out)
    for j in range(window):  # Pillow's running sum, in its order
        total = total + w[:, j]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    unit = float(1 << PRECISION_BITS)
    w = np.trunc(np.where(w < 0, w * unit - 0.5, w * unit + 0.5))
    first, w = first.astype(np.int32), w.astype(np.int32)
    first.setflags(write=False)
    w.setflags(write=False)
    return first, w


def _orders_passes() -> bool:
    import PIL

    return int(PIL.__version__.split(".")[0]) >= 13


ORDERS_PASSES = _orders_passes()  # this Pillow chooses which pass comes first (its ImagingResampleInner)


def vertical_first(width: int, height: int, resized_w: int, resized_h: int) -> bool:
    """Whether Pillow resizes this image's vertical axis first: from 13.0 where the height shrinks, and by more than
    twice the width's shrinking; before 13.0 never. The order moves a pixel by a level now and then."""
    shrink = height - resized_h
    return ORDERS_PASSES and shrink > 0 and shrink > (width - resized_w) * 2


def axes(geometry, flip: bool, out_h: int, out_w: int, interpolation: str):
    """One image's coefficients for `geometry` ([x, y, w, h of the crop, resized w, h, left, top of the kept
    window]): (rows first, rows weights, columns first, columns weights, vertical pass first), columns mirrored
    for a flip."""
    x0, y0, cw, ch, rw, rh, left, top = (int(v) for v in geometry)
    rf, rw_ = compact(ch, rh, top, out_h, interpolation)
    cf, cw_ = compact(cw, rw, left, out_w, interpolation)
    if flip:
        cf, cw_ = cf[::-1], cw_[::-1]
    return rf + y0, rw_, cf + x0, cw_, vertical_first(cw, ch, rw, rh)


def identity(out_h: int, out_w: int) -> list[int]:
    """The geometry of an image already at the model's input size (bicubic or bilinear at scale 1 is the identity)."""
    return [0, 0, out_w, out_h, out_w, out_h, 0, 0]


def stack(per_image: list) -> tuple[torch.Tensor, ...]:
    """A batch's `axes` as five tensors, windows padded with zero weights to the widest (the pass order: bool)."""
    out = []
    for k in range(4):
        parts = [a[k] for a in per_image]
        if k % 2 == 0:
            out.append(torch.from_numpy(np.stack(parts).astype(np.int64)))
        else:
            width = max(p.shape[1] for p in parts)
            padded = np.zeros((len(parts), parts[0].shape[0], width), np.int32)
            for i, p in enumerate(parts):
                padded[i, :, : p.shape[1]] = p
            out.append(torch.from_numpy(padded))
    return (*out, torch.tensor([bool(a[4]) for a in per_image]))


def _pass(x: torch.Tensor, first: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """One of Pillow's passes along `dim` (2: vertical, 3: horizontal) of int32 images (n x C x H x W): each
    output pixel 2^21 plus the sum of its window's pixels times their weights, shifted right by 22, clipped."""
    shape, view = list(x.shape), [x.shape[0], 1, 1, 1]
    shape[dim] = view[dim] = first.shape[1]
    acc = torch.full(shape, 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for j in range(weights.shape[2]):  # a padded window's weights are 0; its index is kept in the image
        idx = (first + j).clamp_(max=x.shape[dim] - 1).view(view).expand(shape)
        acc += x.gather(dim, idx) * weights[:, :, j].reshape(view)
    return acc.bitwise_right_shift_(PRECISION_BITS).clamp_(0, 255)


def apply(x: torch.Tensor, rows_first, rows_w, cols_first, cols_w, vertical: torch.Tensor) -> torch.Tensor:
    """uint8 images (n x 3 x H x W, on the device, with their coefficients; a padded image's coefficients read its
    own pixels only) to the model's input (n x 3 x out_h x out_w), float32 holding PIL's 8-bit values.
    `vertical` (on the host): which images Pillow resizes vertically first."""
    x = x.int()

    def both(at, vertical_first):
        xs, rf, rw, cf, cw = (t if at is None else t[at] for t in (x, rows_first, rows_w, cols_first, cols_w))
        if vertical_first:
            return _pass(_pass(xs, rf, rw, 2), cf, cw, 3)
        return _pass(_pass(xs, cf, cw, 3), rf, rw, 2)

    if not bool(vertical.any()):
        return both(None, False).float()
    y = torch.empty(x.shape[0], x.shape[1], rows_first.shape[1], cols_first.shape[1], device=x.device)
    for vertical_first, at in ((False, (~vertical).nonzero()[:, 0]), (True, vertical.nonzero()[:, 0])):
        if len(at):
            at = at.to(x.device)
            y[at] = both(at, vertical_first).float()
    return y


class EvalGeometry:
    """The eval transform's geometry (timm: resize the shorter side to floor(size / crop_pct), both sides under
    crop_mode squash; then the centre crop), as torchvision rounds it. Takes anything with PIL's `size`."""

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
    torchvision's horizontal flip draw (torch.rand), in that order: the same draws as the CPU transforms. Takes a
    PIL image, which may be opened without decoding (only its size is read)."""

    def __init__(self, data_config: dict, scale, hflip: float):
        from timm.data.transforms import RandomResizedCropAndInterpolation

        self.out_h, self.out_w = data_config["input_size"][-2:]
        self.scale, self.hflip = tuple(scale), hflip
        self.get_params = RandomResizedCropAndInterpolation.get_params

    def __call__(self, img) -> tuple[list[int], bool]:
        i, j, ch, cw = self.get_params(img, self.scale, RRC_RATIO)
        flip = self.hflip > 0 and bool(torch.rand(1) < self.hflip)
        return [int(j), int(i), int(cw), int(ch), self.out_w, self.out_h, 0, 0], flip


def geometry(data_config: dict, train: dict | None):
    """The geometry the pipeline of a split draws: the training augmentation's (`train`: the recipe's fields, with
    augment on) or the evaluation transform's."""
    if train is not None and train.get("augment", True):
        return RandomGeometry(data_config, train.get("crop_scale", (0.08, 1.0)), train.get("hflip", 0.5))
    return EvalGeometry(data_config)
