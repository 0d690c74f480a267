"""JPEG files decoded and resized on the device: the input plan `device-decode` (`--decode device`), for every pass
over a task's images: training input (random-resized crops and flips), evaluation and feature extraction.

The DataLoader workers read each file's bytes and its JPEG header (the size, not the pixels), draw the sample's crop
and flip exactly as timm's CPU transforms draw them (the same per-sample seeds), and compute Pillow's coefficients
for them (resample.py). The device decodes the batch (torchvision.io.decode_jpeg: nvJPEG on CUDA, libjpeg-turbo on
a CPU) and applies the coefficients: the resize and crop are PIL's to the bit. On a CPU the decode is too (libjpeg-
turbo, as Pillow's), so the whole plan gives the CPU path's pixels (tests/input/test_device_decode.py); nvJPEG's
decode may differ from libjpeg-turbo's by a level here and there, so the plan is named in the record
(`input_pipeline`), its features are cached apart, and the GPU check measures its accuracy against the CPU path's.

A file that is not a baseline or progressive JPEG in RGB or grayscale (a PNG behind a .jpg name, a CMYK JPEG), and
every image of a split whose images are not its files' pixels (`ImageSplit.edit`: ObjectNet's, a border cropped off),
is decoded and transformed in the worker as on the CPU path, with the same draws. The plan is for a GPU: on a CPU the
batched integer passes are slower than Pillow's SIMD resize (BENCHMARKS.md), so --decode cpu stays the default.
"""

from __future__ import annotations

import io

import torch

from transfer_eval.input import device_resize, resample
from transfer_eval.input.transforms import seeded
from transfer_eval.tasks import ImageSplit, UnreadableImage

JPEG_MAGIC = b"\xff\xd8\xff"
DEVICE_MODES = ("RGB", "L")  # JPEG colour modes decoded on the device (others: in the worker, as on the CPU path)
CHUNK = 64  # images resized together: bounds the int32 buffers (64 x 3 x 600 x 800 x 4 bytes: 369 MB)


def unsuitable(split: ImageSplit, data_config: dict) -> str | None:
    """Why this split cannot be decoded on the device (None: it can): it needs image files of which the sampled
    ones include JPEGs, and a transform the device reproduces (bilinear or bicubic resize, centre crop or squash)."""
    if split.paths is None:
        return "the task's images are not files (--decode device reads JPEG files)"
    if split.edit:
        return f"the task's images are not its files' pixels ({split.edit}; --decode device decodes the files)"
    why = resample.cpu_only(data_config)
    if why:
        return why
    heads = []
    for i in split.sample():
        try:
            with open(split.paths[i], "rb") as f:
                heads.append(f.read(3))
        except OSError:
            continue  # an unreadable file is reported by name when it is read
    if heads and JPEG_MAGIC not in heads:
        return f"the task's files are not JPEG ({split.paths[split.sample()[0]]}, ...; --decode device decodes JPEG)"
    return None


class Files(device_resize.NativeSplit):
    """(the file's bytes as a uint8 tensor, or the image already transformed; its coefficients; label; index;
    whether it is to be decoded on the device) of each sample. An index may be (index, draw seed)."""

    def __getitem__(self, item):
        from PIL import Image

        i, draw = item if isinstance(item, tuple) else (item, None)
        if self.split.sealed:
            self.split.image(i)  # raises SealedSplitRead, as any read of a sealed split does
        path, label = self.split.paths[i], int(self.split.labels[i])
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise UnreadableImage(f"unreadable image {path}: {e}") from None
        try:
            head = Image.open(io.BytesIO(raw))  # the header only: size, mode, format
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            head = None
        if head is None or head.format != "JPEG" or head.mode not in DEVICE_MODES or self.split.edit:
            # the CPU path's decode (and its error, naming the file) and transform, with the same draws; and a
            # split whose images are not its files' pixels (ImageSplit.edit: ObjectNet's cropped border) as it is
            return (*self.on_cpu(self.split.image(i), draw), label, i, False)
        with seeded(draw):
            geometry, flip = self.geometry(head)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8), self.axes(geometry, flip), label, i, True


def collate(samples):
    items, axes, labels, index, encoded = zip(*samples)
    return list(items), resample.stack(list(axes)), torch.tensor(labels), torch.tensor(index), list(encoded)


class DecodeResize:
    """A collated batch to images on the device: the encoded ones decoded together, then each group of one decoded
    size resized through its coefficients. `pixels(batch)`: (images in [0, 1], labels), drawing nothing (it may run
    ahead in a thread: prefetch.py); `batches(loader)`: normalised (x, y), `normalise` as data.Normalise."""

    def __init__(self, split: ImageSplit, data_config: dict, device: torch.device, normalise):
        self.split, self.device, self.normalise = split, device, normalise
        self.out_h, self.out_w = data_config["input_size"][-2:]

    def batches(self, loader):
        from transfer_eval.input import prefetch

        made = map(self.pixels, loader)
        if loader.num_workers > 0:  # the draws are the workers': nothing random runs in the thread
            made = prefetch.ahead(made, self.device)
        return (self.normalise(x, y) for x, y in made)

    def _decode(self, raws, index) -> list[torch.Tensor]:
        """The batch decoded on the device. A JPEG that nvJPEG refuses (12-bit, arithmetic-coded, ...) is decoded
        on the host by libjpeg-turbo, as PIL decodes it; one that neither decodes is named."""
        from torchvision import io

        try:
            return io.decode_jpeg(raws, mode=io.ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pass
        out = []
        for raw, i in zip(raws, index):
            try:
                out.append(io.decode_jpeg(raw, mode=io.ImageReadMode.RGB, device=self.device))
                continue
            except RuntimeError:
                pass
            try:
                out.append(io.decode_jpeg(raw, mode=io.ImageReadMode.RGB).to(self.device))
            except RuntimeError as e:
                reason = str(e).splitlines()[0]
                raise UnreadableImage(
                    f"unreadable image {self.split.paths[i]}: {reason}; fix or remove the file, or use "
                    f"--decode cpu with --bad-images skip to leave unreadable images out"
                ) from None
        return out

    def pixels(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        items, axes, labels, index, encoded = batch
        n = len(items)
        todo = [k for k in range(n) if encoded[k]]
        images = [None if encoded[k] else items[k].to(self.device, non_blocking=True) for k in range(n)]
        if todo:
            decoded = self._decode([items[k] for k in todo], [int(index[k]) for k in todo])
            for k, img in zip(todo, decoded):
                images[k] = img
        coefficients = [a.to(self.device, non_blocking=True) for a in axes[:4]]
        groups: dict[tuple, list[int]] = {}
        for k, img in enumerate(images):
            groups.setdefault(tuple(img.shape), []).append(k)
        x = torch.empty(n, 3, self.out_h, self.out_w, device=self.device)
        for ks in groups.values():
            for c in range(0, len(ks), CHUNK):
                part = ks[c : c + CHUNK]
                at = torch.tensor(part, device=self.device)
                parts = [a[at] for a in coefficients]
                x[at] = resample.apply(torch.stack([images[k] for k in part]), *parts, axes[4][part])
        return x.div_(255), labels.to(self.device, non_blocking=True)
