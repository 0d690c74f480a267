"""A paper preset's table laid out as the paper prints it, ours beside each number: `paper report` in every format
(table, markdown, csv, json, latex, html), and the page `report --html` writes for each preset.

In the grid formats each of the paper's rows becomes three: the paper's numbers, ours (mean +- std over the seeds
stored, and n, with its 95% interval as the leaderboard's: report/intervals.py), and the difference with its
verdict. csv and json give one record per cell (the interval as `ci_low`, `ci_high`, in points)."""

from __future__ import annotations

import csv
import html
import io
import json

from tabulate import tabulate

from transfer_eval.papers import VERDICTS, Outcome, Preset, rule
from transfer_eval.report import intervals
from transfer_eval.report.page import html_page

FORMATS = ("table", "markdown", "csv", "json", "latex", "html")
_TABLEFMT = {"table": "simple", "markdown": "github", "latex": "latex_booktabs"}


def _num(x: float | None, std: float | None = None) -> str:
    if x is None:
        return ""
    return f"{x:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def published_text(cell) -> str:
    """The paper's number; where the paper misprinted it, the corrected number and what was printed."""
    text = _num(cell.published, cell.published_std)
    return text + (f" (printed {cell.published_printed:.2f})" if cell.published_printed is not None else "")


def interval(o: Outcome) -> tuple[float, float] | None:
    """Our 95% interval in points: one run, Wilson's over its test images; several, Student t's of their mean
    (clipped to [0, 100]); None without a result."""
    if o.n > 1:
        lo, hi = intervals.student_t(o.values)
        return max(lo, 0.0), min(hi, 100.0)
    if o.n == 1 and o.n_test:
        lo, hi = intervals.wilson(round(o.values[0] / 100 * o.n_test), o.n_test)
        return 100 * lo, 100 * hi
    return None


def ours_text(o: Outcome) -> str:
    if o.verdict == "cannot be run":
        return "not run"
    if o.n == 0:
        return "failed" if o.failed else "missing"
    more = f", {o.planned - o.n} missing" if o.n < o.planned else ""
    ci = interval(o)
    return f"{_num(o.mean, o.std)} (n={o.n}{more})" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def difference_text(o: Outcome) -> str:
    if o.verdict in ("within", "outside"):
        return f"{o.difference:+.2f} {o.verdict}"
    return {"cannot be run": "cannot be run", "no published number": "no published number"}.get(o.verdict, "missing")


def _by_cell(outs: list[Outcome]) -> dict:
    return {(o.cell.part, o.cell.row, o.cell.column): o for o in outs}


def _millions(n) -> str:
    return "" if n is None else f"{n / 1e6:.2f}" if n >= 1e4 or n == 0 else f"{n / 1e6:.4f}"


def params_texts(preset: Preset, part, row: str) -> tuple[str, str] | None:
    """(the paper's Params (M), ours: the row's trainable backbone parameters in M, head excluded), or None where
    the part shows no Params column (neither published nor counted: `papers.count_params`)."""
    if not any(v is not None for v in part.params.values()) and not preset.backbone_params:
        return None
    published = part.params.get(row)
    return ("" if published is None else f"{published:g}", _millions(preset.backbone_params.get((part.title, row))))


def params_gap(preset: Preset, part, row: str) -> str | None:
    """Why our backbone count of a row differs from the published Params (M) (its `params_note`, or a line saying
    the preset gives no reason), where it differs by more than the column's rounding (0.005 M, or 1%); else None."""
    published, ours = part.params.get(row), preset.backbone_params.get((part.title, row))
    if published is None or ours is None or abs(ours / 1e6 - published) <= max(0.005, 0.01 * published):
        return None
    return part.params_notes.get(row) or "the preset gives no reason for this gap"


def grid(preset: Preset, outs: list[Outcome]) -> list[tuple[str, list[str], list[list[str]]]]:
    """For each part: its title, the header and the rows (paper, ours, difference for each of the paper's rows);
    a last column "Params (M)" beside them where the part has one (the published column, and our backbone count)."""
    found = _by_cell(outs)
    parts = []
    for part in preset.parts:
        rows = []
        shown = params_texts(preset, part, part.rows[0]) is not None
        for r in part.rows:
            cells = [found[(part.title, r, c)] for c in part.columns]
            paper_p, ours_p = params_texts(preset, part, r) or ("", "")
            extra = (lambda x: [x]) if shown else (lambda x: [])
            if any(o.cell.published is not None for o in cells) or paper_p:
                rows.append([f"{r}: paper", *(published_text(o.cell) for o in cells), *extra(paper_p)])
            if any(o.verdict != "cannot be run" for o in cells):
                rows.append([f"{r}: ours", *(ours_text(o) for o in cells), *extra(ours_p)])
                rows.append([f"{r}: difference", *(difference_text(o) for o in cells), *extra("")])
        parts.append((part.title, ["", *part.columns, *(["Params (M)"] if shown else [])], rows))
    return parts


def counts(outs: list[Outcome]) -> dict[str, int]:
    return {v: sum(o.verdict == v for o in outs) for v in VERDICTS}


