"""What `show RUN --plot FILE` draws: the run's reliability diagram from its stored test probabilities (the top-1
confidence of each image against whether its top-1 prediction was right, `inference.hits`, in the 15 equal-width
bins of `calibration.reliability`, the ECE in the title), beside its training curves where it has them
(fine-tuning). A run without probabilities (few-shot ridge; stored before schema 4) draws its curves alone, and
one with neither is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.methods import calibration, inference
from transfer_eval.report.plots import _figure, _save, check_plot_path, draw_curves

NO_PROBABILITIES = "few-shot ridge gives none; results stored before schema 4 have none"


def confidence_and_hits(probabilities: np.ndarray, labels: np.ndarray, top5: np.ndarray):
    """Each test image's top-1 confidence (the stored probability of its first prediction) and whether that
    prediction was right (a label set counts any of its classes)."""
    return np.asarray(probabilities[:, 0], np.float64), inference.hits(labels, top5, 1)


def draw_reliability(ax, result, probabilities: np.ndarray, labels: np.ndarray, top5: np.ndarray) -> float:
    """The reliability diagram on `ax`: each bin's accuracy as a bar, its gap to the bin's mean confidence shaded,
    the diagonal a perfectly calibrated model would follow. Returns the ECE it shows (from the stored float16
    probabilities: within a rounding of the record's `ece`)."""
    conf, hits = confidence_and_hits(probabilities, labels, top5)
    r = calibration.reliability(conf, hits)
    ece = calibration.ece(conf, hits)
    edges, full = r["edges"], r["count"] > 0
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    ax.bar(centers[full], r["accuracy"][full], width, color="#4c72b0", edgecolor="white", label="accuracy in the bin")
    gap = r["confidence"][full] - r["accuracy"][full]
    ax.bar(
        centers[full],
        gap,
        width,
        bottom=r["accuracy"][full],
        color="#c44e52",
        alpha=0.35,
        edgecolor="#c44e52",
        hatch="//",
        label="gap to the mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="0.3", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(f"top-1 confidence ({calibration.BINS} equal-width bins)", fontsize=9)
    ax.set_ylabel("top-1 accuracy", fontsize=9)
    scaled = ""
    if result.temperature is not None:
        after = f", ECE after {100 * result.ece_scaled:.2f}%" if result.ece_scaled is not None else ""
        scaled = f"\ntemperature T = {result.temperature:.3g} (fitted on val){after}"
    ax.set_title(
        f"run {result.run_id}: {result.checkpoint} / {result.task} / {result.mode}\n"
        f"ECE {100 * ece:.2f}% over {len(conf):,} test images{scaled}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    return ece


def plot_run(result, path: str | Path, probabilities=None, predictions=None) -> list[str]:
    """Draw what the run has to `path`: its reliability diagram (from `probabilities`, N x 6, and `predictions`,
    (labels, top5), as the store gives them) beside its training curves. Returns one line for each of the two it
    could not draw (without probabilities: a line saying so); refuses a run with neither."""
    check_plot_path(path)
    has_curves = bool((result.curves or {}).get("phases"))
    has_probs = probabilities is not None and predictions is not None
    no_curves = f"run {result.run_id} ({result.mode}) has no training curves (only fine-tuning runs store them)"
    no_probs = f"run {result.run_id} ({result.mode}) has no stored test probabilities ({NO_PROBABILITIES})"
    if not has_curves and not has_probs:
        raise UserError(f"nothing to draw: {no_curves}, and no stored test probabilities ({NO_PROBABILITIES})")
    plt = _figure()
    if has_curves and has_probs:
        fig = plt.figure(figsize=(14, 6.4))
        grid = fig.add_gridspec(2, 2, width_ratios=[1.5, 1], height_ratios=[3, 1.3])
        top = fig.add_subplot(grid[0, 0])
        draw_curves(top, fig.add_subplot(grid[1, 0], sharex=top), result)
        draw_reliability(fig.add_subplot(grid[:, 1]), result, probabilities, *predictions)
    elif has_curves:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.4), sharex=True, height_ratios=[3, 1.3])
        draw_curves(top, bottom, result)
    else:
        fig, ax = plt.subplots(figsize=(6, 6.2))
        draw_reliability(ax, result, probabilities, *predictions)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return [] if has_probs else [f"{no_probs}: no reliability diagram"]
