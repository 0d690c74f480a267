"""Pretrain the demo ViT on procedurally generated stroke images; write its backbone as a safetensors file.

This makes the shipped offline checkpoint `vit_demo_shapes` (transfer_eval/weights/vit_demo_shapes.safetensors):
vit_demo's architecture (timm vit_small_patch16_224 with img_size 16, patch_size 4, embed_dim 128, depth 4,
num_heads 4; inputs normalised with mean 0.5, std 0.5), trained from scratch on images that numpy draws from a
fixed seed. No dataset, no download, and nothing of scikit-learn's digits is used.

Data (`synth_images`): 93 classes, uniformly drawn, each image from its own numpy default_rng([seed, index]):
  * 27 shapes at a random position, size, aspect, shear and rotation (free, or a small tilt for the classes an
    orientation defines): lines in 4 orientations, ring, ellipse, open arc, S-curve, spiral, plus, x, corner,
    tee, chevron, triangle, square, zigzag, wave, parallel lines, figure eight, loop with tail, hook, asterisk,
    dot, two rings, hash, random scribble;
  * 2 textures: stripes and checkers at random angle and frequency;
  * 64 random "glyphs": each 1-3 strokes (straight, bent or quadratic curves) between jittered points of a tall
    3x5 lattice, fixed per seed; every image moves each stroke point a little (an elastic-like deformation)
    and tilts the glyph within 15 degrees, so the class is the glyph's shape, not its pixels.
Strokes are polylines rendered with analytic anti-aliasing from their distance to the pen (pen width 0.8-2.4 px
at 16 px), then: a stray stroke or speck in 30% of images, random ink and background grey levels (15% dark on
light), in 60% of images the low-resolution path of the digits task (2x2 box-downsampled to 8 px, half of those
quantised to 17 grey levels, bilinear back up to 16 px), and Gaussian pixel noise.

Training: AdamW (lr 1e-3, weight decay 0.05 on matrices, betas 0.9/0.999), batch 128, 5% linear warmup then
cosine to 0, grad-norm clip 1, fresh images every step (800 steps = 102,400 images). Loss: cross-entropy over the
93 classes (label smoothing 0.1) on the class token, plus 10 x the MSE of a small MLP decoder (128-256-256,
discarded afterwards) that rebuilds the clean, noise-free 16x16 stroke coverage from the same pre-logits feature
that the suite's linear probe reads. The auxiliary loss keeps that feature an informative description of the
strokes, and it helped both objectives here: with the classifier alone (--recon-weight 0, otherwise the same)
held-out synthetic accuracy was 0.256 instead of 0.326, and a quick logistic-regression probe on digits
(coarser than the suite's) scored 90.4% test instead of 93.7% (random init: 85.0% on that probe).

The saved file holds the backbone only (head.weight and head.bias removed; the suite adds a zero head per task),
float32, about 3.2 MB, with one metadata entry "pretrain_demo" (the settings, as sorted JSON).

Determinism: torch.manual_seed(seed), numpy default_rng, torch.use_deterministic_algorithms(True), a fixed number
of torch threads (--threads, default 1). One thread is the default because the sums of a multi-threaded CPU
kernel split differently with the thread count (so the weights and the sha256 would depend on it), and because on
a shared 2-core machine two threads ran 2-7x slower than one whenever another process held a core. Two runs here
gave the same file byte for byte; another CPU family or torch build may give slightly different floats and so a
different sha256 (update the registry's sha256 if you regenerate the file).

The shipped file was made with (torch 2.15.0, timm 1.0.31, numpy 2.4.6; 2-core Xeon shared with other jobs):

    python scripts/pretrain_demo.py --output transfer_eval/weights/vit_demo_shapes.safetensors

which took 2 min 27 s wall clock (143 s training) and printed: held-out synthetic accuracy 0.326 (93 classes,
chance 0.011); sha256 af2cf3f94ba490ad16d6c816c99a6f1291e8f8ffee88961b4434fc0a94dee349 (3,212,864 bytes).
On digits (`transfer-eval run -c vit_demo,vit_demo_shapes -t digits -m linear,attention`), test top-1:
linear 87.38% (vit_demo, random init) -> 93.88% (vit_demo_shapes), val 86.80% -> 95.20%; attention 96.47% ->
96.47% (its 400 steps of tuning the attention layers close the gap on this easy task).

    python scripts/pretrain_demo.py --output FILE [--steps 800] [--seed 0] [--threads 1] [--recon-weight 10]
    python scripts/pretrain_demo.py --preview grid.png    # 8 images of each class, one per row
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# The synthetic data: every image is drawn from its own generator, numpy's default_rng([seed, index]), so image
# `index` of `seed` is the same whatever the batch it is drawn in.

SIZE = 16  # the model's input size
CANVAS = SIZE  # strokes are rendered at 16 px with analytic anti-aliasing (coverage from the distance to the pen)
_YY, _XX = np.meshgrid((np.arange(CANVAS) + 0.5) / CANVAS, (np.arange(CANVAS) + 0.5) / CANVAS, indexing="ij")
_GRID = np.stack([_XX.ravel(), _YY.ravel()], 1).astype(np.float32)  # (CANVAS*CANVAS, 2) pixel centres in [0, 1]


def _arc(cx, cy, rx, ry, a0, a1, n=None):
    n = n or max(3, int(abs(a1 - a0) / (2 * math.pi) * 24) + 2)
    a = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


def _bezier(p0, p1, p2, n=10):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)


def _seg(*pts):
    return np.asarray(pts, dtype=np.float64)


def _rot(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


# Shape classes. Each draws strokes (polylines, in a local frame of about [-1, 1]^2) from an rng and returns
# (strokes, rotation): rotation "any" turns the shape freely, a number caps the random tilt (radians) for classes
# whose orientation is what defines them. A stroke of one point is a dot; its thickness factor makes it a blob.
def _line(angle):
    def f(r):
        L = r.uniform(0.6, 1.0)
        return [_seg((-L, 0), (L, 0)) @ _rot(angle).T], 0.2

    return f


def _ring(r):
    return [_arc(0, 0, 0.8, 0.8, 0, 2 * math.pi)], "any"


def _ellipse(r):
    e = r.uniform(0.35, 0.65)
    return [_arc(0, 0, 0.9, 0.9 * e, 0, 2 * math.pi)], "any"


def _arc_open(r):
    span = r.uniform(0.9, 1.5) * math.pi
    return [_arc(0, 0, 0.8, 0.8, -span / 2, span / 2)], "any"


def _s_curve(r):
    top = _arc(0, 0.45, 0.45, 0.45, math.radians(20), math.radians(270))
    bottom = _arc(0, -0.45, 0.45, 0.45, math.radians(90), math.radians(-200))
    return [np.concatenate([top, bottom[1:]])], "any"


def _spiral(r):
    a = np.linspace(0, r.uniform(3.0, 4.5) * math.pi, 40)
    rad = 0.1 + 0.8 * a / a[-1]
    return [np.stack([rad * np.cos(a), rad * np.sin(a)], 1)], "any"


def _plus(r):
    return [_seg((-0.9, 0), (0.9, 0)), _seg((0, -0.9), (0, 0.9))], 0.25


def _x(r):
    return [_seg((-0.8, -0.8), (0.8, 0.8)), _seg((-0.8, 0.8), (0.8, -0.8))], 0.25


def _corner(r):
    return [_seg((-0.8, -0.8), (-0.8, 0.8), (0.8, 0.8))], "any"


def _tee(r):
    return [_seg((-0.9, -0.8), (0.9, -0.8)), _seg((0, -0.8), (0, 0.9))], "any"


def _chevron(r):
    w = r.uniform(0.4, 0.9)
    return [_seg((-w, -0.8), (0, 0.8), (w, -0.8))], "any"


def _triangle(r):
    return [_seg((-0.85, 0.7), (0.85, 0.7), (0, -0.8), (-0.85, 0.7))], "any"


def _square(r):
    return [_seg((-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75), (-0.75, -0.75))], "any"


def _zigzag(r):
    k = int(r.integers(3, 6))
    xs = np.linspace(-0.9, 0.9, k + 1)
    ys = np.where(np.arange(k + 1) % 2 == 0, -0.5, 0.5)
    return [np.stack([xs, ys], 1)], "any"


def _wave(r):
    x = np.linspace(-0.9, 0.9, 30)
    return [np.stack([x, 0.45 * np.sin(x * math.pi * r.uniform(1.2, 2.2) + r.uniform(0, 2 * math.pi))], 1)], "any"


def _parallel(r):
    g = r.uniform(0.3, 0.6)
    return [_seg((-0.8, -g), (0.8, -g)), _seg((-0.8, g), (0.8, g))], "any"


def _eight(r):
    return [_arc(0, -0.45, 0.42, 0.45, 0, 2 * math.pi), _arc(0, 0.45, 0.48, 0.45, 0, 2 * math.pi)], 0.3


def _loop_tail(r):
    return [_arc(0, -0.35, 0.5, 0.5, 0, 2 * math.pi), _seg((0.5, -0.35), (0.5 + r.uniform(-0.3, 0.1), 0.95))], "any"


def _hook(r):
    return [np.concatenate([_seg((0.5, -0.9), (0.5, 0.4)), _arc(0.0, 0.4, 0.5, 0.45, 0, math.pi)])], "any"


def _asterisk(r):
    a0 = r.uniform(0, math.pi)
    return [_seg((-0.9, 0), (0.9, 0)) @ _rot(a0 + k * math.pi / 3).T for k in range(3)], "any"


def _dot(r):
    return [(_seg((0, 0)), r.uniform(2.5, 5.0))], "any"


def _two_rings(r):
    return [_arc(-0.5, 0, 0.4, 0.4, 0, 2 * math.pi), _arc(0.5, 0, 0.4, 0.4, 0, 2 * math.pi)], "any"


def _hash(r):
    return [
        _seg((-0.9, -0.35), (0.9, -0.35)),
        _seg((-0.9, 0.35), (0.9, 0.35)),
        _seg((-0.35, -0.9), (-0.35, 0.9)),
        _seg((0.35, -0.9), (0.35, 0.9)),
    ], 0.3


def _scribble(r):
    steps = r.normal(0, 0.35, (12, 2)).cumsum(0)
    steps -= steps.mean(0)
    return [steps / max(1.0, np.abs(steps).max())], "any"


SHAPES = {
    "line_horizontal": _line(0.0),
    "line_vertical": _line(math.pi / 2),
    "line_diagonal_up": _line(-math.pi / 4),
    "line_diagonal_down": _line(math.pi / 4),
    "ring": _ring,
    "ellipse": _ellipse,
    "arc": _arc_open,
    "s_curve": _s_curve,
    "spiral": _spiral,
    "plus": _plus,
    "cross_x": _x,
    "corner": _corner,
    "tee": _tee,
    "chevron": _chevron,
    "triangle": _triangle,
    "square": _square,
    "zigzag": _zigzag,
    "wave": _wave,
    "parallel_lines": _parallel,
    "figure_eight": _eight,
    "loop_with_tail": _loop_tail,
    "hook": _hook,
    "asterisk": _asterisk,
    "dot": _dot,
    "two_rings": _two_rings,
    "hash": _hash,
    "scribble": _scribble,
}

NUM_GLYPHS = 64  # random stroke glyphs, each a class (see _glyph_prototypes)
TEXTURES = ("stripes", "checker")


def _glyph_prototypes(seed: int, n: int = NUM_GLYPHS) -> list[list[np.ndarray]]:
    """`n` random glyphs of 1-3 strokes: quadratic curves or polylines between points of a tall 3x5 lattice."""
    r = np.random.default_rng([seed, 0x61797068])
    lat = np.array([(x, y) for x in (-0.6, 0.0, 0.6) for y in (-0.9, -0.45, 0.0, 0.45, 0.9)])
    protos = []
    for _ in range(n):
        strokes = []
        for _ in range(int(r.integers(1, 4))):
            a, b, c = lat[r.choice(len(lat), 3, replace=False)] + r.normal(0, 0.08, (3, 2))
            if r.random() < 0.5:
                strokes.append(_bezier(a, c + r.normal(0, 0.4, 2), b))
            else:
                strokes.append(np.stack([a, c, b]) if r.random() < 0.5 else np.stack([a, b]))
        protos.append(strokes)
    return protos


def class_names(num_glyphs: int = NUM_GLYPHS) -> list[str]:
    return list(SHAPES) + list(TEXTURES) + [f"glyph_{i:02d}" for i in range(num_glyphs)]


def _render_strokes(strokes, half_width: float) -> np.ndarray:
    """Anti-aliased coverage (CANVAS x CANVAS, 0..1) of polylines in canvas coordinates ([0, 1]^2)."""
    gx, gy = _GRID[:, 0:1], _GRID[:, 1:2]
    dist = np.full(len(_GRID), np.inf, np.float32)
    for pts, w in strokes:
        pts = np.asarray(pts, np.float32)
        a, b = (pts[:-1], pts[1:]) if len(pts) > 1 else (pts, pts)
        abx, aby = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
        apx, apy = gx - a[:, 0], gy - a[:, 1]  # (pixels, segments)
        t = np.clip((apx * abx + apy * aby) / np.maximum(abx * abx + aby * aby, 1e-9), 0.0, 1.0)
        dx, dy = apx - t * abx, apy - t * aby
        d = np.sqrt((dx * dx + dy * dy).min(1))
        dist = np.minimum(dist, d - half_width * (w - 1.0))
    return np.clip((half_width - dist) * CANVAS + 0.5, 0.0, 1.0).reshape(CANVAS, CANVAS)


def _texture(kind: str, r) -> np.ndarray:
    ang, freq, phase = r.uniform(0, math.pi), r.uniform(2.5, 6.0), r.uniform(0, 2 * math.pi)
    u = _XX * math.cos(ang) + _YY * math.sin(ang)
    if kind == "stripes":
        return (np.sin(2 * math.pi * freq * u + phase) > r.uniform(-0.3, 0.3)).astype(np.float32)
    v = -_XX * math.sin(ang) + _YY * math.cos(ang)
    return ((np.sin(2 * math.pi * freq * u + phase) * np.sin(2 * math.pi * freq * v)) > 0).astype(np.float32)


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Bilinear 2x upscaling with half-pixel centres and clamped edges (PIL's and torchvision's bilinear)."""

    def one(a, axis):
        prev = np.concatenate([np.take(a, [0], axis), np.take(a, np.arange(a.shape[axis] - 1), axis)], axis)
        nxt = np.concatenate([np.take(a, np.arange(1, a.shape[axis]), axis), np.take(a, [-1], axis)], axis)
        even, odd = 0.75 * a + 0.25 * prev, 0.75 * a + 0.25 * nxt
        return np.stack([even, odd], axis + 1).reshape(*a.shape[:axis], -1, *a.shape[axis + 1 :])

    return one(one(a, 0), 1)


