"""Effective robustness (Taori et al. 2020, "Measuring robustness to natural distribution shifts in image
classification", arXiv 2007.00644): how far a checkpoint's top-1 on a shifted ImageNet test set lies above the line
that standard models follow, plotted against their top-1 on ImageNet-1k val.

- The line, per shift set: logit(y) = a * logit(x) + b, least squares over a testbed's models whose x and y both lie
  strictly inside (0, 1); x is always the top-1 on the 1,000-class ImageNet-1k val (Taori et al.'s convention), y the
  set's own top-1 as the suite scores it (ImageNet-A and -R masked to their 200 classes, ObjectNet to its 113).
- The testbed (`--line testbed`, the default): timm's published results (testbeds/timm.csv: 1,556 (model, input
  size) rows) for ImageNet-v2, -Sketch, -A and -R; timm publishes none for ObjectNet, whose line is Taori et al.'s
  own: their testbed's standard-training models (testbeds/objectnet.csv, their line-fit rule). `--line stored`
  fits each line instead on the store's own `pretrained` results (at least MIN_STORED checkpoints with both).
- Effective robustness = y - sigmoid(a * logit(x) + b), x and y of the same checkpoint, mode, recipe and seed (the
  record's `model_of_run` pairs a companion result with the run that trained its model); a row's is the mean over
  its seeds. Stored and exported as fractions, like the accuracies; shown in points.

The leaderboard (report/leaderboard.py) carries one ER column per shift set shown, `<task>_effective_robustness`
(its sort key and csv field); compare (report/compare.py) the difference B - A; robustness_plot.py draws the lines.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.report import variants

X_TASK = "imagenet1k"  # the x of every line: ImageNet-1k val, all 1,000 classes
SUFFIX = "_effective_robustness"  # a shift set's ER column: <task>_effective_robustness
LINES = ("testbed", "stored")
MIN_STORED = 5  # checkpoints a stored line needs: a slope and an intercept from fewer swing with any one model
PAPER = "Taori et al. 2020, arXiv 2007.00644"
TESTBEDS = Path(__file__).resolve().parent / "testbeds"


@dataclass(frozen=True)
class Shift:
    task: str
    label: str
    testbed: str  # testbeds/<name>.csv
    column: str  # its column there (x is always `val`)


SHIFTS = {
    s.task: s
    for s in (
        Shift("imagenetv2_matched_frequency", "ImageNet-v2", "timm", "v2"),
        Shift("imagenet_sketch", "ImageNet-Sketch", "timm", "sketch"),
        Shift("imagenet_a", "ImageNet-A", "timm", "a"),
        Shift("imagenet_r", "ImageNet-R", "timm", "r"),
        Shift("objectnet", "ObjectNet", "objectnet", "objectnet"),
    )
}
_TESTBED_NAMES = {
    "timm": "models of timm's published results",
    "objectnet": "standard-training models of Taori et al.'s testbed",
}


def column(task: str) -> str:
    return task + SUFFIX


def logit(p):
    p = np.asarray(p, float)
    return np.log(p) - np.log1p(-p)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, float)))


def fit(x, y) -> tuple[float, float, int]:
    """(a, b, n): the least-squares line logit(y) = a * logit(x) + b over the n points with x and y (fractions)
    strictly inside (0, 1)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = (x > 0) & (x < 1) & (y > 0) & (y < 1)
    lx, ly = logit(x[keep]), logit(y[keep])
    if len(lx) < 2 or np.ptp(lx) == 0:
        raise UserError(f"an effective-robustness line needs two points of different accuracy; got {len(lx)}")
    dx = lx - lx.mean()
    a = float(np.dot(dx, ly - ly.mean()) / np.dot(dx, dx))
    return a, float(ly.mean() - a * lx.mean()), int(keep.sum())


@dataclass(frozen=True)
class Line:
    """A shift set's line and the points it was fitted on (fractions; `names`: each point's model)."""

    task: str
    a: float
    b: float
    source: str  # what the points are
    x: tuple = ()
    y: tuple = ()
    names: tuple = ()

    @property
    def n(self) -> int:
        return len(self.x)

    def at(self, x):
        """The line's top-1 on the set (a fraction) at val top-1 `x` (a fraction)."""
        return sigmoid(self.a * logit(x) + self.b)

    def describe(self) -> str:
        return f"{self.task}: a = {self.a:.3f}, b = {self.b:+.3f} over {self.n} {self.source}"

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "models": self.n, "source": self.source}


