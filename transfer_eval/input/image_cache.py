"""The decoded-image cache (`run --cache-images`): each image of a split decoded once and stored at the training
resolution, so that later epochs, learning rates and runs skip JPEG decoding and the big resize.

An image is stored after the resize step of timm's evaluation transform for the model's data config (shorter side
to floor(size / crop_pct), as timm's eval transform does before its centre crop), in one file per split with an
index of offsets, byte sizes and shapes:

- splits read by evaluation (val, test, a probe's features): raw 8-bit RGB, so evaluation on cached images gives
  exactly the pixels of an uncached run (the resize to the size an image already has is the identity);
- splits read by training: JPEG at quality 90, as FFCV stores them (measured: 0.54x the bytes of 500x375 source
  JPEGs, where raw takes about 3.4x; ImageNet's train split would be 336 GB raw at 224 px), and training crops
  are cut from these images rather than the full-size originals.

The size is estimated from a sample before anything is written, and a build that would not fit on the disk is
refused in one line. Images are decoded in bounded chunks, so memory does not grow with the split.

The key covers the image files (paths, sizes, modification times, and what the task does to their pixels:
`ImageSplit.edit`), the sample ids and labels, the resize (size,
interpolation, crop mode) and the versions of the suite and Pillow; `transfer-eval cache list|clear` shows and
removes entries.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from transfer_eval import paths
from transfer_eval.errors import UserError
from transfer_eval.io import replacing
from transfer_eval.keys import digest
from transfer_eval.progress import bar
from transfer_eval.tasks import ImageSplit
from transfer_eval.version import __version__

log = logging.getLogger(__name__)

RAW, JPEG = "raw", "jpeg"
JPEG_QUALITY = 90
CHUNK = 256  # images decoded per submission to the thread pool
SAMPLE = 16  # images encoded to estimate an entry's size


def folder() -> Path:
    return paths.cache_dir() / "images"


def resize_transform(data_config: dict):
    """The steps of timm's eval transform before its centre crop (the resize), as one callable on PIL images."""
    from torchvision import transforms

    from transfer_eval.input.transforms import eval_transform

    steps = []
    for t in eval_transform(data_config).transforms:
        if "Crop" in type(t).__name__:
            break
        steps.append(t)
    return transforms.Compose(steps)


def key(split: ImageSplit, data_config: dict, kind: str = RAW) -> str:
    import PIL

    return digest(
        {
            "files": split.files_signature(),
            "manifest": split.manifest(),
            "resize": repr(resize_transform(data_config)),
            "suite": __version__,
            "pillow": PIL.__version__,
            "format": kind if kind == RAW else f"{kind}{JPEG_QUALITY}",
        }
    )


def cached(split: ImageSplit, data_config: dict, threads: int | None = None, kind: str = RAW) -> ImageSplit:
    """The split over its cached images (`kind` RAW for evaluation, JPEG for training), building the cache entry
    first where there is none (or a damaged one). A concatenation (train+val, for retraining) is served by its
    parts' entries: nothing is stored twice."""
    if split.parts is not None:
        a, b = (cached(part, data_config, threads, kind) for part in split.parts)
        return ImageSplit.concat(a, b)
    k = key(split, data_config, kind)
    data, index = folder() / f"{k}.u8", folder() / f"{k}.npz"
    entry = _open(data, index, len(split))
    if entry is None:
        _build(split, data_config, data, index, threads, kind)
        entry = _open(data, index, len(split), warn=False)
        if entry is None:
            raise OSError(f"the decoded-image cache entry {data} cannot be read back after writing it")
    offsets, sizes, shapes, pixels = entry

    def image(i):
        from PIL import Image

        o, n = int(offsets[i]), int(sizes[i])
        if kind == RAW:
            h, w = shapes[i]
            return Image.fromarray(np.asarray(pixels[o : o + n]).reshape(h, w, 3))
        with Image.open(io.BytesIO(pixels[o : o + n].tobytes())) as img:
            return img.convert("RGB")

    out = ImageSplit(image, split.labels, split.ids, split.paths, split.label_sets, split.edit)
    out.skipped = list(split.skipped)
    return out


