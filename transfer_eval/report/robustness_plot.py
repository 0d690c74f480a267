"""The effective-robustness plot: per shift set, top-1 on ImageNet-1k val against top-1 on the set, both on logit
axes, where the line is straight (report/robustness.py): the testbed's models grey, the line, and the leaderboard's
rows coloured by mode and labelled (above the line: effectively robust)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.report import robustness
from transfer_eval.report.leaderboard import Leaderboard
from transfer_eval.report.plots import DPI, _figure, _point, _save, check_plot_path, mode_colors, place_all

_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
PANEL = 4.6  # inches per panel, square


def check(lb: Leaderboard, path: str | Path):
    """Refuse, before anything is drawn, a file type the plot cannot be, or a leaderboard with no shift set."""
    check_plot_path(path)
    if not lb.robustness:
        raise UserError(
            f"--plot-robustness: no shift set among the task columns shown ({', '.join(lb.tasks)}); show one of "
            f"{', '.join(robustness.SHIFTS)} (-t), beside {robustness.X_TASK}'s results of the same runs"
        )


def _percent_axis(axis, lo: float, hi: float):
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    axis.set_major_locator(FixedLocator([t for t in _TICKS if lo <= t <= hi]))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}"))


def _panel(ax, lb: Leaderboard, task: str, colors: dict):
    line = lb.robustness[task]
    shift = robustness.SHIFTS[task]
    pts = []
    for row in lb.rows:
        e = row.robustness.get(task)
        if e is not None:
            pts.append((e.x, e.y, f"{_point(row)} ({100 * e.value:+.1f})", row.mode))
    xs = np.array([*line.x, *(p[0] for p in pts)])
    ys = np.array([*line.y, *(p[1] for p in pts)])
    lo_x, hi_x = robustness.logit([xs.min(), xs.max()])
    lo_y, hi_y = robustness.logit([ys.min(), ys.max()])
    pad_x, pad_y = 0.08 * (hi_x - lo_x) + 0.05, 0.08 * (hi_y - lo_y) + 0.05
    xlim = robustness.sigmoid([lo_x - pad_x, hi_x + pad_x])
    ylim = robustness.sigmoid([lo_y - pad_y, hi_y + pad_y])
    ax.set_xscale("logit")
    ax.set_yscale("logit")
    ax.scatter(line.x, line.y, s=7, color="#b5b5b5", lw=0, zorder=1, label=f"{line.n} {line.source}")
    grid = robustness.sigmoid(np.linspace(*robustness.logit(xlim), 200))
    ax.plot(grid, line.at(grid), color="#333", lw=1.2, zorder=2, label=f"line: a = {line.a:.3f}, b = {line.b:+.3f}")
    for mode in sorted({p[3] for p in pts}):
        sel = [p for p in pts if p[3] == mode]
        ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=30, color=colors[mode], label=mode, zorder=3)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    _percent_axis(ax.xaxis, *xlim)
    _percent_axis(ax.yaxis, *ylim)
    ax.set_xlabel(f"{robustness.X_TASK} top-1 % (logit scale)", fontsize=9)
    ax.set_ylabel(f"{task} top-1 % (logit scale)", fontsize=9)
    ax.set_title(f"{shift.label}: effective robustness in points", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left")
    if not pts:
        ax.text(0.5, 0.08, "no row has both results", ha="center", transform=ax.transAxes, color="#888", fontsize=8)
    ax.te_labels = pts  # placed by place_all, once the layout is final


def robustness_figure(lb: Leaderboard):
    """The plot's figure, drawn and labelled, not saved (the caller closes it)."""
    plt = _figure()
    tasks = list(lb.robustness)
    cols = min(3, len(tasks))
    nrows = -(-len(tasks) // cols)
    fig = plt.figure(figsize=(PANEL * cols, PANEL * nrows), dpi=DPI)
    colors = mode_colors({r.mode for r in lb.rows})
    for i, task in enumerate(tasks):
        _panel(fig.add_subplot(nrows, cols, i + 1), lb, task, colors)
    fig.tight_layout()
    place_all(fig)
    return fig


def plot_robustness(lb: Leaderboard, path: str | Path):
    """Val top-1 against each shift set's top-1 on logit axes: the testbed grey, the line, the rows by mode."""
    check(lb, path)
    plt = _figure()
    fig = robustness_figure(lb)
    _save(fig, path)
    plt.close(fig)
