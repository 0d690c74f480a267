"""The html: the sortable leaderboard table, comparison tables, and the static report site (`report --html`).
Everything a user or the store wrote is escaped."""

from __future__ import annotations

import html
import math
from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.report import intervals, metrics, ties
from transfer_eval.report.compare import Comparison, compare
from transfer_eval.report.leaderboard import Leaderboard, leaderboard
from transfer_eval.report.page import breakable, html_page
from transfer_eval.report.plots import plot_compare, plot_curves, plot_leaderboard
from transfer_eval.report.render import (
    MISSING,
    compare_headers,
    compare_intro,
    compare_table_rows,
    display_headers,
    display_table,
    legend,
    summary_text,
    write_text,
)
from transfer_eval.report.robustness_plot import plot_robustness
from transfer_eval.store.results import Store
from transfer_eval.tasks import names

# ------------------------------------------------------------------------------------------------------- html


def _sort_attr(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return ""
    return html.escape(str(x), quote=True)


def _intervals(lb: Leaderboard) -> dict[str, list]:
    """Each task and mean column's 95% intervals, one per row (None where a cell has none)."""
    out = {t: [intervals.cell(r.cells.get(t)) for r in lb.rows] for t in lb.tasks}
    out.update({k: [intervals.combined(r, k) for r in lb.rows] for k in lb.mean_columns})
    return out


def _bar(ci, value, scale, metric: str) -> str:
    """A cell's 95% interval as a bar under its number, on a scale shared by its column (its lowest low to its
    highest high), with a tick at the value; the bounds in its tooltip."""
    lo, hi = scale
    span = (hi - lo) or 1.0

    def at(x):
        return 100 * (x - lo) / span

    m = metrics.get(metric)
    words = f"95% interval {m.short(ci[0])} to {m.short(ci[1])}"
    return (
        f'<span class="ci" title="{words}" aria-label="{words}"><span class="ci-range" style="left:{at(ci[0]):.1f}%;'
        f'width:{at(ci[1]) - at(ci[0]):.1f}%"></span><span class="ci-value" style="left:{at(value):.1f}%"></span>'
        "</span>"
    )


def leaderboard_html(lb: Leaderboard, table_id: str = "leaderboard") -> str:
    """The sortable table: each cell's 95% interval a bar under its number, the cells tied with their column's
    best in bold (report/ties.py)."""
    headers = display_headers(lb)
    _, rows = display_table(lb, ci=False)
    cols = lb.columns
    cis = _intervals(lb)
    scales = {k: (min(c[0] for c in v if c), max(c[1] for c in v if c)) for k, v in cis.items() if any(v)}
    th = "".join(
        f'<th data-key="{html.escape(k)}" data-dir="{"desc" if lb.best_first(k) else "asc"}"'
        f' scope="col" tabindex="0">{breakable(h)}</th>'
        for k, h in zip(cols, headers)
    )
    body = []
    for i, (row, texts) in enumerate(zip(lb.rows, rows)):
        tds = []
        for k, text in zip(cols, texts):
            cls = ' class="missing"' if text == MISSING or text.startswith("incomplete") else ""
            num = "" if k in ("checkpoint", "mode") else ' data-num="1"'
            shown = html.escape(text)
            if k in lb.tasks and ties.tied(row.cells.get(k)):
                shown = f"<strong>{shown}</strong>"
            if k in cis and cis[k][i] is not None:
                shown += _bar(cis[k][i], row.value(k), scales[k], lb.metric)
            tds.append(f'<td data-sort="{_sort_attr(row.value(k))}"{num}{cls}>{shown}</td>')
        body.append(
            f'<tr data-checkpoint="{html.escape(row.checkpoint)}" data-mode="{html.escape(row.mode)}">'
            + "".join(tds)
            + "</tr>"
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in legend(lb))
    return (
        f'<div class="scroll"><table class="sortable" id="{html.escape(table_id)}"><thead><tr>{th}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div><ul class="legend">{notes}</ul>'
    )


def compare_html(cmp: Comparison) -> str:
    parts = [f'<p class="note">{html.escape(line)}</p>' for line in compare_intro(cmp)]
    for other in cmp.others:
        head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in compare_headers(cmp))
        body = []
        for r, cells in zip(cmp.rows_of(other), compare_table_rows(cmp, other)):
            cls = f' class="{r.verdict}"' if r.verdict in ("win", "loss") else ""
            body.append(
                "<tr>"
                + "".join(f"<td{cls if i == 7 else ''}>{html.escape(c)}</td>" for i, c in enumerate(cells))
                + "</tr>"
            )
        parts.append(
            f"<h3>{html.escape(other)} (B) vs {html.escape(cmp.reference)} (A)</h3>"
            f'<div class="scroll"><table class="compare" data-b="{html.escape(other)}"><thead><tr>{head}'
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            f'<p class="summary">{html.escape(summary_text(cmp, other))}</p>'
        )
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------- report


