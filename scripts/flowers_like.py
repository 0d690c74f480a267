"""A folder in Oxford Flowers-102's exact on-disk format, of synthetic photo-like JPEGs, for end-to-end timing.

    python scripts/flowers_like.py DATA [--images 2040] [--workers 8]

writes DATA/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}: 500x375 RGB JPEGs (quality 90) with
structure at several scales and sensor-like noise, about 80-150 kB each like real photos (a smooth image
compresses to a few kB and decodes several times faster than a photo); 102 classes, each with its own tint, so
a model has something to learn; the images split 1 : 1 : 2 into trnid, valid and tstid, as the real release's
1,020 / 1,020 / 6,149. Run the suite on it with `--data-dir DATA --skip-verify` (the .mat files are not the
official ones). Nothing here is a dataset: it measures how fast images reach the model.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 102
SIZE = (500, 375)


def photo(k: int, label: int) -> Image.Image:
    rng = np.random.default_rng(k)
    w, h = SIZE
    layers = np.zeros((h, w, 3))
    for cells, weight in ((4, 90.0), (16, 45.0), (64, 25.0)):  # coarse shapes, parts, texture
        small = rng.uniform(-1, 1, (cells * h // w + 1, cells, 3))
        layers += (
            weight
            * np.asarray(
                Image.fromarray(((small + 1) * 127.5).astype(np.uint8)).resize(SIZE, Image.BICUBIC), np.float64
            )
            / 127.5
            - weight
        )
    tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float64)
    pixels = 0.5 * tint + 64 + layers + rng.normal(0, 16, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write(args) -> int:
    folder, k, label = args
    path = folder / f"image_{k:05d}.jpg"
    photo(k, label).save(path, quality=90)
    return path.stat().st_size


def write(root: Path, images: int = 2040, workers: int = 8) -> dict:
    from scipy.io import savemat

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    labels = np.arange(images) % CLASSES  # 0-based; the .mat holds 1..102
    with ProcessPoolExecutor(workers) as pool:
        sizes = list(pool.map(_write, [(folder / "jpg", k + 1, int(labels[k])) for k in range(images)], chunksize=16))
    ids = np.arange(1, images + 1)
    part = ids % 4  # 0: train, 1: val, 2 and 3: test
    savemat(folder / "imagelabels.mat", {"labels": (labels + 1).astype(np.uint8)[None, :]})
    setid = {"trnid": ids[part == 0], "valid": ids[part == 1], "tstid": ids[part >= 2]}
    savemat(folder / "setid.mat", {k: v.astype(np.uint16)[None, :] for k, v in setid.items()})
    return {"images": images, "mean_kb": float(np.mean(sizes)) / 1000, "folder": str(folder)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--images", type=int, default=2040)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    out = write(args.root, args.images, args.workers)
    print(f"{out['images']} JPEGs, mean {out['mean_kb']:.0f} kB, in {out['folder']}")


if __name__ == "__main__":
    main()