def _draw(label: int, r, protos) -> np.ndarray:
    """One SIZE x SIZE grey image (float32, 0..1) of class `label`."""
    names = class_names(len(protos))
    name = names[label]
    if name in TEXTURES:
        cov = _texture(name, r)
        width = 0.0
    else:
        if name in SHAPES:
            strokes, rot = SHAPES[name](r)
            tilt = r.uniform(-math.pi, math.pi) if rot == "any" else r.uniform(-rot, rot)
        else:  # a glyph: its strokes, each point jittered (an elastic-ish deformation); upright within 15 degrees
            strokes = [s + r.normal(0, 0.07, s.shape) for s in protos[label - len(SHAPES) - len(TEXTURES)]]
            tilt = r.uniform(-0.26, 0.26)
        strokes = [s if isinstance(s, tuple) else (s, 1.0) for s in strokes]
        scale = r.uniform(0.22, 0.44)
        aspect = math.exp(r.uniform(-0.25, 0.25))
        shear = r.uniform(-0.3, 0.3)
        m = _rot(tilt) @ np.array([[scale * aspect, shear * scale], [0.0, scale / aspect]])
        centre = 0.5 + r.uniform(-0.12, 0.12, 2)
        strokes = [(np.asarray(p) @ m.T + centre, w) for p, w in strokes]
        width = r.uniform(0.025, 0.075)  # half the pen width, as a fraction of the image (pen 0.8 to 2.4 px at 16 px)
        cov = _render_strokes(strokes, width)
    if r.random() < 0.3:  # clutter: a short stray stroke or a speck
        p = r.uniform(0.05, 0.95, (2, 2)) if r.random() < 0.5 else r.uniform(0.05, 0.95, (1, 2))
        if len(p) == 2:
            p[1] = p[0] + (p[1] - p[0]) * 0.25
        cov = np.maximum(cov, 0.7 * _render_strokes([(p, 1.0)], max(width, 0.03) * 0.7))
    fg, bg = r.uniform(0.6, 1.0), r.uniform(0.0, 0.25)
    if r.random() < 0.15:  # dark on light now and then
        fg, bg = 1.0 - fg, 1.0 - bg
    img = bg + (fg - bg) * cov
    if r.random() < 0.6:  # the digits' path: 2x2 boxes down to 8 px, grey levels 0..16, bilinear back up to 16 px
        small = img.reshape(8, 2, 8, 2).mean((1, 3))
        if r.random() < 0.5:
            small = np.round(small * 16) / 16
        img = _upsample2(small)
    img = img + r.normal(0, r.uniform(0, 0.08), img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), cov.astype(np.float32)


