"""Text renderers: the leaderboard as a table, markdown, csv, json or LaTeX, and a comparison as text or json."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.report import intervals, metrics, robustness, ties
from transfer_eval.report.compare import ALPHA, Comparison
from transfer_eval.report.leaderboard import BYTES_PER_PARAM, NUMERIC_COLUMNS, Cell, Leaderboard, Row

MISSING = "missing"
NONE = "-"  # a result that does not have the metric shown (ECE of few-shot ridge, or of a result before schema 4)
TIED_MARK = " ≈"  # the table's mark for a cell tied with its column's best (bold in markdown, latex and html)

# --------------------------------------------------------------------------------------------- display values


def pct(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:.2f}"


def acc_text(c: Cell | None, ci: bool = True) -> str:
    """The cell's metric (several seeds: mean ± std (n=K)), with its 95% interval unless `ci` is False."""
    if c is None:
        return MISSING
    m = metrics.get(c.metric)
    if c.value is None:
        return NONE
    s = m.text(c.value, MISSING)
    if len(c.values) > 1:
        s += f" ± {m.text(c.std, MISSING)} (n={len(c.values)})"
    if ci:
        s += intervals.text(intervals.cell(c), c.metric)
    if c.n_setups > 1:
        s += " *"
    return s


def human_count(x: float | None) -> str:
    if x is None:
        return MISSING
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def human_bytes(x: float | None) -> str:
    if x is None:
        return MISSING
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f} B"


def _incomplete(row: Row) -> str:
    return f"incomplete ({row.present}/{len(row.group.tasks)})"


def _mean_header(lb: Leaderboard, column: str) -> str:
    g = lb.group
    if column in g.part_names:
        return f"{column} ({len(dict(g.parts)[column])})"
    if not g.parts:
        return f"mean ({g.name})"
    if column == "mean_of_groups" or lb.mean_rule == "groups":
        return f"mean of {len(g.parts)} groups ({g.name})"
    return f"mean of {len(g.tasks)} tasks ({g.name})"


def _task_prefix(lb: Leaderboard) -> str:
    """The group's name as the prefix of every task column (vtab1k_...), left out of the headers: 19 columns fit."""
    prefix = f"{lb.group.name}_"
    return prefix if lb.tasks and all(t.startswith(prefix) for t in lb.tasks) else ""


def display_headers(lb: Leaderboard) -> list[str]:
    prefix = _task_prefix(lb)
    return [
        "checkpoint",
        "mode",
        *[t.removeprefix(prefix) for t in lb.tasks],
        *[f"{t.removeprefix(prefix)} ER" for t in lb.robustness],  # effective robustness (report/robustness.py)
        *[_mean_header(lb, c) for c in lb.mean_columns],
        "params/task",
        "backbone params",  # trainable outside the head: the PEFT tables' Params column
        "deployed GFLOPs",  # per image, after merging where the mode merges (SSF, LoRA: the backbone's)
        "suite storage",
        "vs copies",
        "train PFLOPs",
    ]


def _mean_text(row: Row, column: str, metric: str = metrics.DEFAULT, ci: bool = True) -> str:
    m = metrics.get(metric)
    value = row.value(column)
    if value is not None:
        return m.text(value, MISSING) + (intervals.text(intervals.combined(row, column), metric) if ci else "")
    if column in row.part_means:
        tasks = dict(row.group.parts)[column]
        present = sum(row.cells.get(t) is not None for t in tasks)
        return NONE if present == len(tasks) else f"incomplete ({present}/{len(tasks)})"
    return NONE if row.complete else _incomplete(row) if row.group.tasks else MISSING


def display_row(
    row: Row, tasks: list[str], mean_columns: list[str] = ("mean",), metric: str = metrics.DEFAULT, ci: bool = True
) -> list[str]:
    """The row as shown: each cell with its 95% interval unless `ci` is False (html draws it as a bar)."""
    accs = [acc_text(row.cells.get(t), ci) for t in tasks]
    accs += [robustness.text(e, MISSING) for e in row.robustness.values()]  # effective robustness, per shift set
    means = [_mean_text(row, c, metric, ci) for c in mean_columns]
    deployed = row.deployed_gflops_per_image
    costs = [human_count(row.params_per_task), human_count(row.params_backbone)]
    costs.append(MISSING if deployed is None else f"{deployed:.3g}")
    if row.complete:
        extra = [
            *costs,
            human_bytes(row.suite_bytes),
            MISSING if row.storage_ratio is None else f"{row.storage_ratio:.3f}x",
            MISSING if row.train_pflops is None else f"{row.train_pflops:.3g}",
        ]
    else:
        inc = "incomplete" if row.group.tasks else MISSING
        extra = [*costs, inc, inc, inc]
    return [row.checkpoint, row.label, *accs, *means, *extra]


def display_table(lb: Leaderboard, ci: bool = True) -> tuple[list[str], list[list[str]]]:
    return display_headers(lb), [display_row(r, lb.tasks, lb.mean_columns, lb.metric, ci) for r in lb.rows]


