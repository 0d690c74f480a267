"""JPEG files decoded and resized on the device: the input plan `device-decode` (`--decode device`), for evaluation
and feature extraction (the probes, k-NN, few-shot, every val and test pass).

The DataLoader workers only read each file's bytes; the device decodes the batch (torchvision.io.decode_jpeg: nvJPEG
on CUDA, libjpeg-turbo on a CPU) and applies the evaluation transform's own resize and centre crop (the very Resize
and CenterCrop objects timm builds for the CPU path, so the geometry is the same) to each image as float32 tensors,
rounded back to 8-bit levels as PIL rounds, then normalises the batch. This is not PIL's arithmetic: measured on
photo-like JPEGs, pixels differ from the CPU path's by at most a few 8-bit levels (tests/test_device_decode.py bounds
it, and the accuracy effect); so the plan is named in the record (`input_pipeline`) and its features are cached apart.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from transfer_eval import device_resize
from transfer_eval.tasks import ImageSplit, UnreadableImage

JPEG_MAGIC = b"\xff\xd8\xff"


def unsuitable(split: ImageSplit, data_config: dict) -> str | None:
    """Why this split cannot be decoded on the device (None: it can): it needs JPEG files (a sample is probed)
    and a transform the device reproduces (bilinear or bicubic resize, centre crop or squash)."""
    if split.paths is None:
        return "the task's images are not files (--decode device reads JPEG files)"
    why = device_resize.cpu_only(data_config)
    if why:
        return why
    for i in split.sample():
        try:
            with open(split.paths[i], "rb") as f:
                head = f.read(3)
        except OSError:
            continue  # an unreadable file is reported by name when it is read
        if head != JPEG_MAGIC:
            return f"{split.paths[i]} is not a JPEG file (--decode device decodes JPEG only)"
    return None


class RawFiles(Dataset):
    """(the file's bytes as a uint8 tensor, label, index) of each image of a split: all a worker does."""

    def __init__(self, split: ImageSplit):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        if self.split.sealed:
            self.split.image(i)  # raises SealedSplitRead, as any read of a sealed split does
        path = self.split.paths[i]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UnreadableImage(f"unreadable image {path}: {e}") from None
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), int(self.split.labels[i]), int(i)


def collate(batch):
    raws, labels, index = zip(*batch)
    return list(raws), torch.tensor(labels), torch.tensor(index)


class DecodeResize:
    """A batch of file bytes to normalised float images on the device, through the evaluation transform's resize
    and crop; `normalise` as data.Normalise."""

    def __init__(self, split: ImageSplit, data_config: dict, device: torch.device, normalise):
        from torchvision.transforms import CenterCrop, Resize

        from transfer_eval.transforms import eval_transform

        steps = eval_transform(data_config, uint8=True).transforms
        self.resize = next(t for t in steps if isinstance(t, Resize))
        self.crop = next(t for t in steps if isinstance(t, CenterCrop))
        self.split, self.device, self.normalise = split, device, normalise

    def _decode(self, raws, index) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(raws, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            for raw, i in zip(raws, index.tolist()):  # find the file that does not decode, and name it
                try:
                    decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
                except RuntimeError as e:
                    reason = str(e).splitlines()[0]
                    raise UnreadableImage(
                        f"unreadable image {self.split.paths[i]}: {reason}; fix or remove the file, or use "
                        f"--decode cpu with --bad-images skip to leave unreadable images out"
                    ) from None
            raise

    def __call__(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        import torchvision.transforms.v2.functional as F

        raws, labels, index = batch
        out = []
        for img in self._decode(raws, index):
            img = F.resize(img.float(), self.resize.size, self.resize.interpolation, antialias=True)
            out.append(F.center_crop(img.round_().clamp_(0, 255), self.crop.size))
        x = torch.stack(out).div_(255)
        return self.normalise(x, labels.to(self.device, non_blocking=True))