def synth_images(
    n: int, seed: int = 0, start: int = 0, num_glyphs: int = NUM_GLYPHS, protos=None, clean: bool = False
) -> tuple[np.ndarray, ...]:
    """Images `start` .. `start + n - 1` of `seed`: (n, 16, 16) float32 in [0, 1], and int64 labels.

    Deterministic: image i is drawn from numpy's default_rng([seed, i]) alone, its class uniform over
    class_names(num_glyphs); the glyph classes come from default_rng([seed, ...]) too.
    """
    protos = _glyph_prototypes(seed, num_glyphs) if protos is None else protos
    k = len(SHAPES) + len(TEXTURES) + len(protos)
    images = np.empty((n, SIZE, SIZE), np.float32)
    covers = np.empty((n, SIZE, SIZE), np.float32)
    labels = np.empty(n, np.int64)
    for j in range(n):
        r = np.random.default_rng([seed, start + j])
        labels[j] = r.integers(k)
        images[j], covers[j] = _draw(int(labels[j]), r, protos)
    return (images, labels, covers) if clean else (images, labels)


# --------------------------------------------------------------------------------------------------------------
# Training

ARCH = "vit_small_patch16_224"
MODEL_ARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4}


def _as_input(images: np.ndarray):
    """Grey (n, 16, 16) in [0, 1] -> the model's input: RGB, normalised with mean 0.5 and std 0.5 (as vit_demo's)."""
    import torch

    return torch.from_numpy(images).sub(0.5).div(0.5)[:, None].expand(-1, 3, -1, -1).contiguous()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, help="the .safetensors file to write (required unless --preview)")
    ap.add_argument("--steps", type=int, default=800, help="optimiser steps (default 800)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data, the glyph classes and the init (default 0)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument(
        "--recon-weight",
        type=float,
        default=10.0,
        help="weight of the auxiliary loss, the MSE of rebuilding the clean strokes from the pre-logits "
        "feature (default 10; 0 trains the classifier alone)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the weights, hence the sha256, depend on it)",
    )
    ap.add_argument("--preview", type=Path, help="write a PNG grid of 8 images per class instead of training")
    args = ap.parse_args(argv)
    if not args.output and not args.preview:
        ap.error("--output is required")

    import timm
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    protos = _glyph_prototypes(args.seed)
    names = class_names(len(protos))
    if args.preview:
        from PIL import Image

        imgs, labels = synth_images(16 * len(names), args.seed, protos=protos)
        rows = [
            np.concatenate(
                list(imgs[labels == c][:8])
                + [np.zeros((SIZE, SIZE), np.float32)] * (8 - min(8, int((labels == c).sum()))),
                1,
            )
            for c in range(len(names))
        ]
        grid = np.concatenate([np.pad(row, ((1, 1), (0, 0))) for row in rows], 0)
        Image.fromarray((grid * 255).astype(np.uint8)).resize(
            (grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST
        ).save(args.preview)
        print(
            f"wrote {args.preview}: {len(names)} classes, one per row ({', '.join(names[: len(SHAPES) + 2])}, "
            f"glyph_00 .. glyph_{len(protos) - 1:02d})"
        )
        return

    t0 = time.time()
    model = timm.create_model(ARCH, pretrained=False, num_classes=len(names), **MODEL_ARGS)
    width = MODEL_ARGS["embed_dim"]
    decoder = torch.nn.Sequential(torch.nn.Linear(width, 256), torch.nn.GELU(), torch.nn.Linear(256, SIZE * SIZE))
    params = list(model.named_parameters()) + [("decoder." + n, p) for n, p in decoder.named_parameters()]
    no_wd = lambda n, p: p.ndim < 2 or "pos_embed" in n or "token" in n  # noqa: E731  biases, norms, embeddings
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in params if not no_wd(n, p)], "weight_decay": args.weight_decay},
            {"params": [p for n, p in params if no_wd(n, p)], "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    warmup = max(1, args.steps // 20)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, args.steps - warmup)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else cosine(s))
    print(
        f"pretraining {ARCH} {MODEL_ARGS} on {len(names)} synthetic classes: {args.steps} steps of "
        f"{args.batch_size}, seed {args.seed}, {args.threads} thread(s)",
        flush=True,
    )
    model.train()
    ema = {}
    for step in range(args.steps):
        x, y, clean = synth_images(args.batch_size, args.seed, start=step * args.batch_size, protos=protos, clean=True)
        x, y = _as_input(x), torch.from_numpy(y)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.head(feats)
        ce = F.cross_entropy(logits, y, label_smoothing=0.1)
        mse = F.mse_loss(decoder(feats), torch.from_numpy(clean).reshape(len(clean), -1))
        loss = ce + args.recon_weight * mse if args.recon_weight else ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        sched.step()
        for k, v in (("ce", ce.item()), ("mse", mse.item()), ("acc", (logits.argmax(1) == y).float().mean().item())):
            ema[k] = 0.98 * ema[k] + 0.02 * v if k in ema else v
        if step % 100 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  ce {ema['ce']:.3f}  mse {ema['mse']:.4f}  train acc {ema['acc']:.3f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:.0f} s",
                flush=True,
            )

    model.eval()
    xv, yv = synth_images(1000, args.seed, start=10**9, protos=protos)  # beyond every training index
    with torch.no_grad():
        acc = float((model(_as_input(xv)).argmax(1).numpy() == yv).mean())
    print(f"held-out synthetic accuracy {acc:.3f} ({len(names)} classes, chance {1 / len(names):.3f})")

    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    info = {
        "model": ARCH,
        "model_args": MODEL_ARGS,
        "classes": len(names),
        "steps": args.steps,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "recon_weight": args.recon_weight,
        "threads": args.threads,
        "script": "scripts/pretrain_demo.py",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key: safetensors writes its metadata map in no fixed order, which would change the sha256.
    save_file(state, str(args.output), metadata={"pretrain_demo": json.dumps(info, sort_keys=True)})
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(
        f"wrote {args.output}: {args.output.stat().st_size:,} bytes, {len(state)} float32 tensors (no head), "
        f"{time.time() - t0:.0f} s"
    )
    print(f"sha256 {digest}")


if __name__ == "__main__":
    main()
