"""Plots (matplotlib, headless): accuracy against params/task and training compute with the Pareto front, and the
comparison's forest plot."""

from __future__ import annotations

import math
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


# One colour per mode in every panel and page of a report: the modes the suite ships have fixed colours; another
# mode takes the first colour its name's digest finds free among those left (so a report's modes never share one).
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]  # fmt: skip
_FIXED = ("linear", "attention", "full", "knn", "fewshot", "pretrained", "ffn", "bitfit", "lora", "ssf")
_FIXED += ("vpt_shallow", "vpt_deep", "adapter", "adaptformer")


def mode_colors(modes) -> dict[str, str]:
    """The colour of each mode: fixed for the modes the suite knows; another mode's is the colour its name's
    digest picks among those no known mode has (the next one free where two modes of a report pick one), so the
    same in every report. Give every mode a report shows, once: its panels then agree."""
    import hashlib

    modes = sorted(set(modes))
    colors = {m: _PALETTE[_FIXED.index(m)] for m in modes if m in _FIXED}
    spare = _PALETTE[len(_FIXED) :]
    for m in (m for m in modes if m not in colors):
        start = int(hashlib.sha256(m.encode()).hexdigest(), 16) % len(spare)
        order = spare[start:] + spare[:start] + _PALETTE[: len(_FIXED)]
        colors[m] = next((c for c in order if c not in colors.values()), spare[start])
    return colors


