"""Miniature ImageNet-V2 and ImageNet-1k train folders in the exact on-disk formats of the real data.

ImageNet-V2 (as the vaishaal/ImageNetV2 tarballs extract):
    imagenetv2-<variant>-format-val/<class index>/<40-hex sha1>.jpeg
with a sparse, non-contiguous set of class folders (so that ImageFolder's string order and a rank among the
folders present both give visibly wrong labels), 1-3 images each, among them grayscale (L) and CMYK JPEGs and a
PNG saved under a .jpeg name, plus the junk a real copy can carry (.DS_Store, macOS `._*` resource forks).

ImageNet-1k train (torchvision's ImageNet layout):
    imagenet/train/<wnid>/<wnid>_<n>.JPEG
with exactly 1000 fake wnid folders, most of them empty; the real train set also holds CMYK JPEGs and a PNG
behind a .JPEG name (n02105855_2933.JPEG), so the fixture does too.

Every image encodes its class index: three 8x8 blocks side by side (24 x 8 px), block i carrying the i-th
decimal digit d of the class (000..999) as the value 10 + 25 d in the R channel (and the grey level of a
grayscale image). The blocks are aligned to JPEG's 8x8 DCT blocks and written without chroma subsampling, so a
decoded image gives its digits back exactly; `decode_class(img)` reads them.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

# Class folders of the ImageNet-V2 fixture and their images, by format: 12 classes, non-contiguous.
V2_IMAGES: dict[int, list[str]] = {
    0: ["RGB", "RGB"],
    1: ["RGB"],
    2: ["CMYK", "RGB", "RGB"],
    3: ["RGB"],
    10: ["L", "RGB"],
    11: ["RGB", "RGB"],
    100: ["RGB", "CMYK"],
    101: ["RGB"],
    250: ["RGB", "RGB", "RGB"],
    500: ["PNG", "RGB"],
    998: ["RGB", "RGB", "RGB"],
    999: ["L", "RGB"],
}
V2_COUNT = sum(len(v) for v in V2_IMAGES.values())  # 24

# The other two variants: a few folders each, one with the older 0.jpeg..9.jpeg names and other extensions.
OTHER_VARIANTS = {
    "threshold0.7": {5: ["RGB", "L"], 42: ["RGB"], 999: ["RGB"]},
    "top-images": {7: ["RGB"], 300: ["CMYK", "RGB"], 901: ["RGB"]},
}

# ImageNet-1k train: 1000 made-up wnids (sorted), images in a few of them (first and last included).
FAKE_WNIDS = sorted(f"n{(i * 104729 + 7) % 10**8:08d}" for i in range(1000))
assert len(set(FAKE_WNIDS)) == 1000 and FAKE_WNIDS[0] < FAKE_WNIDS[-1]
IN1K_COUNTS = {0: 2, 1: 3, 2: 2, 57: 3, 100: 2, 250: 3, 321: 160, 499: 2, 500: 3, 777: 1, 998: 2, 999: 3}
# Held out by the 1% rule, written out by hand: round(0.01 n) = 0 -> lifted to 1 for n = 2, 3; 2 for n = 160;
# none for the class with a single image.
IN1K_VAL_COUNTS = {0: 1, 1: 1, 2: 1, 57: 1, 100: 1, 250: 1, 321: 2, 499: 1, 500: 1, 777: 0, 998: 1, 999: 1}
IN1K_SPECIAL = {(100, 1): "CMYK", (250, 0): "PNG", (999, 2): "L"}  # (class, n) -> format; RGB otherwise


def digit_value(d: int) -> int:
    return 10 + 25 * d


def encode_rgb(cls: int) -> Image.Image:
    img = Image.new("RGB", (24, 8))
    for i, ch in enumerate(f"{cls:03d}"):
        v = digit_value(int(ch))
        img.paste((v, 255 - v, 60), (8 * i, 0, 8 * i + 8, 8))
    return img


def encode(cls: int, fmt: str) -> bytes:
    """Image bytes of class `cls` in format RGB (JPEG), L (grayscale JPEG), CMYK (JPEG) or PNG."""
    rgb = encode_rgb(cls)
    buf = io.BytesIO()
    if fmt == "RGB":
        rgb.save(buf, "JPEG", quality=95, subsampling=0)
    elif fmt == "L":
        rgb.getchannel("R").save(buf, "JPEG", quality=95)
    elif fmt == "CMYK":  # C = 255 - R, M = 255 - G, Y = 255 - B, K = 0: decodes to the same RGB
        r, g, b = rgb.split()
        cmyk = Image.merge("CMYK", [r.point(lambda x: 255 - x), g.point(lambda x: 255 - x),
                                    b.point(lambda x: 255 - x), Image.new("L", rgb.size, 0)])
        cmyk.save(buf, "JPEG", quality=95, subsampling=0)
    elif fmt == "PNG":
        rgb.save(buf, "PNG")
    else:
        raise ValueError(fmt)
    return buf.getvalue()


def decode_class(img: Image.Image) -> int:
    """The class index an image encodes (read from the centre of each 8x8 block's R channel)."""
    assert img.mode == "RGB" and img.size == (24, 8), (img.mode, img.size)
    digits = []
    for i in range(3):
        r = img.getpixel((8 * i + 4, 4))[0]
        d = round((r - 10) / 25)
        assert abs(r - digit_value(d)) <= 4, (r, d)
        digits.append(d)
    return int("".join(map(str, digits)))


def image_format(data: bytes) -> tuple[str, str]:
    with Image.open(io.BytesIO(data)) as im:
        return im.format, im.mode


def write_v2(root: Path, variant: str = "matched-frequency", images: dict[int, list[str]] | None = None,
             old_names: bool = False) -> Path:
    """imagenetv2-<variant>-format-val/<class>/<sha1>.jpeg under root (or 0.jpeg.. with old_names); returns it."""
    images = V2_IMAGES if images is None else images
    top = root / f"imagenetv2-{variant}-format-val"
    for cls, fmts in images.items():
        folder = top / str(cls)
        folder.mkdir(parents=True)
        for j, fmt in enumerate(fmts):
            data = encode(cls, fmt) + (b"" if fmt == "PNG" else bytes([j]))  # distinct bytes -> distinct sha1
            name = f"{j}.jpeg" if old_names else f"{hashlib.sha1(data).hexdigest()}.jpeg"
            (folder / name).write_bytes(data)
    # junk a copy extracted or browsed on a Mac carries: never images of the dataset
    (top / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    first = sorted(images)[0]
    (top / str(first) / "._resource_fork.jpeg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return top


def write_in1k_train(root: Path, counts: dict[int, int] | None = None, wnids: list[str] | None = None) -> Path:
    """imagenet/train/<wnid>/<wnid>_<n>.JPEG under root, one folder per wnid (empty where counts has none)."""
    counts = IN1K_COUNTS if counts is None else counts
    wnids = FAKE_WNIDS if wnids is None else wnids
    train = root / "imagenet" / "train"
    for idx, wnid in enumerate(wnids):
        folder = train / wnid
        folder.mkdir(parents=True)
        for n in range(counts.get(idx, 0)):
            fmt = IN1K_SPECIAL.get((idx, n), "RGB")
            data = encode(idx, fmt)
            (folder / f"{wnid}_{1000 + 37 * n}.JPEG").write_bytes(data)
    return train
