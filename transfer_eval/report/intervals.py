"""95% intervals for the leaderboard's cells and group means: how far a number could move if the test images (and
the seeds) were drawn again.

- One seed, a share of the test images (top-1, top-5): the Wilson score interval of k right answers out of the
  run's n test images (scipy's `binomtest(k, n).proportion_ci(method="wilson")`, no continuity correction). It
  stays inside [0, 1] and keeps its coverage near 0 and 1 and for small n, where the normal (Wald) interval
  does not. One seed of balanced top-1, ECE or NLL has none: they are not a share of the images.
- Several seeds: the Student-t interval of the mean over the K seeds, mean ± t(0.975, K-1) x std / sqrt(K)
  (std with ddof=1): the seed-to-seed spread, for any metric; clipped to the metric's range (a share: [0, 1]; NLL
  at 0), which two or three seeds' t interval can overrun.
- A group mean (a mean of task cells with weights w_t: 1/T over T tasks; VTAB-1k's mean of its groups' means,
  1/(P x T_p)): each task's standard error is read off its own 95% interval, se_t = (high - low) / (2 x 1.96),
  the tasks are independent (their test sets are), so the mean's interval is mean ± 1.96 x sqrt(sum w_t^2 se_t^2),
  clipped to the metric's range.
  It covers drawing these tasks' test images (and seeds) again, not choosing other tasks: every row of a
  leaderboard is measured on the same tasks, so the spread between tasks says nothing about which row is
  better, and a t interval over the tasks' accuracies would be wide mostly because the tasks differ in
  difficulty. A group mean with a task without an interval has none.
"""

from __future__ import annotations

import math

import numpy as np

from transfer_eval.report import metrics

LEVEL = 0.95
Z = 1.959963984540054  # scipy.stats.norm.ppf(0.975)

WILSON, STUDENT_T = "wilson", "t"


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def student_t(values, level: float = LEVEL) -> tuple[float, float]:
    """The Student-t interval of the mean of `values` (two or more)."""
    from scipy.stats import t

    v = np.asarray(values, np.float64)
    half = float(t.ppf((1 + level) / 2, len(v) - 1)) * float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return float(v.mean()) - half, float(v.mean()) + half


def kind(cell) -> str | None:
    """Which interval a cell (report.leaderboard.Cell) has: WILSON, STUDENT_T or None."""
    values = cell.values
    if len(values) > 1:
        return STUDENT_T
    if len(values) == 1 and metrics.get(cell.metric).proportion and _n_test(cell):
        return WILSON
    return None


def _n_test(cell) -> int | None:
    run = next(r for r in cell.runs if metrics.value(r, metrics.get(cell.metric)) is not None)
    return run.n_test or None


def cell(c) -> tuple[float, float] | None:
    """A cell's 95% interval (None where it has none, or no cell)."""
    if c is None:
        return None
    how = kind(c)
    if how == STUDENT_T:
        lo, hi = student_t(c.values)
        return max(lo, 0.0), min(hi, metrics.get(c.metric).high)
    if how == WILSON:
        n = _n_test(c)
        return wilson(round(c.values[0] * n), n)
    return None


def weights(row, column: str) -> dict[str, float]:
    """The weight of each task in a row's mean column (report.leaderboard.Row): the parts of VTAB-1k count equally
    in its mean of groups, the tasks in every other mean."""
    g = row.group
    if column in dict(g.parts):
        tasks = dict(g.parts)[column]
        return {t: 1 / len(tasks) for t in tasks}
    if g.parts and (column == "mean_of_groups" or (column == "mean" and row.mean_rule == "groups")):
        return {t: 1 / (len(g.parts) * len(ts)) for _, ts in g.parts for t in ts}
    return {t: 1 / len(g.tasks) for t in g.tasks} if g.tasks else {}


def combined(row, column: str) -> tuple[float, float] | None:
    """The 95% interval of a row's mean column (the module's docstring: the tasks' standard errors combined)."""
    w = weights(row, column)
    if not w or row.value(column) is None:
        return None
    mean, var = 0.0, 0.0
    for task, weight in w.items():
        ci = cell(row.cells.get(task))
        if ci is None:
            return None
        mean += weight * row.cells[task].value
        var += (weight * (ci[1] - ci[0]) / (2 * Z)) ** 2
    half, high = Z * math.sqrt(var), metrics.get(row.cells[task].metric).high
    return max(mean - half, 0.0), min(mean + half, high)  # clipped to the metric's range, as a cell's t interval


def row_fields(row) -> dict:
    """What a row's json says of its means' intervals: `mean_ci_low`, `mean_ci_high` (and of the mean of groups),
    `part_means_ci` (part: [low, high] or None)."""
    out = {}
    for k in ("mean", "mean_of_groups"):
        ci = combined(row, k)
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = ci or (None, None)
    out["part_means_ci"] = {p: combined(row, p) for p in row.group.part_names}
    return out


def text(ci: tuple[float, float] | None, metric: str) -> str:
    """' [low, high]' (one decimal fewer than the value), '' without an interval."""
    if ci is None:
        return ""
    m = metrics.get(metric)
    return f" [{m.short(ci[0])}, {m.short(ci[1])}]"


def cell_fields(c) -> dict:
    """What a cell's json says of its interval: `ci_low`, `ci_high` (None where it has none) and which it is."""
    ci = cell(c)
    return {"ci_low": ci and ci[0], "ci_high": ci and ci[1], "ci": kind(c)}


def legend(metric: str, group_name: str) -> list[str]:
    m = metrics.get(metric)
    one = (
        "one seed: the Wilson score interval of the share right over the run's test images"
        if m.proportion
        else f"one seed: none ({m.name} is not a share of the test images)"
    )
    return [
        f"[low, high]: the 95% interval; {one}; several seeds: the Student-t interval of the mean over the seeds "
        f"(clipped to the metric's range). mean ({group_name}): each task's standard error read off its interval "
        "(half its width / 1.96), tasks independent: it covers drawing these tasks' test images (and seeds) again, "
        "not choosing other tasks."
    ]
