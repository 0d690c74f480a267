"""Plots (matplotlib, headless): accuracy against params/task and training compute with the Pareto front, and the
comparison's forest plot."""

from __future__ import annotations

from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.report.compare import ALPHA, Comparison
from transfer_eval.report.leaderboard import Leaderboard

# ------------------------------------------------------------------------------------------------------ plots


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) that no other point beats: cost <= and accuracy >=, one strictly."""
    front = []
    for i, (ci, ai) in enumerate(points):
        if not any((cj <= ci and aj >= ai) and (cj < ci or aj > ai) for j, (cj, aj) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _scatter(ax, pts: list[tuple[float, float, str, str]], xlabel: str, title: str):
    """pts: (cost, accuracy %, label, mode)."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("top-1 %", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    pts = [p for p in pts if p[0] is not None and p[0] > 0 and p[1] is not None]
    if not pts:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
        return
    modes = sorted({p[3] for p in pts})
    colors = {m: f"C{i % 10}" for i, m in enumerate(modes)}
    for m in modes:
        sel = [p for p in pts if p[3] == m]
        ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=28, color=colors[m], label=m, zorder=3)
    front = pareto_front([(p[0], p[1]) for p in pts])
    fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="k", lw=1, alpha=0.6, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="k", lw=1.2, zorder=4)
    xs = [p[0] for p in pts]
    if max(xs) / min(xs) > 20:
        ax.set_xscale("log")
        ax.set_xlabel(xlabel + " (log scale)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.margins(x=0.08, y=0.12)
    ax.te_labels = [(p[0], p[1], p[2]) for p in pts]  # placed by place_all, once the layout is final


# offsets (points) tried for a label, nearest first: right, left, above, below, then further out
_OFFSETS = [(5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"), (-5, -3, "right", "top")]
_OFFSETS += [(0, 6, "center", "bottom"), (0, -6, "center", "top")]
_OFFSETS += [(dx * k, dy * k, ha, va) for k in (3, 5) for dx, dy, ha, va in _OFFSETS[:6]]


def place_all(fig):
    """Label the points of every scatter panel of `fig` (after tight_layout: the axes no longer move)."""
    for ax in fig.axes:
        if getattr(ax, "te_labels", None):
            place_labels(ax, ax.te_labels)


def place_labels(ax, pts: list[tuple[float, float, str]]):
    """Label each point where its text overlaps no other label, no point and stays inside the axes: each label
    tries the offsets of _OFFSETS in turn (measured on the drawn figure) and takes the first that fits, else the
    one that overlaps least inside the axes (with a thin connector when it had to move away)."""
    fig = ax.figure
    fig.canvas.draw()  # final limits and scales: text extents in display units
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    marks = [ax.transData.transform((x, y)) for x, y, _ in pts]
    r = 5.0 * fig.dpi / 72  # a marker's half-width in pixels
    taken = [(mx - r, my - r, mx + r, my + r) for mx, my in marks]
    legend = ax.get_legend()
    blocked = [] if legend is None else [tuple(legend.get_window_extent(renderer).extents)]

    def overlap(a, b) -> float:
        w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    def label(x, y, text, dx, dy, ha, va):
        far = abs(dx) + abs(dy) > 12  # moved away from its point: a thin connector shows whose it is
        arrow = {"arrowstyle": "-", "color": "#999", "lw": 0.5} if far else None
        return ax.annotate(
            text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=7, color="#333",
            arrowprops=arrow, annotation_clip=False,
        )  # fmt: skip

    for i in sorted(range(len(pts)), key=lambda i: (-pts[i][1], pts[i][0])):  # top first
        x, y, text = pts[i]
        own = taken[i]
        best = None
        for offset in _OFFSETS:
            t = label(x, y, text, *offset)
            e = t.get_window_extent(renderer)
            t.remove()
            ext = (e.x0, e.y0, e.x1, e.y1)
            inside = e.x0 >= box.x0 and e.x1 <= box.x1 and e.y0 >= box.y0 and e.y1 <= box.y1
            cost = (not inside, sum(overlap(ext, b) for b in taken + blocked if b is not own))
            if best is None or cost < best[0]:
                best = (cost, offset, ext)
            if cost == (False, 0):
                break
        label(x, y, text, *best[1])
        taken.append(best[2])


def _point(row) -> str:
    """A point's label: the checkpoint, and the variant where the mode has several (the colour is the mode)."""
    return f"{row.checkpoint} {row.variant}".strip()


def _cost_panels(lb: Leaderboard) -> list[tuple[str, list, list, bool]]:
    """(title, points vs params/task, points vs train compute, is the group) per task shown, then the group."""
    panels = []
    for t in lb.tasks:
        pp, pc = [], []
        for r in lb.rows:
            c = r.cells.get(t)
            if c is None:
                continue
            pp.append((c.newest.params_per_task, 100 * c.top1, _point(r), r.mode))
            pc.append((c.cost("train_pflops_total"), 100 * c.top1, _point(r), r.mode))
        panels.append((t, pp, pc, False))
    if lb.group.tasks and (len(lb.group.tasks) > 1 or list(lb.group.tasks) != lb.tasks):
        rows = [r for r in lb.rows if r.complete]
        panels.append(
            (
                f"mean over {lb.group.name} (complete rows only)",
                [(r.params_per_task, 100 * r.mean, _point(r), r.mode) for r in rows],
                [(r.train_pflops, 100 * r.mean, _point(r), r.mode) for r in rows],
                True,
            )
        )
    return panels


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


PANEL_HEIGHT = 3.4


def _draw_cost_panels(fig, gs, first_row: int, panels):
    for i, (title, pp, pc, group) in enumerate(panels):
        a1, a2 = fig.add_subplot(gs[first_row + i, 0]), fig.add_subplot(gs[first_row + i, 1])
        _scatter(
            a1, pp, "params per task" + (", mean over the group" if group else ""), f"{title}: accuracy vs params/task"
        )
        _scatter(
            a2,
            pc,
            "training PFLOPs" + (", sum over the group" if group else ""),
            f"{title}: accuracy vs training compute",
        )


def plot_leaderboard(lb: Leaderboard, path: str | Path):
    """Accuracy against params/task and against training compute, per task and for the group, Pareto front
    marked (up and to the left is better)."""
    plt = _figure()
    panels = _cost_panels(lb)
    fig = plt.figure(figsize=(11, PANEL_HEIGHT * len(panels)))
    _draw_cost_panels(fig, fig.add_gridspec(len(panels), 2), 0, panels)
    fig.tight_layout()
    place_all(fig)
    _save(fig, path)
    plt.close(fig)


def _forest_label(r) -> str:
    return f"{r.task} / {r.label}"


def plot_compare(cmp: Comparison, path: str | Path, lb: Leaderboard | None = None):
    """A forest plot: delta (B - A, pp) with its 95% CI per task and mode, filled where p < 0.05; below it,
    where `lb` is given, the compared rows' accuracy against params/task and training compute."""
    plt = _figure()
    rows = [r for r in cmp.rows if r.delta is not None]
    labels = list(dict.fromkeys(_forest_label(r) for r in rows))
    panels = _cost_panels(lb) if lb is not None else []
    forest_h = 1.2 + 0.45 * max(1, len(labels)) * max(1, len(cmp.others)) ** 0.5
    fig = plt.figure(figsize=(11, forest_h + PANEL_HEIGHT * len(panels)))
    gs = fig.add_gridspec(1 + len(panels), 2, height_ratios=[forest_h] + [PANEL_HEIGHT] * len(panels))
    ax = fig.add_subplot(gs[0, :])
    width = 0.7 / max(1, len(cmp.others))
    for k, other in enumerate(cmp.others):
        sel = [r for r in rows if r.checkpoint_b == other]
        for r in sel:
            y = labels.index(_forest_label(r)) + (k - (len(cmp.others) - 1) / 2) * width
            color = f"C{k % 10}"
            if r.ci_low is not None:
                ax.plot([100 * r.ci_low, 100 * r.ci_high], [y, y], color=color, lw=2)
            sig = r.p_value is not None and r.p_value < ALPHA
            ax.scatter(
                [100 * r.delta],
                [y],
                s=40,
                color=color if sig else "white",
                edgecolors=color,
                zorder=3,
                label=other if r is sel[0] else None,
            )
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"top-1 difference against {cmp.reference}", fontsize=10)
    ax.set_xlabel(
        f"delta top-1 (pp), B - A, A = {cmp.reference}; bar: 95% bootstrap CI; filled: p < {ALPHA}", fontsize=9
    )
    ax.grid(True, axis="x", alpha=0.3)
    if rows:
        ax.legend(fontsize=8, title="B", title_fontsize=8)
    _draw_cost_panels(fig, gs, 1, panels)
    fig.tight_layout()
    place_all(fig)
    _save(fig, path)
    plt.close(fig)


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_plot_path(path: str | Path):
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"--plot {path}: name a .png, .svg or .pdf file")


def _save(fig, path):
    from transfer_eval import io

    path = Path(path)
    check_plot_path(path)
    with io.replacing(path, path.suffix) as tmp:  # savefig takes the format from the suffix
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def plot_curves(result, path: str | Path):
    """A fine-tuning run's training curves: each phase's loss (the mean of every few steps) against the step,
    each learning rate tried with its val top-1 in the legend, the retraining on train+val dashed; the learning
    rate schedule below."""
    curves = (result.curves or {}).get("phases") or {}
    if not curves:
        raise UserError(
            f"run {result.run_id} ({result.mode}) has no training curves: only fine-tuning runs store them, "
            "from this version of transfer-eval on"
        )
    check_plot_path(path)
    plt = _figure()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.4), sharex=True, height_ratios=[3, 1.3])
    for i, (name, c) in enumerate(curves.items()):
        acc = f", val top-1 {100 * c['val_top1']:.2f}%" if c.get("val_top1") is not None else ""
        style = "--" if name == "retrain" else "-"
        label = ("retrain on train+val, lr " + f"{c['base_lr']:g}") if name == "retrain" else f"{name}{acc}"
        top.plot(c["step"], c["loss"], style, color=f"C{i % 10}", lw=1.3, label=label)
        bottom.plot(c["step"], c["lr"], style, color=f"C{i % 10}", lw=1.2)
    losses = [v for c in curves.values() for v in c["loss"] if v > 0]
    if losses and max(losses) / min(losses) > 10:
        top.set_yscale("log")
    every = (result.curves or {}).get("every")
    top.set_ylabel(f"training loss (mean of every {every} steps)" if every else "training loss", fontsize=9)
    top.set_title(
        f"run {result.run_id}: {result.checkpoint} / {result.task} / {result.mode} / seed {result.seed}", fontsize=10
    )
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    bottom.set_ylabel("learning rate", fontsize=9)
    bottom.set_xlabel("optimizer step", fontsize=9)
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