def not_run(preset: Preset) -> list[str]:
    """Each reason a row or column cannot be run, once."""
    seen: dict[str, list[str]] = {}
    for c in preset.cells:
        if c.unrunnable:
            seen.setdefault(c.unrunnable, [])
            for name in (c.row, c.column):
                if name not in seen[c.unrunnable]:
                    seen[c.unrunnable].append(name)
    return [f"{reason}" for reason in seen]


def header_lines(preset: Preset, outs: list[Outcome]) -> list[str]:
    n = counts(outs)
    return [
        f"{preset.paper} ({preset.where}), {preset.table}: {preset.caption}".strip(),
        f"Metric: top-1 accuracy (%) on each task's test split. Verdict: {rule(preset)}.",
        f"{len(outs)} cells: {n['within']} within, {n['outside']} outside, {n['missing']} missing, "
        f"{n['no published number']} without a published number, {n['cannot be run']} cannot be run.",
    ]


def footer_lines(preset: Preset) -> list[str]:
    lines = [
        "ours [low, high]: the 95% interval; one run: the Wilson score interval over its test images; several "
        "(seeds, shot samples): the Student-t interval of their mean."
    ]
    lines += [f"Not run: {r}." for r in not_run(preset)]
    lines += [f"Choice: {c}" for c in preset.choices]
    return lines


def _records(preset: Preset, outs: list[Outcome]) -> list[dict]:
    out = []
    for o in outs:
        c = o.cell
        out.append(
            {
                **c.describe(),
                "set": c.settings,
                "published": c.published,
                "published_std": c.published_std,
                "published_printed": c.published_printed,
                "ours_mean": o.mean,
                "ours_std": o.std,
                "n": o.n,
                "planned": o.planned,
                "failed": o.failed,
                "difference": o.difference,
                **dict(zip(("ci_low", "ci_high"), interval(o) or (None, None))),
                "limit": o.limit,
                "verdict": o.verdict,
                "unrunnable": c.unrunnable,
                "run_ids": o.run_ids,
                "published_params_m": next((p.params.get(c.row) for p in preset.parts if p.title == c.part), None),
                "backbone_params": preset.backbone_params.get((c.part, c.row)),
            }
        )
    return out


def render(preset: Preset, outs: list[Outcome], fmt: str) -> str:
    if fmt == "json":  # JSON Lines, as every JSON output: one cell per line, each naming its table
        about = {
            "preset": preset.name,
            "paper": preset.paper,
            "arxiv": preset.arxiv,
            "url": preset.url,
            "table": preset.table,
            "caption": preset.caption,
            "rule": rule(preset),
            "tolerance": preset.tolerance,
            "choices": preset.choices,
        }
        return "".join(json.dumps({**about, **cell}) + "\n" for cell in _records(preset, outs))
    if fmt == "csv":
        buf = io.StringIO()
        records = _records(preset, outs)
        writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
        return buf.getvalue()
    if fmt == "html":
        return html_page(f"{preset.name}: {preset.paper}, {preset.table}", paper_html(preset, outs))
    tablefmt = _TABLEFMT[fmt]
    parts = []
    for title, head, rows in grid(preset, outs):
        table = tabulate(rows, headers=head, tablefmt=tablefmt, disable_numparse=True)
        if fmt == "markdown":
            parts.append((f"### {title}\n\n" if title else "") + table)
        elif fmt == "latex":
            parts.append((f"% {title}\n" if title else "") + table)
        else:
            parts.append((f"{title}\n" if title else "") + table)
    head, foot = header_lines(preset, outs), footer_lines(preset)
    if fmt == "latex":
        return "\n".join(f"% {line}" for line in head) + "\n" + "\n\n".join(parts) + "\n"
    if fmt == "markdown":
        return (
            f"## {preset.name}\n\n"
            + "\n\n".join(head)
            + "\n\n"
            + "\n\n".join(parts)
            + "\n\n"
            + "\n".join(f"- {line}" for line in foot)
            + "\n"
        )
    return "\n".join(head) + "\n\n" + "\n\n".join(parts) + "\n\n" + "\n".join(foot) + "\n"


def paper_html(preset: Preset, outs: list[Outcome]) -> str:
    """The preset's tables as html (everything escaped); verdicts carry their class (within, outside, ...)."""
    found = _by_cell(outs)
    out = [f'<p class="note">{html.escape(line)}</p>' for line in header_lines(preset, outs)]
    for part in preset.parts:
        if part.title:
            out.append(f"<h3>{html.escape(part.title)}</h3>")
        head = "".join(f'<th scope="col">{html.escape(c)}</th>' for c in ["", *part.columns])
        body = []
        for r in part.rows:
            cells = [found[(part.title, r, c)] for c in part.columns]
            for kind, text in (
                ("paper", lambda o: published_text(o.cell)),
                ("ours", ours_text),
                ("difference", difference_text),
            ):
                tds = "".join(
                    f'<td class="{html.escape(o.verdict.replace(" ", "-"))}">{html.escape(text(o))}</td>' for o in cells
                )
                body.append(f'<tr data-kind="{kind}"><th scope="row">{html.escape(f"{r}: {kind}")}</th>{tds}</tr>')
        out.append(
            f'<div class="scroll"><table class="paper" data-preset="{html.escape(preset.name)}" '
            f'data-part="{html.escape(part.title)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
    out.append('<ul class="legend">' + "".join(f"<li>{html.escape(x)}</li>" for x in footer_lines(preset)) + "</ul>")
    return "\n".join(out)
