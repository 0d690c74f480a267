"""Leaderboards, paired checkpoint comparisons, plots and the static html report, all read from the results store.

leaderboard.py holds the model (groups, cells, rows), variants.py what tells a row's variants apart, metrics.py
what a cell can show (--metric), intervals.py the cells' and means' 95% intervals, ties.py which cells are tied
with their column's best, paired.py the paired statistics (McNemar, bootstrap) that compare.py and ties.py share,
robustness.py effective robustness on ImageNet's shift sets, render.py the text formats, plots.py and
robustness_plot.py the figures, reliability.py a run's reliability diagram and site.py the html; this module
gathers their public names.

Definitions (the README's "Leaderboard" section says the same to users):

- A *cell* is one (checkpoint, mode, variant, task). Its accuracy is `top1` of the stored results with status ok.
  Several seeds give mean ± std (std with ddof=1, n shown). A variant is what the user chose (shots, resolution,
  preset, a recipe field, a precision: variants.py). Where a (checkpoint, mode, task) holds runs of several setups
  (weights digest, task version, protocol version), only the setup of the newest run (highest run_id) counts, and
  a note says which changed.
- A *group* is a named list of tasks. Its mean is the mean of the cells' accuracies; if a task of the group has no
  result the mean is *incomplete* and shown as such, never as a number that mixes different task sets.
- params/task (table): the mean over the group's tasks of `params_per_task` (it differs between tasks only through
  the head's class count); the value of each task is in the json output.
- Suite storage: the shared backbone (`params_total - params_per_task`, fp32) plus each task's stored delta
  (`bytes_per_task`), against T full fp32 copies (sum over tasks of `params_total` x 4 bytes). fp32 because the
  suite stores every delta in fp32, so both sides are counted in the same dtype.
- Training compute: the sum over the group's tasks of `train_pflops_total` (mean over seeds: one seed's cost).
- What a cell shows (`--metric`): test top-1 (default), top-5, balanced top-1, or the calibration of the test
  probabilities: ECE (15 equal-width bins of top-1 confidence) or NLL, before temperature scaling (json and csv
  add `ece_scaled` / `nll_scaled`, after). Sorting follows it, lower first for ECE and NLL; a result without it
  (few-shot ridge, a result stored before schema 4) shows "-", and a group mean over such a cell is "-".
- Intervals (intervals.py), 95%: one seed of top-1 or top-5, the Wilson score interval over the run's n test
  images; several seeds, the Student-t interval of the mean over the seeds (clipped to the metric's range); a
  group mean, the tasks' standard errors (half their interval's width / 1.96) combined as independent: it
  covers drawing these tasks' test images (and seeds) again, not choosing other tasks. json/csv: `ci_low`,
  `ci_high`.
- Ties with the best (ties.py): in each task column, every cell is compared with the column's best by McNemar's
  exact test on the per-image hits (`inference.hits`, top-1 or top-5) of one run each (the lowest seed both
  have), Holm-corrected over the column's comparisons; tied where the adjusted p >= 0.05 (bold; the best too).
  Cells measured on other test examples than the best (split_manifest or labels differ) are not compared and
  never tied. json/csv: `tied_with_best` (true, false, or null: not compared / no ties for the metric).
- Comparison: delta = B - A, where A is the reference (the first checkpoint). Per-sample predictions of one run per
  side (the lowest seed both have) give a paired percentile bootstrap CI (test indices resampled with
  `numpy.random.default_rng(seed)`) and McNemar's exact test (a binomial test on the discordant pairs). A row is a
  win or a loss for B when p < 0.05, a tie otherwise. Results measured on different test examples (different
  `split_manifest`, or different labels) are refused, not compared.
"""

from transfer_eval.errors import unknown_name
from transfer_eval.report.compare import ALPHA, Comparison, Paired, compare, paired_stats, verdict
from transfer_eval.report.leaderboard import (
    ALL,
    BYTES_PER_PARAM,
    GROUPS,
    NUMERIC_COLUMNS,
    Cell,
    Group,
    Leaderboard,
    Row,
    build_cells,
    leaderboard,
    resolve_group,
    sort_rows,
)
from transfer_eval.report.metrics import METRICS
from transfer_eval.report.page import html_page
from transfer_eval.report.plots import (
    PLOT_SUFFIXES,
    check_plot_path,
    pareto_front,
    plot_compare,
    plot_curves,
    plot_leaderboard,
)
from transfer_eval.report.reliability import plot_run
from transfer_eval.report.render import (
    MISSING,
    acc_text,
    compare_intro,
    compare_json,
    compare_text,
    display_row,
    display_table,
    human_bytes,
    human_count,
    legend,
    markdown,
    pct,
    summary_text,
    table,
    to_csv,
    to_json,
    to_latex,
    write_text,
)
from transfer_eval.report.robustness_plot import plot_robustness
from transfer_eval.report.site import compare_html, html_report, leaderboard_html

FORMATS = ("table", "markdown", "csv", "json", "latex", "html")


def render(lb: Leaderboard, fmt: str) -> str:
    """The leaderboard in one of FORMATS."""
    if fmt not in FORMATS:
        raise unknown_name("format", fmt, FORMATS)
    if fmt == "html":
        return html_page("transfer-eval leaderboard", leaderboard_html(lb))
    return {"table": table, "markdown": markdown, "csv": to_csv, "json": to_json, "latex": to_latex}[fmt](lb)


__all__ = [
    "ALL",
    "ALPHA",
    "BYTES_PER_PARAM",
    "FORMATS",
    "GROUPS",
    "METRICS",
    "MISSING",
    "NUMERIC_COLUMNS",
    "PLOT_SUFFIXES",
    "Cell",
    "Comparison",
    "Group",
    "Leaderboard",
    "Paired",
    "Row",
    "acc_text",
    "build_cells",
    "check_plot_path",
    "compare",
    "compare_html",
    "compare_intro",
    "compare_json",
    "compare_text",
    "display_row",
    "display_table",
    "html_page",
    "html_report",
    "human_bytes",
    "human_count",
    "leaderboard",
    "leaderboard_html",
    "legend",
    "markdown",
    "paired_stats",
    "pareto_front",
    "pct",
    "plot_compare",
    "plot_curves",
    "plot_leaderboard",
    "plot_run",
    "plot_robustness",
    "render",
    "resolve_group",
    "sort_rows",
    "summary_text",
    "table",
    "to_csv",
    "to_json",
    "to_latex",
    "verdict",
    "write_text",
]