def _scatter(ax, pts: list[tuple[float, float, str, str]], xlabel: str, title: str, colors: dict | None = None):
    """pts: (cost, accuracy %, label, mode); `colors`: mode -> colour (mode_colors of the whole report). A cost of
    0 (k-NN's parameters, the pretrained mode's training) is drawn at 0: on a symmetric log axis where the other
    costs span a log scale."""
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("top-1 %", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    unmeasured = sum(1 for p in pts if p[1] is not None and p[0] is None)
    pts = [p for p in pts if p[0] is not None and p[0] >= 0 and p[1] is not None]
    ax.set_xlabel(xlabel + (f"; {unmeasured} rows without a measured cost not shown" if unmeasured else ""), fontsize=9)
    if not pts:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
        return
    modes = sorted({p[3] for p in pts})
    colors = {**mode_colors(modes), **(colors or {})}
    for m in modes:
        sel = [p for p in pts if p[3] == m]
        ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=28, color=colors[m], label=m, zorder=3)
    front = pareto_front([(p[0], p[1]) for p in pts])
    fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="k", lw=1, alpha=0.6, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="k", lw=1.2, zorder=4)
    positive = [p[0] for p in pts if p[0] > 0]
    if positive and max(positive) / min(positive) > 20:
        if len(positive) < len(pts):  # zeros too: linear from 0 up to the smallest cost, logarithmic above
            ax.set_xscale("symlog", linthresh=min(positive), linscale=0.4)
            decades = range(math.ceil(math.log10(min(positive))), math.ceil(math.log10(max(positive))) + 1)
            ax.set_xticks([0] + [10.0**k for k in decades])  # none inside the linear part: "0" stands clear
            ax.set_xlabel(ax.get_xlabel().replace(xlabel, xlabel + " (0, then log scale)"), fontsize=9)
        else:
            ax.set_xscale("log")
            ax.set_xlabel(ax.get_xlabel().replace(xlabel, xlabel + " (log scale)"), fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.margins(x=0.08, y=0.12)
    ax.te_labels = [(p[0], p[1], p[2], p[3]) for p in pts]  # placed by place_all, once the layout is final
    ax.te_front = list(zip(fx, fy))  # the Pareto line: labels keep clear of it


# offsets (points) tried for a label, nearest first: right, left, above, below, then further out
_OFFSETS = [(5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"), (-5, -3, "right", "top")]
_OFFSETS += [(0, 6, "center", "bottom"), (0, -6, "center", "top")]
_OFFSETS += [(dx * k, dy * k, ha, va) for k in (3, 5) for dx, dy, ha, va in _OFFSETS[:6]]


def _ring(radius: float) -> list[tuple[float, float, str, str]]:
    """Eight offsets `radius` points away, the text on the far side of each (for a number: small, placed anywhere
    around its point)."""
    out = []
    for k in range(8):
        a = math.radians(45 * k)
        dx, dy = radius * math.cos(a), radius * math.sin(a)
        ha = "left" if dx > 1 else "right" if dx < -1 else "center"
        va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
        out.append((round(dx, 1), round(dy, 1), ha, va))
    return out


_NUMBER_OFFSETS = [o for r in (7, 10, 14, 20, 30) for o in _ring(r)]
PAD = 1.5  # pixels kept clear around a label


def place_all(fig):
    """Label the points of every scatter panel of `fig` (after tight_layout: the axes no longer move). A label that
    finds no place clear of the points, the Pareto line, the legend and the other labels is a number instead (the
    same number for the same row in every panel), spelled out in a legend below the figure; one that finds no
    clear place even as a number is left out, and that legend says so."""
    numbers: dict[tuple[str, str], int] = {}  # (label, mode) -> its number
    left_out: dict[tuple[str, str], int] = {}
    for ax in fig.axes:
        if getattr(ax, "te_labels", None):
            place_labels(ax, ax.te_labels, numbers, left_out)
    lines = []
    if numbers:
        lines.append(
            "Numbered points: " + "; ".join(f"{n} {text} ({mode})" for (text, mode), n in numbers.items()) + "."
        )
    if left_out:
        lines.append(
            "Not labelled (no clear place, even for a number): "
            + "; ".join(f"{t} ({m}){f', in {k} panels' if k > 1 else ''}" for (t, m), k in left_out.items())
            + "."
        )
    if lines:
        import textwrap

        fig.canvas.draw()
        bottom = min(ax.get_tightbbox().transformed(fig.transFigure.inverted()).y0 for ax in fig.axes)
        wrapped = "\n".join(textwrap.fill(line, 190) for line in lines)
        fig.te_footnote = fig.text(0.01, bottom - 0.01, wrapped, va="top", ha="left", fontsize=7, color="#333")


def _segments(ax, front: list[tuple[float, float]]) -> list[tuple[float, float, float, float]]:
    """The Pareto line's steps (drawn `where="post"`) as thin boxes in display units."""
    corners = []
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        corners += [((x0, y0), (x1, y0)), ((x1, y0), (x1, y1))]
    boxes = []
    for a, b in corners:
        (ax0, ay0), (bx0, by0) = ax.transData.transform(a), ax.transData.transform(b)
        boxes.append((min(ax0, bx0) - 1, min(ay0, by0) - 1, max(ax0, bx0) + 1, max(ay0, by0) + 1))
    return boxes


def place_labels(
    ax, pts: list[tuple[float, float, str, str]], numbers: dict | None = None, left_out: dict | None = None
):
    """Label each point where its text overlaps no other label, no point, not the Pareto line nor the legend, and
    stays inside the axes: each label tries the offsets of _OFFSETS in turn (measured on the drawn figure) and
    takes the first that fits (with a thin connector when it had to move away). A label that fits nowhere is a
    number from `numbers` ((text, mode) -> number, shared by the panels of a figure) placed the same way; one that
    fits nowhere even so is counted in `left_out`. pts: (x, y, label, mode)."""
    numbers = {} if numbers is None else numbers
    left_out = {} if left_out is None else left_out
    fig = ax.figure
    fig.canvas.draw()  # final limits and scales: text extents in display units
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    marks = [ax.transData.transform((x, y)) for x, y, *_ in pts]
    r = 5.0 * fig.dpi / 72  # a marker's half-width in pixels
    taken = [(mx - r, my - r, mx + r, my + r) for mx, my in marks]
    legend = ax.get_legend()
    blocked = [] if legend is None else [tuple(legend.get_window_extent(renderer).extents)]
    blocked += _segments(ax, getattr(ax, "te_front", []))

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

    def fits(x, y, text, own, offsets):
        """The first offset where `text` is clear of everything (but its own point's box, which the offsets
        clear) and inside the axes, with its box; else None."""
        for offset in offsets:
            t = label(x, y, text, *offset)
            e = t.get_window_extent(renderer)
            t.remove()
            ext = (e.x0 - PAD, e.y0 - PAD, e.x1 + PAD, e.y1 + PAD)
            inside = e.x0 >= box.x0 and e.x1 <= box.x1 and e.y0 >= box.y0 and e.y1 <= box.y1
            if inside and not any(overlap(ext, b) for b in taken + blocked if b is not own):
                return offset, ext
        return None

    for i in sorted(range(len(pts)), key=lambda i: (-pts[i][1], pts[i][0])):  # top first
        x, y, text, mode = pts[i]
        number = numbers.get((text, mode), len(numbers) + 1)
        for shown, offsets in ((text, _OFFSETS), (str(number), _NUMBER_OFFSETS)):
            found = fits(x, y, shown, taken[i], offsets)
            if found is not None:
                t = label(x, y, shown, *found[0])
                t.te_label = (text, mode)  # whose label it is (also where a number stands for it)
                taken.append(found[1])
                if shown != text:
                    numbers[(text, mode)] = number
                break
        else:
            left_out[(text, mode)] = left_out.get((text, mode), 0) + 1


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
DPI = 110  # drawn and saved alike: labels are placed by their extents at the resolution the file has


def _draw_cost_panels(fig, gs, first_row: int, panels, colors: dict):
    for i, (title, pp, pc, group) in enumerate(panels):
        a1, a2 = fig.add_subplot(gs[first_row + i, 0]), fig.add_subplot(gs[first_row + i, 1])
        _scatter(
            a1,
            pp,
            "params per task" + (", mean over the group" if group else ""),
            f"{title}: accuracy vs params/task",
            colors,
        )
        _scatter(
            a2,
            pc,
            "training PFLOPs" + (", sum over the group" if group else ""),
            f"{title}: accuracy vs training compute",
            colors,
        )


def plot_leaderboard(lb: Leaderboard, path: str | Path):
    """Accuracy against params/task and against training compute, per task and for the group, Pareto front
    marked (up and to the left is better)."""
    plt = _figure()
    fig = leaderboard_figure(lb)
    _save(fig, path)
    plt.close(fig)


def leaderboard_figure(lb: Leaderboard):
    """plot_leaderboard's figure, drawn and labelled, not saved (the caller closes it)."""
    plt = _figure()
    panels = _cost_panels(lb)
    fig = plt.figure(figsize=(11, PANEL_HEIGHT * len(panels)), dpi=DPI)
    _draw_cost_panels(fig, fig.add_gridspec(len(panels), 2), 0, panels, mode_colors({r.mode for r in lb.rows}))
    fig.tight_layout()
    place_all(fig)
    return fig


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
    fig = plt.figure(figsize=(11, forest_h + PANEL_HEIGHT * len(panels)), dpi=DPI)
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
    _draw_cost_panels(fig, gs, 1, panels, mode_colors({r.mode for r in lb.rows}) if lb is not None else {})
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
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight")


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
    draw_curves(top, bottom, result)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def draw_curves(top, bottom, result):
    """plot_curves' two panels on the axes given (the loss above, the learning rate below): `show --plot` draws
    them beside a reliability diagram (report/reliability.py)."""
    curves = result.curves["phases"]
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