def mark_ties(lb: Leaderboard, rows: list[list[str]], mark) -> list[list[str]]:
    """`rows` (display_table's, escaped for the format) with `mark` applied to every task cell that is its
    column's best or tied with it (report/ties.py)."""
    for row, texts in zip(lb.rows, rows):
        for i, task in enumerate(lb.tasks):
            if ties.tied(row.cells.get(task)):
                texts[2 + i] = mark(texts[2 + i])
    return rows


def legend(lb: Leaderboard) -> list[str]:
    g = lb.group
    prefix = _task_prefix(lb)
    m = metrics.get(lb.metric)
    return [
        f"cells: {m.label}; several seeds: mean ± std (ddof=1) (n=K seeds); 'missing': no stored result"
        + (f"; '{NONE}': the result has no {m.name} ({m.none})" if m.none else "")
        + f"; sorted {'lowest' if m.lower_better else 'highest'} first (--metric top1|top5|balanced|ece|nll)."
        + (f" Task columns: {prefix}<name>." if prefix else ""),
        f"mean ({g.name}): over {', '.join(g.tasks) or 'no tasks'} ({g.description}); 'incomplete (k/T)' where a "
        "task of the group has no result.",
        *(
            [
                f"{g.name} groups: "
                + "; ".join(f"{p}: {', '.join(ts)}" for p, ts in g.parts)
                + ". Its mean is over "
                + {
                    "tasks": f"the {len(g.tasks)} tasks (as SSF and V-PETL Bench)",
                    "groups": f"the {len(g.parts)} group means (as NOAH)",
                    "both": f"the {len(g.tasks)} tasks (as SSF, V-PETL Bench) and over the group means (as NOAH)",
                }[lb.mean_rule]
                + "; --mean tasks|groups|both."
            ]
            if g.parts
            else []
        ),
        *intervals.legend(lb.metric, g.name),
        *ties.legend(lb.metric),
        "params/task: mean over the group's tasks of the parameters one more task stores (per task in json).",
        f"suite storage: shared backbone + one stored delta per task of the group ({BYTES_PER_PARAM} bytes/param "
        "for the backbone); vs copies: that / T full copies of the model.",
        "train PFLOPs: training compute summed over the group's tasks (one seed).",
        *robustness.legend(lb),
    ] + [f"* {n}" for n in lb.notes]


# ---------------------------------------------------------------------------------------------------- formats


def table(lb: Leaderboard) -> str:
    from tabulate import tabulate

    headers, rows = display_table(lb)
    rows = mark_ties(lb, rows, lambda s: s + TIED_MARK)
    return tabulate(rows, headers=headers, disable_numparse=True) + "\n\n" + "\n".join(legend(lb)) + "\n"


def markdown(lb: Leaderboard) -> str:
    from tabulate import tabulate

    headers, rows = display_table(lb)
    table = tabulate(
        mark_ties(lb, [[_md_escape(c) for c in r] for r in rows], lambda s: f"**{s}**"),
        headers=[_md_escape(h) for h in headers],
        tablefmt="github",
        disable_numparse=True,
    )
    return table + "\n\n" + "\n".join(f"- {_md_escape(line)}" for line in legend(lb)) + "\n"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("*", "\\*")  # intraword _ is literal in GitHub markdown


def to_json(lb: Leaderboard) -> str:
    """One JSON object per row, one per line; accuracies as fractions, null where missing."""
    return "".join(json.dumps(lb.row_dict(r)) + "\n" for r in lb.rows)


