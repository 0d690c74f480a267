"""Photo-like synthetic images, for benchmarks and end-to-end timing (never for accuracy): structure at several
scales and sensor-like noise, so that a 500x375 JPEG (quality 90) is about 80-150 kB and decodes as slowly as a
real photo does. A smooth image compresses to a few kB and decodes several times faster, which flatters every
input pipeline."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_SIZE = (500, 375)  # (width, height): a typical Flowers or iNaturalist photo


def photo(k: int, tint: int = 0, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    """Image number k (deterministic); `tint` (e.g. a class) shifts its colour."""
    rng = np.random.default_rng(k)
    w, h = size
    layers = np.zeros((h, w, 3))
    for cells, weight in ((4, 90.0), (16, 45.0), (64, 25.0)):  # coarse shapes, parts, texture
        small = rng.uniform(-1, 1, (cells * h // w + 1, cells, 3))
        up = Image.fromarray(((small + 1) * 127.5).astype(np.uint8)).resize(size, Image.BICUBIC)
        layers += weight * np.asarray(up, np.float64) / 127.5 - weight
    colour = np.array([(tint * 37) % 256, (tint * 91) % 256, (tint * 53) % 256], np.float64)
    pixels = 0.5 * colour + 64 + layers + rng.normal(0, 16, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write(args) -> int:
    path, k, tint, size = args
    photo(k, tint, size).save(path, quality=90)
    return os.path.getsize(path)


def write_jpegs(paths: list[Path], tints=None, size=PHOTO_SIZE, workers: int = 1) -> float:
    """Photo number i (tint tints[i]) to paths[i] as a quality-90 JPEG; returns the files' mean size in kB."""
    tints = list(tints) if tints is not None else [0] * len(paths)
    jobs = [(p, i + 1, t, size) for i, (p, t) in enumerate(zip(paths, tints))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            sizes = list(pool.map(_write, jobs, chunksize=16))
    else:
        sizes = [_write(j) for j in jobs]
    return float(np.mean(sizes)) / 1000 if sizes else 0.0
