"""The decoded-image cache (`run --cache-images`): each image of a split decoded once and stored at the training
resolution, so that later epochs, learning rates and runs skip JPEG decoding and the big resize.

An image is stored after the resize step of timm's evaluation transform for the model's data config (shorter side
to floor(size / crop_pct), as timm's eval transform does before its centre crop), as raw 8-bit RGB in one file per
split with an index of offsets and shapes. Evaluation on cached images therefore gives exactly the pixels of an
uncached run (the resize to the size an image already has is the identity); training crops are cut from these
images rather than the full-size originals, as FFCV and similar loaders do.

The key covers the image files (paths, sizes, modification times), the sample ids and labels, the resize (size,
interpolation, crop mode) and the versions of the suite and Pillow; `transfer-eval cache list|clear` shows and
removes entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import transfer_eval
from transfer_eval import paths
from transfer_eval.progress import bar
from transfer_eval.tasks import ImageSplit


def folder() -> Path:
    return paths.cache_dir() / "images"


def resize_transform(data_config: dict):
    """The steps of timm's eval transform before its centre crop (the resize), as one callable on PIL images."""
    from torchvision import transforms

    from transfer_eval.data import eval_transform

    steps = []
    for t in eval_transform(data_config).transforms:
        if "Crop" in type(t).__name__:
            break
        steps.append(t)
    return transforms.Compose(steps)


def key(split: ImageSplit, data_config: dict) -> str:
    import PIL

    blob = json.dumps({"files": split.files_signature(), "manifest": split.manifest(),
                       "resize": repr(resize_transform(data_config)), "suite": transfer_eval.__version__,
                       "pillow": PIL.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached(split: ImageSplit, data_config: dict, threads: int | None = None) -> ImageSplit:
    """The split over its cached images, building the cache entry first where there is none (or a damaged one).
    A concatenation (train+val, for retraining) is served by its parts' entries: nothing is stored twice."""
    if split.parts is not None:
        a, b = (cached(part, data_config, threads) for part in split.parts)
        return ImageSplit.concat(a, b)
    k = key(split, data_config)
    data, index = folder() / f"{k}.u8", folder() / f"{k}.npz"
    entry = _open(data, index, len(split))
    if entry is None:
        _build(split, data_config, data, index, threads)
        entry = _open(data, index, len(split))
        if entry is None:
            raise OSError(f"the decoded-image cache entry {data} cannot be read back after writing it")
    offsets, shapes, pixels = entry

    def image(i):
        from PIL import Image

        o, (h, w) = int(offsets[i]), shapes[i]
        return Image.fromarray(np.asarray(pixels[o:o + h * w * 3]).reshape(h, w, 3))

    out = ImageSplit(image, split.labels, split.ids, split.paths)
    out.skipped = list(split.skipped)
    return out


def _open(data: Path, index: Path, n: int):
    """(offsets, shapes, pixels) of an entry, or None where it is missing or damaged."""
    try:
        with np.load(index, allow_pickle=False) as z:
            offsets, shapes = z["offsets"], z["shapes"]
        pixels = np.memmap(data, dtype=np.uint8, mode="r")
    except (OSError, ValueError, KeyError):
        return None
    if len(offsets) != n or (n and int(offsets[-1] + shapes[-1].prod() * 3) != pixels.size):
        return None
    return offsets, shapes, pixels


def _build(split: ImageSplit, data_config: dict, data: Path, index: Path, threads: int | None) -> None:
    resize = resize_transform(data_config)
    data.parent.mkdir(parents=True, exist_ok=True)
    tmp_data = data.with_name(f".{data.name}.{os.getpid()}.part")
    tmp_index = index.with_name(f".{index.stem}.{os.getpid()}.part.npz")
    offsets = np.zeros(len(split), np.int64)
    shapes = np.zeros((len(split), 2), np.int64)

    def decode(i):
        return np.asarray(resize(split.image(i)), dtype=np.uint8)

    offset = 0
    try:
        with open(tmp_data, "wb") as f, ThreadPoolExecutor(threads or min(8, os.cpu_count() or 2)) as pool:
            # Pillow releases the GIL while decoding and resizing: threads keep every core busy.
            for i, arr in enumerate(bar(pool.map(decode, range(len(split))), "caching decoded images", "img",
                                        total=len(split))):
                offsets[i], shapes[i] = offset, arr.shape[:2]
                f.write(arr.tobytes())
                offset += arr.size
        about = {"source": _common_folder(split.paths), "images": len(split),
                 "resize": repr(resize).replace("\n", " "), "created": time.strftime("%Y-%m-%d %H:%M")}
        np.savez(tmp_index, offsets=offsets, shapes=shapes, about=np.asarray(json.dumps(about)))
        os.replace(tmp_data, data)  # pixels first: an index is only ever beside complete pixels
        os.replace(tmp_index, index)
    finally:
        tmp_data.unlink(missing_ok=True)
        tmp_index.unlink(missing_ok=True)


def _common_folder(files) -> str | None:
    try:
        return os.path.commonpath([os.path.dirname(p) for p in files]) if files else None
    except ValueError:
        return None


def entries() -> list[dict]:
    out = []
    for idx in sorted(folder().glob("*.npz")) if folder().is_dir() else []:
        data = idx.with_suffix(".u8")
        try:
            with np.load(idx, allow_pickle=False) as z:
                about = json.loads(str(z["about"]))
        except (OSError, ValueError, KeyError):
            about = {}
        size = idx.stat().st_size + (data.stat().st_size if data.is_file() else 0)
        out.append({"key": idx.stem, "bytes": size,
                    "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(idx.stat().st_mtime)), **about})
    return out


def clear() -> int:
    removed = 0
    for e in entries():
        for suffix in (".npz", ".u8"):
            (folder() / f"{e['key']}{suffix}").unlink(missing_ok=True)
        removed += 1
    return removed