def html_report(
    store: Store,
    out_dir: str | Path,
    group: str | None = None,
    resamples: int = 10_000,
    registry: dict | None = None,
    tasks: dict | None = None,
    papers_dirs=(),
    registries=(),
    tasks_dirs=(),
    checkpoint_names=(),
    task_names=(),
    mode_names=(),
    line: str = "testbed",
) -> Path:
    """A static site in `out_dir`: index.html (sortable leaderboard, comparisons, plots, what each checkpoint and
    task is) and the plot images.

    The comparisons take the leaderboard's top checkpoint as the reference and compare every other stored
    checkpoint against it. `registry` (name -> Checkpoint) and `tasks` (name -> Task) describe the stored names;
    by default the built-in registry and task plugins. `checkpoint_names`, `task_names` and `mode_names` filter the
    leaderboard, the comparisons and the plots as `leaderboard -c/-t/-m` do (the paper pages show their presets).
    `line`: the effective-robustness lines (report/robustness.py), where a shift set is shown."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--html {out} is a file; name a folder")
    lb = leaderboard(store, checkpoint_names, task_names, mode_names, group=group, line=line)  # bad names: first
    out.mkdir(parents=True, exist_ok=True)
    plot_leaderboard(lb, out / "accuracy_vs_cost.png")
    ref = lb.rows[0].checkpoint
    others = [c for c in dict.fromkeys(r.checkpoint for r in lb.rows) if c != ref]
    sections = [
        f'<p class="note">From <code>{html.escape(str(store.path))}</code>: {len(lb.rows)} rows '
        f"(checkpoint x mode). Click a column header to sort; missing results are shown as missing and "
        f"sort last. The bar under a number is its 95% interval; bold: the column's best and the cells tied with "
        f"it (the legend says how each is decided).</p>",
        '<p class="note"><a href="#leaderboard-section">Leaderboard</a> &middot; '
        '<a href="#calibration">Calibration</a> &middot; '
        '<a href="#comparisons">Comparisons</a> &middot; <a href="#cost">Accuracy against cost</a> &middot; '
        '<a href="#curves">Training curves</a> &middot; <a href="#about">Checkpoints and tasks</a> &middot; '
        '<a href="#papers">Paper tables</a></p>',
        '<h2 id="leaderboard-section">Leaderboard</h2>',
        leaderboard_html(lb),
        *_calibration_section(store, group, checkpoint_names, task_names, mode_names),
        '<h2 id="comparisons">Comparisons</h2>',
    ]
    if not others:
        sections.append('<p class="note">Only one checkpoint is stored: nothing to compare.</p>')
    else:
        try:
            cmp = _compare_available(store, ref, others, resamples, task_names, mode_names, line)
        except UserError as e:
            sections.append(f'<p class="note">{html.escape(str(e))}</p>')
        else:
            plot_compare(cmp, out / "compare.png")
            sections += [
                f'<p class="note">Reference A: {html.escape(ref)}, the top row of the leaderboard.</p>',
                compare_html(cmp),
                '<img src="compare.png" alt="accuracy differences with 95% CIs" '
                "onload=\"this.setAttribute('data-loaded','1')\">",
            ]
    sections += [
        '<h2 id="cost">Accuracy against cost</h2>',
        '<p class="note">Up and to the left is better; ringed points, joined by the black line, are the '
        "Pareto front (no other row is at least as accurate for at most the cost).</p>",
        '<img src="accuracy_vs_cost.png" alt="accuracy against params per task and training compute" '
        "onload=\"this.setAttribute('data-loaded','1')\">",
    ]
    sections += _robustness_section(lb, out)
    sections += _curves_section(lb, out)
    sections += _about_section(lb, registry, tasks)
    sections += _papers_section(store, out, papers_dirs, registries, tasks_dirs)
    write_text(out / "index.html", html_page("transfer-eval report", "\n".join(sections)))
    return out / "index.html"


def _robustness_section(lb: Leaderboard, out: Path) -> list[str]:
    """The effective-robustness plot, where the leaderboard shows a shift set (report/robustness.py)."""
    if not lb.robustness:
        return []
    plot_robustness(lb, out / "robustness.png")
    return [
        '<h2 id="robustness">Effective robustness</h2>',
        '<p class="note">Each shift set\'s top-1 against ImageNet-1k val top-1, on logit axes: grey, the testbed the '
        "line is fitted on; above the line is effectively robust (Taori et al. 2020, arXiv 2007.00644).</p>",
        '<img src="robustness.png" alt="shift-set top-1 against ImageNet-1k val top-1, with the line" '
        "onload=\"this.setAttribute('data-loaded','1')\">",
    ]


def _calibration_section(store: Store, group, checkpoint_names, task_names, mode_names) -> list[str]:
    """The leaderboard again with each cell's expected calibration error (`leaderboard --metric ece`), lowest
    first, where any shown result has one."""
    lb = leaderboard(store, checkpoint_names, task_names, mode_names, group=group, metric="ece")
    parts = ['<h2 id="calibration">Calibration</h2>']
    if not any(c is not None and c.value is not None for r in lb.rows for c in r.cells.values()):
        return parts + [
            f'<p class="note">No result shown has a calibration error: {html.escape(metrics.get("ece").none)}.</p>'
        ]
    return parts + [
        '<p class="note">Expected calibration error of the test probabilities, lowest (best calibrated) first; '
        "the json and csv of <code>leaderboard --metric ece</code> add the error after temperature scaling, and "
        "<code>show RUN --plot FILE</code> draws a run's reliability diagram.</p>",
        leaderboard_html(lb, "calibration"),
    ]


def _curves_section(lb: Leaderboard, out: Path) -> list[str]:
    """Each fine-tuning cell's training curves (its newest run's), one figure per cell."""
    parts = ['<h2 id="curves">Training curves</h2>']
    for row in lb.rows:
        for task, cell in row.cells.items():
            run = cell.newest if cell is not None else None
            if run is None or not (run.curves or {}).get("phases"):
                continue
            name = f"curves_run{run.run_id}.png"
            plot_curves(run, out / name)
            title = f"{row.checkpoint} / {row.label} / {task} (run {run.run_id}, seed {run.seed})"
            parts += [
                f"<h3>{html.escape(title)}</h3>",
                f'<img src="{name}" alt="{html.escape(title, quote=True)}" '
                "onload=\"this.setAttribute('data-loaded','1')\">",
            ]
    if len(parts) == 1:
        parts.append('<p class="note">No fine-tuning run with stored training curves.</p>')
    return parts


def _about_section(lb: Leaderboard, registry: dict | None, tasks: dict | None) -> list[str]:
    """What each stored checkpoint and task is, from the registry and the task plugins (users' words: escaped)."""
    if registry is None:
        from transfer_eval.checkpoints import load_registry

        registry = load_registry()
    if tasks is None:
        from transfer_eval.tasks import discover

        tasks = discover()

    def table(kind: str, headers: list[str], rows: list[list[str]]) -> str:
        head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return (
            f'<div class="scroll"><table class="about" id="{kind}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )

    unknown = "not in the registry given (--registry)"
    ck_rows = []
    for name in dict.fromkeys(r.checkpoint for r in lb.rows):
        ck = registry.get(name)
        ck_rows.append(
            [name, ck.model, ck.pretraining, ck.paper or "", ck.description, ck.source]
            if ck is not None
            else [name, "", "", "", unknown, ""]
        )
    task_rows = []
    for name in lb.tasks:
        t = tasks.get(name)
        source = names.describe(name)  # folder:PATH, hf:...: what the name points at, from the name
        task_rows.append(
            [name, t.num_classes, t.version, t.description, t.source]
            if t is not None
            else [name, "", "", source, name.split(":", 1)[0] + ":"]
            if source is not None
            else [name, "", "", "not among the task plugins given (--tasks-dir)", ""]
        )
    return [
        '<h2 id="about">Checkpoints and tasks</h2>',
        table("checkpoints", ["checkpoint", "model", "pretraining", "paper", "description", "registry"], ck_rows),
        table("tasks", ["task", "classes", "version", "description", "plugin"], task_rows),
    ]


def _papers_section(store: Store, out: Path, papers_dirs, registries, tasks_dirs) -> list[str]:
    """A page per paper preset (paper-NAME.html: its table with ours beside the paper's numbers), linked here."""
    from transfer_eval import papers
    from transfer_eval.report.paper import counts, paper_html

    items = []
    for preset in papers.load_all(papers_dirs, registries, tasks_dirs):
        outs = papers.outcomes(preset, store)
        page = f"paper-{preset.name}.html"
        title = f"{preset.name}: {preset.paper}, {preset.table}"
        back = '<p class="note"><a href="index.html">&larr; the report</a></p>'  # the index beside it
        write_text(out / page, html_page(title, back + paper_html(preset, outs)))
        n = counts(outs)
        items.append(
            f'<li><a href="{html.escape(page, quote=True)}">{html.escape(preset.name)}</a>: '
            f"{html.escape(preset.paper)} ({html.escape(preset.where)}), {html.escape(preset.table)}; "
            f"{n['within']} within, {n['outside']} outside, {n['missing']} missing</li>"
        )
    return ['<h2 id="papers">Paper tables</h2>', f'<ul class="papers">{"".join(items)}</ul>']


def _compare_available(
    store: Store, ref: str, others: list[str], resamples: int, tasks=(), modes=(), line: str = "testbed"
) -> Comparison:
    """Compare against `ref` only the checkpoints that share a task and mode with it (of `tasks` and `modes`
    where given)."""
    keys = {}
    for r in store.query(checkpoints=[ref, *others]):
        if (not tasks or r.task in tasks) and (not modes or r.mode in modes):
            keys.setdefault(r.checkpoint, set()).add((r.task, r.mode))
    usable = [o for o in others if keys.get(o, set()) & keys.get(ref, set())]
    if not usable:
        raise UserError(f"no other checkpoint shares a task and mode with {ref}: nothing to compare")
    return compare(store, [ref, *usable], list(tasks), list(modes or ()), resamples=resamples, line=line)