def to_csv(lb: Leaderboard) -> str:
    """Raw values: accuracies as fractions, bytes, PFLOPs; an empty cell where missing. Each task's value (the
    metric shown) with its std, n, 95% interval, tie with the column's best (True, False, empty: not compared),
    and for ECE and NLL the value after temperature scaling."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    m = metrics.get(lb.metric)
    per_task = ("", "_std", "_n", "_ci_low", "_ci_high", "_tied_with_best", *([f"_{m.scaled}"] if m.scaled else []))
    w.writerow(
        [
            "checkpoint",
            "mode",
            "variant",
            "metric",
            *[f"{t}{s}" for t in lb.tasks for s in per_task],
            *lb.er_columns,  # <task>_effective_robustness, a fraction (report/robustness.py)
            "group",
            *lb.group.part_names,
            "mean",
            "mean_ci_low",
            "mean_ci_high",
            "mean_of_groups",
            "complete",
            "tasks_present",
            "tasks_total",
            *NUMERIC_COLUMNS[1:],
            "full_copies_bytes",
            "notes",
        ]
    )

    def v(x):
        return "" if x is None else x

    for r in lb.rows:
        cells = []
        for t in lb.tasks:
            c = r.cells.get(t)
            if c is None:
                cells += ["", "", 0, "", "", "", *([""] if m.scaled else [])]
                continue
            ci = intervals.cell(c) or ("", "")
            tie = "" if c.tie is None or c.tie.tied_with_best is None else c.tie.tied_with_best
            cells += [v(c.value), v(c.std), len(c.values), *ci, tie, *([v(c.cost(m.scaled))] if m.scaled else [])]
        cells += [v(r.value(k)) for k in lb.er_columns]
        mean_ci = intervals.combined(r, "mean") or ("", "")
        w.writerow(
            [
                r.checkpoint,
                r.mode,
                r.variant,
                lb.metric,
                *cells,
                lb.group.name,
                *[v(x) for x in r.part_means.values()],
                v(r.mean),
                *mean_ci,
                v(r.mean_of_groups),
                r.complete,
                r.present,
                len(lb.group.tasks),
                *[v(getattr(r, k)) for k in NUMERIC_COLUMNS[1:]],
                v(r.full_copies_bytes),
                "; ".join(r.notes),
            ]
        )
    return buf.getvalue()


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in s).replace("±", r"$\pm$")


def to_latex(lb: Leaderboard) -> str:
    from tabulate import tabulate

    headers, rows = display_table(lb)
    table = tabulate(
        mark_ties(lb, [[latex_escape(c) for c in r] for r in rows], lambda s: rf"\textbf{{{s}}}"),
        headers=[latex_escape(h) for h in headers],
        tablefmt="latex_raw",
        disable_numparse=True,
    )
    return table + "\n" + "".join(f"% {line}\n" for line in legend(lb))


def _p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "<1e-16" if p < 1e-16 else f"{p:.3g}"


def _pp(x: float | None, sign=True) -> str:
    return "-" if x is None else f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def _signed(x, fmt) -> str:
    return "-" if x is None else format(x, "+" + fmt)


def compare_headers(cmp: Comparison) -> list[str]:
    return [
        "task",
        "mode",
        "A %",
        "B %",
        "delta pp (B-A)",
        "95% CI pp",
        "p (McNemar)",
        "B vs A",
        "d params/task",
        "d train PFLOPs",
        "d fwd GFLOPs/img",
        *(["d ER pp"] if robustness.compare_note(cmp) else []),  # effective robustness, B - A (shift sets)
    ]


def compare_table_rows(cmp: Comparison, other: str) -> list[list[str]]:
    out = []
    for r in cmp.rows_of(other):
        ci = "-" if r.ci_low is None else f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]"
        result = r.verdict if r.reason is None else f"{r.verdict}: {r.reason}"
        out.append(
            [
                r.task,
                r.label,
                _pp(r.acc_a, False),
                _pp(r.acc_b, False),
                _pp(r.delta),
                ci,
                _p_text(r.p_value),
                result,
                _signed(r.d_params_per_task, ","),
                _signed(r.d_train_pflops, ".3g"),
                _signed(r.d_fwd_gflops_per_image, ".3g"),
                *([_pp(r.d_effective_robustness)] if robustness.compare_note(cmp) else []),
            ]
        )
    return out


def summary_text(cmp: Comparison, other: str) -> str:
    s = cmp.summary(other)
    text = (
        f"{other} vs {cmp.reference}: {s['win']} win{'s' * (s['win'] != 1)}, {s['tie']} "
        f"tie{'s' * (s['tie'] != 1)}, {s['loss']} loss{'es' * (s['loss'] != 1)}"
    )
    if s["not compared"]:
        text += f", {s['not compared']} not compared"
    return text + f" (win/loss: McNemar p < {ALPHA})"


def compare_intro(cmp: Comparison) -> list[str]:
    lines = []
    if len(cmp.others) > 1:
        lines.append(f"{len(cmp.others) + 1} checkpoints: each is compared against the first, {cmp.reference}.")
    lines.append(
        f"delta = B - A in percentage points, A = {cmp.reference} (the reference); 95% CI: paired "
        f"percentile bootstrap over test examples ({cmp.resamples} resamples, seed 0); p: McNemar's exact "
        "test; d = B - A for costs."
    )
    return lines + robustness.compare_note(cmp)


def compare_text(cmp: Comparison) -> str:
    from tabulate import tabulate

    parts = ["\n".join(compare_intro(cmp))]
    for other in cmp.others:
        parts.append(
            f"B = {other}, A = {cmp.reference}\n"
            + tabulate(compare_table_rows(cmp, other), headers=compare_headers(cmp), disable_numparse=True)
            + "\n"
            + summary_text(cmp, other)
        )
    notes = list(dict.fromkeys(r.note for r in cmp.rows if r.note))
    notes = [f"{n}" for n in notes] + [f"* {n}" for n in dict.fromkeys(cmp.notes)]
    return "\n\n".join(parts) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def compare_json(cmp: Comparison) -> str:
    return "".join(json.dumps(r.to_dict()) + "\n" for r in cmp.rows)


def write_text(path: str | Path, text: str):
    """Write a file atomically: a temporary file beside it, then a rename."""
    from transfer_eval import io

    path = Path(path)
    if path.is_dir():
        raise UserError(f"--output {path} is a folder; name a file")
    io.write_text(path, text)