def _open(data: Path, index: Path, n: int, warn: bool = True):
    """(offsets, byte sizes, shapes, bytes) of an entry, or None where it is missing or damaged (a damaged entry is
    said so, with `warn`, and is rebuilt by the caller)."""
    if not index.is_file() and not data.is_file():
        return None
    try:
        with np.load(index, allow_pickle=False) as z:
            offsets, sizes, shapes = z["offsets"], z["sizes"], z["shapes"]
        pixels = np.memmap(data, dtype=np.uint8, mode="r")
    except (OSError, ValueError, KeyError) as e:
        reason = f"{type(e).__name__}: {e}"
    else:
        end = int(offsets[-1] + sizes[-1]) if len(offsets) and len(sizes) == len(offsets) else 0
        if len(offsets) == n and len(sizes) == n and len(shapes) == n and end == pixels.size:
            return offsets, sizes, shapes, pixels
        reason = f"its index holds {len(offsets)} images of {n}, {end} bytes of {pixels.size}"
    if warn:
        log.warning(
            "transfer-eval: the decoded-image cache entry %s is damaged (%s); decoding the split again", data, reason
        )
    return None


def _encoder(resize, kind: str):
    def encode(img) -> tuple[bytes, tuple[int, int]]:
        img = resize(img)
        if kind == RAW:
            return np.asarray(img, dtype=np.uint8).tobytes(), (img.height, img.width)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue(), (img.height, img.width)

    return encode


def estimate_bytes(split: ImageSplit, data_config: dict, kind: str = RAW) -> int:
    """An entry's size from SAMPLE images spread over the split, encoded as the build would."""
    n = len(split)
    if n == 0:
        return 0
    encode = _encoder(resize_transform(data_config), kind)
    return int(np.mean([len(encode(split.image(i))[0]) for i in split.sample(SAMPLE)]) * n * 1.05)


def _check_room(split: ImageSplit, data_config: dict, kind: str, where: Path) -> None:
    import shutil

    need = estimate_bytes(split, data_config, kind)
    free = shutil.disk_usage(where).free
    if need > free:
        raise UserError(
            f"--cache-images: the {kind} image cache of this split ({len(split)} images) needs about "
            f"{need / 1e9:.1f} GB in {where}, which has {free / 1e9:.1f} GB free; free some space, set "
            f"TRANSFER_EVAL_CACHE to a larger disk, or run without --cache-images"
        )


def _build(split: ImageSplit, data_config: dict, data: Path, index: Path, threads: int | None, kind: str = RAW) -> None:
    resize = resize_transform(data_config)
    data.parent.mkdir(parents=True, exist_ok=True)
    _check_room(split, data_config, kind, data.parent)
    offsets = np.zeros(len(split), np.int64)
    sizes = np.zeros(len(split), np.int64)
    shapes = np.zeros((len(split), 2), np.int64)
    encode = _encoder(resize, kind)

    offset = 0
    # The pixels' block is the inner one, so they are renamed into place first: an index only ever stands beside
    # complete pixels.
    what = f"the decoded-image cache of a split ({len(split)} images)"
    with (
        replacing(index, ".npz", what, paths.CACHE_HINT) as tmp_index,
        replacing(data, what=what, hint=paths.CACHE_HINT) as tmp_data,
    ):
        with open(tmp_data, "wb") as f, ThreadPoolExecutor(threads or min(8, os.cpu_count() or 2)) as pool:
            # Pillow releases the GIL while decoding, resizing and encoding: threads keep every core busy. The
            # work goes to the pool a chunk at a time, so at most CHUNK decoded images are ever held.
            for start in bar(range(0, len(split), CHUNK), f"caching decoded images ({CHUNK} a chunk)", "chunk"):
                chunk = range(start, min(start + CHUNK, len(split)))
                for i, (blob, shape) in zip(chunk, pool.map(lambda j: encode(split.image(j)), chunk)):
                    offsets[i], sizes[i], shapes[i] = offset, len(blob), shape
                    f.write(blob)
                    offset += len(blob)
        about = {
            "source": _common_folder(split.paths),
            "images": len(split),
            "format": kind,
            "resize": repr(resize).replace("\n", " "),
            "created": time.strftime("%Y-%m-%d %H:%M"),
        }
        np.savez(
            tmp_index,
            offsets=offsets,
            sizes=sizes,
            shapes=shapes,
            format=np.asarray(kind),
            about=np.asarray(json.dumps(about)),
        )


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
        out.append(
            {
                "key": idx.stem,
                "bytes": size,
                "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(idx.stat().st_mtime)),
                **about,
            }
        )
    return out


def clear(keys=None) -> int:
    """Remove entries (all, or those whose key is in `keys`)."""
    removed = 0
    for e in entries():
        if keys is not None and e["key"] not in keys:
            continue
        for suffix in (".npz", ".u8"):
            (folder() / f"{e['key']}{suffix}").unlink(missing_ok=True)
        removed += 1
    return removed