def _inside(p: float | None) -> bool:
    return p is not None and 0 < p < 1


@functools.lru_cache(maxsize=None)
def testbed(name: str) -> tuple[dict, tuple[dict, ...]]:
    """A shipped testbed: ({source, commit, date} from its header comments, its rows as dicts of strings)."""
    meta, body = {}, []
    for line in (TESTBEDS / f"{name}.csv").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, sep, value = line[1:].strip().partition(": ")
            if sep and key in ("source", "commit", "date"):
                meta[key] = value
        elif line.strip():
            body.append(line)
    return meta, tuple(csv.DictReader(body))


@functools.lru_cache(maxsize=None)
def testbed_line(task: str) -> Line:
    """`task`'s line fitted on its shipped testbed (timm's results; Taori et al.'s for ObjectNet)."""
    shift = SHIFTS[task]
    meta, rows = testbed(shift.testbed)
    pts = [
        (float(r["val"]) / 100, float(r[shift.column]) / 100, r["model"]) for r in rows if r["val"] and r[shift.column]
    ]
    pts = [p for p in pts if _inside(p[0]) and _inside(p[1])]
    a, b, _ = fit([p[0] for p in pts], [p[1] for p in pts])
    source = f"{_TESTBED_NAMES[shift.testbed]} ({meta.get('commit')}, {meta.get('date')})"
    return Line(task, a, b, source, *map(tuple, zip(*pts)))


# ------------------------------------------------------------------------------------------------ pairing


def _ok(r, include_limited: bool) -> bool:
    return r.status == "ok" and r.top1 is not None and (include_limited or r.limit_per_split is None)


class Partners:
    """The ImageNet-1k val results a shift set's results pair with: the run that trained the model, where the
    record names it (`model_of_run`: companion test sets), else the newest of the same checkpoint, weights, mode,
    seed and choices (recipe, resolution, precision: report/variants.py)."""

    def __init__(self, results):
        xs = [r for r in results if r.task == X_TASK and r.status == "ok" and r.top1 is not None]
        self.by_id = {r.run_id: r for r in xs}
        self.by_key: dict[tuple, list] = {}
        for r in xs:
            self.by_key.setdefault((r.checkpoint, r.mode, r.seed, r.weights_sha256), []).append(r)

    def of(self, y):
        named = self.by_id.get((y.selection or {}).get("model_of_run"))
        if named is not None:
            return named
        same = self.by_key.get((y.checkpoint, y.mode, y.seed, y.weights_sha256), [])
        mine = variants.choices(y)
        return max((x for x in same if variants.choices(x) == mine), key=lambda x: x.run_id, default=None)


