"""A folder in Oxford Flowers-102's exact on-disk format, of synthetic photo-like JPEGs, for end-to-end timing.

    python scripts/flowers_like.py DATA [--images 2040] [--workers 8]

writes DATA/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}: 500x375 photo-like JPEGs
(transfer_eval/synthetic.py: about 90 kB each, like real photos); 102 classes, each with its own tint, so
a model has something to learn; the images split 1 : 1 : 2 into trnid, valid and tstid, as the real release's
1,020 / 1,020 / 6,149. Run the suite on it with `--data-dir DATA --skip-verify` (the .mat files are not the
official ones). Nothing here is a dataset: it measures how fast images reach the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the suite of this checkout

CLASSES = 102


def write(root: Path, images: int = 2040, workers: int = 8) -> dict:
    from scipy.io import savemat

    from transfer_eval.input import synthetic

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    labels = np.arange(images) % CLASSES  # 0-based; the .mat holds 1..102
    paths = [folder / "jpg" / f"image_{k:05d}.jpg" for k in range(1, images + 1)]
    mean_kb = synthetic.write_jpegs(paths, labels, workers=workers)
    ids = np.arange(1, images + 1)
    part = ids % 4  # 0: train, 1: val, 2 and 3: test
    savemat(folder / "imagelabels.mat", {"labels": (labels + 1).astype(np.uint8)[None, :]})
    setid = {"trnid": ids[part == 0], "valid": ids[part == 1], "tstid": ids[part >= 2]}
    savemat(folder / "setid.mat", {k: v.astype(np.uint16)[None, :] for k, v in setid.items()})
    return {"images": images, "mean_kb": mean_kb, "folder": str(folder)}


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
