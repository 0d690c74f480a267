"""Ties with the best: in each task column of a leaderboard, which cells cannot be told from the column's best.

The best is the cell with the best value of the metric shown among the cells measured on the column's usual test
examples (the `split_manifest` most of its cells have; the first row of the sort by checkpoint, mode and variant
where two are equal), so that a --limit run on a few images never leads a column. Every other cell of the column
is compared with it on the stored per-image
predictions: McNemar's exact test (report/paired.py, as `compare` does) on whether each test image's right
answer is among the first k predictions (`inference.hits`, so label sets count as the scoring does; k = 1 for
top-1, 5 for top-5), one run per side (the lowest seed both have, `paired.pick_runs`). The column's p-values are
corrected together with Holm's step-down method (the family: that column's comparisons with its best), and a
cell is *tied* where its adjusted p is at least ALPHA (0.05). A cell measured on other test examples than the
best (another `split_manifest`: a --limit run, another task version; or other labels) is *not compared*, which is
never tied; so is one without stored predictions. Balanced top-1, ECE and NLL have no ties: McNemar's test
decides a share of right answers, which they are not."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_eval.methods import inference
from transfer_eval.report import metrics
from transfer_eval.report.paired import ALPHA, mcnemar, pick_runs

BEST, TIED, NOT_TIED, NOT_COMPARED = "best", "tied", "not tied", "not compared"


@dataclass
class Tie:
    """How one cell stands against its column's best."""

    status: str  # BEST, TIED, NOT_TIED or NOT_COMPARED
    p_value: float | None = None  # McNemar's exact p against the best
    p_holm: float | None = None  # that p after Holm's correction over the column's comparisons
    b: int | None = None  # test images the best gets right and this cell wrong
    c: int | None = None  # the best wrong, this cell right
    seeds: tuple[int, int] | None = None  # the best's seed and this cell's, paired
    reason: str | None = None  # why not compared

    @property
    def tied_with_best(self) -> bool | None:
        """True for the best and the cells tied with it, False where they differ, None where not compared."""
        return {BEST: True, TIED: True, NOT_TIED: False}.get(self.status)


def holm(pvalues, alpha: float = ALPHA) -> list[float]:
    """Holm's step-down adjusted p-values (in the given order): the i-th smallest p times (m - i + 1), made
    non-decreasing, at most 1. A hypothesis is rejected where its adjusted p < alpha."""
    p = np.asarray(pvalues, np.float64)
    adjusted = np.empty_like(p)
    running = 0.0
    for i, j in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - i) * p[j]))
        adjusted[j] = running
    return adjusted.tolist()


def mark(lb, store, alpha: float = ALPHA) -> list[str]:
    """Set `tie` (a Tie, or None where the metric has no ties) on every cell of the leaderboard's task columns.
    Returns a note for each cell not compared, saying why."""
    k = metrics.get(lb.metric).hits_k
    predictions, notes = {}, []

    def hits(run):
        if run.run_id not in predictions:
            predictions[run.run_id] = store.predictions(run.run_id)
        stored = predictions[run.run_id]
        return None if stored is None else (stored[0], inference.hits(stored[0], stored[1], k))

    for task in lb.tasks:
        cells = [row.cells[task] for row in lb.rows if row.cells.get(task) is not None]
        for c in cells:
            c.tie = None
        cells = [c for c in cells if c.value is not None]
        if k is None or not cells:
            continue
        best = _best(cells, metrics.get(lb.metric).lower_better)
        best.tie = Tie(BEST)
        compared = []
        for c in cells:
            if c is not best:
                c.tie = _against(best, c, hits)
                if c.tie.status != NOT_COMPARED:
                    compared.append(c)
                else:
                    where = f"{c.checkpoint} / {c.label} / {task}"
                    notes.append(f"{where}: not compared with its column's best: {c.tie.reason}")
        for c, p in zip(compared, holm([c.tie.p_value for c in compared], alpha)):
            c.tie.p_holm = p
            c.tie.status = TIED if p >= alpha else NOT_TIED
    return notes


def _best(cells, lower_better: bool):
    """The best cell of those on the column's most common test split (of two as common, the better one's)."""
    splits = {}
    for c in cells:
        splits.setdefault(c.newest.split_manifest, []).append(c)

    def pick(group):
        return min(group, key=lambda c: c.value) if lower_better else max(group, key=lambda c: c.value)

    sign = -1 if lower_better else 1
    return max((pick(g) for g in splits.values()), key=lambda c: (len(splits[c.newest.split_manifest]), sign * c.value))


def _against(best, other, hits) -> Tie:
    """`other` paired with the column's `best` (its Holm-corrected status is set by `mark`)."""
    ra, rb, _ = pick_runs(best, other)
    tie = Tie(NOT_COMPARED, seeds=(ra.seed, rb.seed))
    if ra.split_manifest and rb.split_manifest and ra.split_manifest != rb.split_manifest:
        tie.reason = "other test examples (split_manifest differs)"
        return tie
    a, b = hits(ra), hits(rb)
    if a is None or b is None:
        tie.reason = "no per-image predictions stored"
        return tie
    if a[0].shape != b[0].shape or not np.array_equal(a[0], b[0]):
        tie.reason = "other test examples (labels differ)"
        return tie
    tie.b, tie.c, tie.p_value = mcnemar(a[1], b[1])
    tie.status = TIED  # until Holm's correction says otherwise
    return tie


def cell_fields(c) -> dict:
    """What a cell's json says of its tie: `tied_with_best` (True, False, or None: not compared or no ties for
    this metric), the status, McNemar's p against the best, Holm-adjusted, and why a cell was not compared."""
    t = c.tie
    if t is None:
        return {"tied_with_best": None, "tie": None, "p_vs_best": None, "p_vs_best_holm": None}
    out = {"tied_with_best": t.tied_with_best, "tie": t.status, "p_vs_best": t.p_value, "p_vs_best_holm": t.p_holm}
    if t.reason:
        out["tie_reason"] = t.reason
    return out


def tied(c) -> bool:
    """Whether a cell is shown bold (or marked): the best of its column, or tied with it."""
    return c is not None and c.tie is not None and bool(c.tie.tied_with_best)


def legend(metric: str) -> list[str]:
    m = metrics.get(metric)
    if m.hits_k is None:
        return [f"ties with the best: not marked for {m.name} (McNemar's test decides a share of right answers)."]
    what = "top-1" if m.hits_k == 1 else f"top-{m.hits_k}"
    return [
        "bold (markdown, latex, html) or ≈ (table): the best of its column, and every cell that cannot be told from "
        f"it: McNemar's exact test on the per-image {what} hits of the same test images (one run each, the lowest "
        f"seed both have), Holm-corrected over the column's comparisons; tied where the adjusted p >= {ALPHA}. "
        "Cells measured on other test examples than most of their column (a --limit run, another task version) "
        "are not compared: never tied, nor the best."
    ]