@dataclass
class Effective:
    """A row's effective robustness on one set: the mean over its seeds paired with an ImageNet-1k val result
    (fractions), with the mean x and y it is measured at (where the plot draws it)."""

    values: list[float]
    x: float
    y: float

    @property
    def value(self) -> float:
        return float(np.mean(self.values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None


def effective(runs, partners: Partners, line: Line) -> Effective | None:
    """The effective robustness of a set's `runs` (one cell's seeds) against `line`; None where no run pairs."""
    pairs = []
    for y in runs:
        x = partners.of(y)
        if x is not None and _inside(x.top1):
            pairs.append((x.top1, y.top1))
    if not pairs:
        return None
    xs, ys = np.array(pairs).T
    return Effective([float(v) for v in ys - line.at(xs)], float(xs.mean()), float(ys.mean()))


# ------------------------------------------------------------------------------------------------ the lines


def stored_line(store, task: str, include_limited: bool = False) -> Line:
    """`task`'s line fitted on the store's `pretrained` results: one point per checkpoint and choices (the newest),
    where an ImageNet-1k val result pairs with it; refused with fewer than MIN_STORED checkpoints."""
    ys = [r for r in store.query(tasks=[task], modes=["pretrained"]) if _ok(r, include_limited)]
    partners = Partners(r for r in store.query(tasks=[X_TASK], modes=["pretrained"]) if _ok(r, include_limited))
    points: dict[tuple, tuple] = {}
    for y in sorted(ys, key=lambda r: r.run_id):
        x = partners.of(y)
        if x is not None and _inside(x.top1) and _inside(y.top1):
            points[(y.checkpoint, str(sorted(variants.choices(y).items())))] = (x.top1, y.top1, y.checkpoint)
    checkpoints = {k[0] for k in points}
    if len(checkpoints) < MIN_STORED:
        raise UserError(
            f"--line stored: the {task} line needs the pretrained results of at least {MIN_STORED} checkpoints on "
            f"both {X_TASK} and {task}; {store.path} has {len(checkpoints)}; run more (`transfer-eval run -c A,B,... "
            f"-t {X_TASK},{task} -m pretrained`) or use --line testbed"
        )
    pts = sorted(points.values())
    a, b, _ = fit([p[0] for p in pts], [p[1] for p in pts])
    return Line(task, a, b, "stored pretrained results", *map(tuple, zip(*pts)))


def lines(store, tasks, kind: str = "testbed", include_limited: bool = False) -> dict[str, Line]:
    """The line of each shift set among `tasks`, from the shipped testbed or the store's pretrained results."""
    if kind not in LINES:
        raise UserError(f"--line {kind!r}: use {' or '.join(LINES)}")
    shifts = [t for t in dict.fromkeys(tasks) if t in SHIFTS]
    if kind == "stored":
        return {t: stored_line(store, t, include_limited) for t in shifts}
    return {t: testbed_line(t) for t in shifts}


# ----------------------------------------------------------------------------------- leaderboard and compare


def attach(lb, results, found_lines: dict[str, Line]):
    """Each row's effective robustness on every shift set shown (`row.robustness`: task -> Effective | None) and
    the leaderboard's lines (`lb.robustness`); `results`: the stored results the rows were built from."""
    lb.robustness = dict(found_lines)
    if not found_lines:
        return
    partners = Partners(results)
    for row in lb.rows:
        row.robustness = {
            t: effective(row.cells[t].runs, partners, line) if row.cells.get(t) is not None else None
            for t, line in found_lines.items()
        }


def text(e: Effective | None, missing: str) -> str:
    if e is None:
        return missing
    return f"{100 * e.value:+.2f}" + (f" ± {100 * e.std:.2f} (n={e.n})" if e.n > 1 else "")


def row_fields(lb, row) -> dict:
    """A leaderboard row's json fields: each shown shift set's ER (a fraction, null where missing) and the lines."""
    return {
        "effective_robustness": {t: (row.robustness.get(t) and row.robustness[t].value) for t in lb.robustness},
        "effective_robustness_line": {t: line.to_dict() for t, line in lb.robustness.items()},
    }


def legend(lb) -> list[str]:
    if not lb.robustness:
        return []
    return [
        f"<set> ER: effective robustness ({PAPER}), the set's top-1 minus the line's at the row's {X_TASK} top-1 "
        f"(same mode, recipe and seed; mean over seeds), in points; missing without both results. Lines "
        f"logit(set top-1) = a logit({X_TASK} top-1) + b: "
        + "; ".join(line.describe() for line in lb.robustness.values())
        + "."
    ]


def add_differences(store, cmp, runs: dict, line: str = "testbed", include_limited: bool = False, modes=()):
    """Each compared row on a shift set: both sides' effective robustness (their runs' pairs with ImageNet-1k val)
    and d_effective_robustness = B - A; `runs`: run_id -> the compared results; `cmp.lines` the lines used."""
    cmp.lines = lines(store, [r.task for r in cmp.rows], line, include_limited)
    if not cmp.lines:
        return
    names = [cmp.reference, *cmp.others]
    partners = Partners(store.query(checkpoints=names, tasks=[X_TASK], modes=list(modes)))
    for row in cmp.rows:
        fitted = cmp.lines.get(row.task)
        if fitted is None:
            continue
        ea, eb = (effective([runs[i]], partners, fitted) for i in (row.run_a, row.run_b))
        row.er_a, row.er_b = ea and ea.value, eb and eb.value
        if ea is not None and eb is not None:
            row.d_effective_robustness = eb.value - ea.value


def compare_note(cmp) -> list[str]:
    if not getattr(cmp, "lines", None):
        return []
    return [
        f"d ER: B's effective robustness minus A's ({PAPER}), each against the line at its own {X_TASK} top-1 of "
        f"the same run's seed, in points; lines: " + "; ".join(line.describe() for line in cmp.lines.values())
    ]
