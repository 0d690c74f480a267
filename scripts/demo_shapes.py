"""The demo's pretraining data: procedurally drawn stroke images (shapes, textures, glyphs), from numpy alone.

Read by scripts/pretrain_demo.py, whose docstring says what `synth_images` draws and why.
"""

from __future__ import annotations

import math

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

NUM_GLYPHS = 64  # random stroke glyphs, each a class (see glyph_prototypes)
TEXTURES = ("stripes", "checker")


def glyph_prototypes(seed: int, n: int = NUM_GLYPHS) -> list[list[np.ndarray]]:
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
    protos = glyph_prototypes(seed, num_glyphs) if protos is None else protos
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
