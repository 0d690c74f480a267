"""The html: the sortable leaderboard table, comparison tables, and the static report site (`report --html`).
Everything a user or the store wrote is escaped."""

from __future__ import annotations

import html
import math
from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.report.compare import Comparison, compare
from transfer_eval.report.leaderboard import _DESCENDING, Leaderboard, leaderboard
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
from transfer_eval.results import Store

# ------------------------------------------------------------------------------------------------------- html


def _sort_attr(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return ""
    return html.escape(str(x), quote=True)


def leaderboard_html(lb: Leaderboard) -> str:
    headers = display_headers(lb)
    _, rows = display_table(lb)
    cols = lb.columns
    th = "".join(
        f'<th data-key="{html.escape(k)}" data-dir="{"desc" if k in _DESCENDING or k in lb.tasks else "asc"}"'
        f' scope="col" tabindex="0">{html.escape(h)}</th>'
        for k, h in zip(cols, headers)
    )
    body = []
    for row, texts in zip(lb.rows, rows):
        tds = []
        for k, text in zip(cols, texts):
            cls = ' class="missing"' if text == MISSING or text.startswith("incomplete") else ""
            num = "" if k in ("checkpoint", "mode") else ' data-num="1"'
            tds.append(f'<td data-sort="{_sort_attr(row.value(k))}"{num}{cls}>{html.escape(text)}</td>')
        body.append(
            f'<tr data-checkpoint="{html.escape(row.checkpoint)}" data-mode="{html.escape(row.mode)}">'
            + "".join(tds)
            + "</tr>"
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in legend(lb))
    return (
        f'<div class="scroll"><table class="sortable" id="leaderboard"><thead><tr>{th}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div><ul class="legend">{notes}</ul>'
    )


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1500px;
padding:1rem 1.5rem;color:#1d1d1f;background:#fff}
h1{font-size:1.5rem;margin:.2rem 0 .6rem}h2{font-size:1.2rem;margin:1.6rem 0 .5rem;border-bottom:1px solid #ddd}
h3{font-size:1.02rem;margin:1rem 0 .3rem}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.85rem;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .45rem;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}
th{white-space:normal;vertical-align:bottom;min-width:3.5em}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
thead th{background:#f4f5f7;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e8eaee}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:.7em}
th[aria-sort=descending]::after{content:" \\25BC";font-size:.7em}
td.missing{color:#a33;font-style:italic}tr:hover td{background:#fafafa}
.legend,.note{color:#555;font-size:.85rem}.win{color:#176d2c;font-weight:600}.loss{color:#b3261e;font-weight:600}
img{max-width:100%;height:auto;border:1px solid #eee}code{background:#f4f5f7;padding:0 .2em}
"""

_JS = """
(function(){
function val(td){var v=td.getAttribute('data-sort');if(v===null||v==='')return null;
 if(td.hasAttribute('data-num')){var f=parseFloat(v);return isNaN(f)?null:f;}return v.toLowerCase();}
function sortTable(t,col,dir){var tb=t.tBodies[0],rows=Array.prototype.slice.call(tb.rows),s=dir==='asc'?1:-1;
 rows.sort(function(a,b){var x=val(a.cells[col]),y=val(b.cells[col]);
  if(x===null)return y===null?0:1;if(y===null)return -1;return x<y?-s:x>y?s:0;});
 rows.forEach(function(r){tb.appendChild(r);});
 var ths=t.tHead.rows[0].cells;for(var i=0;i<ths.length;i++)ths[i].removeAttribute('aria-sort');
 ths[col].setAttribute('aria-sort',dir==='asc'?'ascending':'descending');t.setAttribute('data-sorted',
 ths[col].getAttribute('data-key')+':'+dir);}
var tables=document.querySelectorAll('table.sortable');
Array.prototype.forEach.call(tables,function(t){var ths=t.tHead.rows[0].cells;
 Array.prototype.forEach.call(ths,function(th,i){function go(){var cur=th.getAttribute('aria-sort');
  var dir=cur?(cur==='ascending'?'desc':'asc'):th.getAttribute('data-dir');sortTable(t,i,dir);}
  th.addEventListener('click',go);th.addEventListener('keydown',function(e){if(e.key==='Enter')go();});});});
var m=/sort=([^&:]+)(?::(asc|desc))?/.exec(decodeURIComponent(location.hash));
if(m&&tables.length){var t=tables[0],ths=t.tHead.rows[0].cells;for(var i=0;i<ths.length;i++)
 if(ths[i].getAttribute('data-key')===m[1])sortTable(t,i,m[2]||ths[i].getAttribute('data-dir'));}
document.body.setAttribute('data-js','ready');
})();
"""


def html_page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{body}\n<script>{_JS}</script>\n</body></html>\n"
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
) -> Path:
    """A static site in `out_dir`: index.html (sortable leaderboard, comparisons, plots, what each checkpoint and
    task is) and the plot images.

    The comparisons take the leaderboard's top checkpoint as the reference and compare every other stored
    checkpoint against it. `registry` (name -> Checkpoint) and `tasks` (name -> Task) describe the stored names;
    by default the built-in registry and task plugins."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--html {out} is a file; name a folder")
    out.mkdir(parents=True, exist_ok=True)
    lb = leaderboard(store, group=group)
    plot_leaderboard(lb, out / "accuracy_vs_cost.png")
    ref = lb.rows[0].checkpoint
    others = [c for c in dict.fromkeys(r.checkpoint for r in lb.rows) if c != ref]
    sections = [
        f'<p class="note">From <code>{html.escape(str(store.path))}</code>: {len(lb.rows)} rows '
        f"(checkpoint x mode). Click a column header to sort; missing results are shown as missing and "
        f"sort last.</p>",
        '<p class="note"><a href="#leaderboard-section">Leaderboard</a> &middot; '
        '<a href="#comparisons">Comparisons</a> &middot; <a href="#cost">Accuracy against cost</a> &middot; '
        '<a href="#curves">Training curves</a> &middot; <a href="#about">Checkpoints and tasks</a></p>',
        '<h2 id="leaderboard-section">Leaderboard</h2>',
        leaderboard_html(lb),
        '<h2 id="comparisons">Comparisons</h2>',
    ]
    if not others:
        sections.append('<p class="note">Only one checkpoint is stored: nothing to compare.</p>')
    else:
        try:
            cmp = _compare_available(store, ref, others, resamples)
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
    sections += _curves_section(lb, out)
    sections += _about_section(lb, registry, tasks)
    write_text(out / "index.html", html_page("transfer-eval report", "\n".join(sections)))
    return out / "index.html"


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
            title = f"{row.checkpoint} / {row.mode} / {task} (run {run.run_id}, seed {run.seed})"
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
        task_rows.append(
            [name, t.num_classes, t.version, t.description, t.source]
            if t is not None
            else [name, "", "", "not among the task plugins given (--tasks-dir)", ""]
        )
    return [
        '<h2 id="about">Checkpoints and tasks</h2>',
        table("checkpoints", ["checkpoint", "model", "pretraining", "paper", "description", "registry"], ck_rows),
        table("tasks", ["task", "classes", "version", "description", "plugin"], task_rows),
    ]


def _compare_available(store: Store, ref: str, others: list[str], resamples: int) -> Comparison:
    """Compare against `ref` only the checkpoints that share a task and mode with it."""
    keys = {}
    for r in store.query(checkpoints=[ref, *others]):
        keys.setdefault(r.checkpoint, set()).add((r.task, r.mode))
    usable = [o for o in others if keys.get(o, set()) & keys.get(ref, set())]
    if not usable:
        raise UserError(f"no other checkpoint shares a task and mode with {ref}: nothing to compare")
    return compare(store, [ref, *usable], resamples=resamples)
