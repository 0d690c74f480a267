"""`paper list | plan | run | report`: the papers' tables as presets (transfer_eval.papers), their runs, their
compute, and the table as the paper prints it with ours beside each number."""

from __future__ import annotations

import json

import click

from transfer_eval import paths
from transfer_eval.cli.group import cli
from transfer_eval.cli.options import (
    CONTEXT,
    SHARED,
    data_dir_option,
    executor_options,
    format_option,
    ints,
    json_option,
    output_option,
    papers_dir_option,
    registry_option,
    results_option,
    shared_argv,
    skip_verify_option,
    tasks_dir_option,
)

seeds_option = click.option(
    "--seeds", default=None, help="Run (or count) every cell over these seeds, comma-separated, e.g. 0,1,2."
)
PRESET_DECIDES = ("--resolution", "--recipe", "--set", "--limit", "--precision")


def _run_options(f):
    """The `run` options a paper's jobs pass on; resolution, recipe, --set, --limit and --precision are the
    preset's to decide (a table's cells are measured at precision auto)."""
    for decls, attrs in reversed(SHARED):
        if decls[0] not in PRESET_DECIDES:
            f = click.option(*decls, **attrs)(f)
    return f


@cli.group(context_settings=CONTEXT)
def paper():
    """Reproduce the papers' tables: presets that plan, run and report against the published numbers.

    \b
    Examples:
      transfer-eval paper list
      transfer-eval paper plan three-things-table6 --data-dir ~/data
      transfer-eval paper run three-things-table6 --data-dir ~/data --executor slurm --partition gpu
      transfer-eval paper report three-things-table6 --format markdown
    """


def _load(name, papers_dirs, registries, tasks_dirs, seeds):
    from transfer_eval import papers

    preset = papers.load(name, papers_dirs, registries, tasks_dirs)
    if seeds is not None:
        papers.with_seeds(preset, ints(seeds), registries, tasks_dirs)
    return preset


def _store_if_any(results):
    """The store to read, or None where there is none yet (a fresh install: every cell is missing)."""
    from transfer_eval.store.results import Store

    return Store.existing(results, missing_ok=True)


@paper.command("list", context_settings=CONTEXT)
@papers_dir_option
@registry_option
@tasks_dir_option
@json_option
def paper_list(papers_dirs, registries, tasks_dirs, as_json):
    """The presets: shipped ones and those of --papers-dir, with their paper, table and cells."""
    from tabulate import tabulate

    from transfer_eval import papers

    rows = []
    for p in papers.load_all(papers_dirs, registries, tasks_dirs):
        rows.append(
            {
                "name": p.name,
                "paper": p.paper,
                "arxiv": p.arxiv,
                "url": p.url,
                "where": p.where,
                "table": p.table,
                "cells": len(p.cells),
                "runnable": len(p.runnable),
                "runs": sum(len(c.runs) for c in p.runnable),
                "tasks": sorted({c.task for c in p.runnable}),
                "source": p.source,
            }
        )
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        return
    table = [
        [r["name"], f"{r['paper']} ({r['where']})", r["table"], f"{r['runnable']} of {r['cells']}", r["runs"]]
        for r in rows
    ]
    click.echo(
        tabulate(
            table, headers=["preset", "paper", "table", "cells runnable", "runs"], maxcolwidths=[None, 60, None, None]
        )
    )


@paper.command("plan", context_settings=CONTEXT)
@click.argument("name")
@papers_dir_option
@registry_option
@tasks_dir_option
@results_option
@data_dir_option
@skip_verify_option
@seeds_option
@click.option(
    "--tflops",
    type=click.FloatRange(min=1e-3),
    default=None,
    help="Sustained training TFLOP/s per GPU for the GPU-hours of runs with no measured GPU run of the same "
    "checkpoint, mode and resolution in the store (default: 100, stated, not measured).",
)
@json_option
def paper_plan(name, papers_dirs, registries, tasks_dirs, results, data_dir, skip_verify, seeds, tflops, as_json):
    """Each cell of the table: stored, missing or failed; the data each task needs and whether `data check` finds
    it; the training compute of the missing runs (counted FLOPs) and their GPU-hours."""
    from transfer_eval import papers
    from transfer_eval.cli.options import load_context
    from transfer_eval.measure import planning
    from transfer_eval.methods import companions
    from transfer_eval.report import paper as paper_report_
    from transfer_eval.run import checks

    preset = _load(name, papers_dirs, registries, tasks_dirs, seeds)
    store = _store_if_any(results)
    ctx = load_context(data_dir, skip_verify, False)
    outs = papers.outcomes(preset, store)
    all_runs = [r for c in preset.runnable for r in c.runs]
    pending = {r.key for r in all_runs if store is None or not store.has(r.key)}
    with_others = companions.covered(all_runs, pending)  # scored with another cell's model: no training
    found = companions.known(all_runs) if any(r.task.companions for r in all_runs) else {}
    counted = set(pending)  # companion runs counted already (a cell's own runs are counted in their cell)
    flops, sizes = planning.FlopCounts(), {}
    rate = tflops or planning.DEFAULT_TFLOPS
    # the splits each task's cells read, checked once per task
    ready = {t: planning.data_status(task, splits, ctx) for t, (task, splits) in checks.splits_read(all_runs).items()}
    params = papers.count_params(preset)  # each row's trainable backbone parameters (head excluded)
    published_params = {(p.title, r): v for p in preset.parts for r, v in p.params.items()}
    parts = {p.title: p for p in preset.parts}
    rows = []
    for o in outs:
        c = o.cell
        row = {
            **c.describe(),
            "published_params_m": published_params.get((c.part, c.row)),
            "backbone_params": params.get((c.part, c.row)),
            "params_gap": paper_report_.params_gap(preset, parts[c.part], c.row),  # why the two differ, where they do
            "planned": o.planned,
            "stored": o.n,
            "failed": o.failed,
            "status": _status(o),
            "data": None,
            "missing_pflops": None,
            "missing_gpu_hours": None,
            "companion_images": None,
            "basis": None,
        }
        if c.unrunnable is None:
            row["data"] = "ready" if ready[c.task][0] else "missing"
            todo = [r for r in c.runs if r.key in pending]
            if todo:
                task = todo[0].task
                if task.name not in sizes:
                    sizes[task.name] = planning.split_sizes(task, ctx if ready[task.name][0] else None)
                needs = [
                    planning.need(r, sizes[task.name], flops, rate, store, scored_only=r.key in with_others)
                    for r in todo
                ]
                if any(r.key in with_others for r in todo):
                    row["status"] += " (scored with a companion task's model: no training)"
                # the companion sets outside the table that its runs score too (their test images' forward)
                sets = [
                    n
                    for r in todo
                    if r.key not in with_others
                    for n in planning.companion_needs(r, ctx, flops, found, exclude=counted, store=store)
                ]
                counted |= {n.run.key for n in sets}
                needs += sets
                row["companion_images"] = sum(n.eval_images for n in sets)
                if sets:
                    row["status"] += f" (+ {len({n.run.task.name for n in sets})} companion test sets scored)"
                if all(n.pflops is not None for n in needs):
                    row["missing_pflops"] = sum(n.pflops for n in needs)
                    row["missing_gpu_hours"] = sum(n.gpu_hours for n in needs)
                row["basis"] = "; ".join(sorted({n.basis for n in needs}))
            else:
                row["missing_pflops"] = row["missing_gpu_hours"] = 0.0
        rows.append(row)
    if store is not None:
        store.close()
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        for t, (ok, detail) in ready.items():
            click.echo(json.dumps({"task": t, "data": "ready" if ok else "missing", "detail": detail}))
        return
    _print_plan(preset, rows, ready, rate, store is None)


def _status(o) -> str:
    if o.verdict == "cannot be run":
        return f"cannot be run: {o.cell.unrunnable}"
    if o.n == o.planned:
        return "stored"
    if o.failed:
        return f"failed ({o.failed} of {o.planned})" + (f", {o.n} stored" if o.n else "")
    return "missing" if o.n == 0 else f"partial ({o.n} of {o.planned} stored)"


def _print_plan(preset, rows, ready, rate, no_store) -> None:
    from tabulate import tabulate

    def num(x, fmt):
        return "" if x is None else format(x, fmt)

    click.echo(f"{preset.paper} ({preset.where}), {preset.table}: {len(rows)} cells")
    if no_store:
        click.echo("(no results store yet: every runnable cell is missing)")
    table = [
        [
            " / ".join(x for x in (r["part"], r["row"], r["column"]) if x),
            r["checkpoint"] or "",
            r["task"] or "",
            r["mode"] or "",
            r["resolution"] or "",
            r["recipe"] if r["checkpoint"] else "",
            f"{r['stored']}/{r['planned']}" if r["checkpoint"] else "",
            r["status"],
            r["data"] or "",
            num(r["missing_pflops"], ",.1f"),
            num(r["missing_gpu_hours"], ",.1f"),
        ]
        for r in rows
    ]
    headers = ["cell", "checkpoint", "task", "mode", "px", "recipe", "runs", "status", "data", "PFLOPs", "GPU-h"]
    click.echo(tabulate(table, headers=headers, disable_numparse=True, maxcolwidths=[40] + [None] * 10))
    click.echo("\nData (what `transfer-eval data check` finds for the splits the cells read):")
    for task, (ok, detail) in ready.items():
        click.echo(f"  {task}: {'ready (' + detail + ')' if ok else 'missing: ' + detail}")
    missing = [r for r in rows if r["missing_pflops"]]
    unknown = [
        r for r in rows if r["checkpoint"] and r["missing_pflops"] is None and r["planned"] > r["stored"]
    ]  # runnable, missing, and not sized (a task without `sizes`)
    pflops = sum(r["missing_pflops"] for r in missing)
    hours = sum(r["missing_gpu_hours"] for r in missing)
    bases = sorted({b for r in missing for b in (r["basis"] or "").split("; ") if b})
    click.echo(
        f"\nTo run: {sum(r['planned'] - r['stored'] for r in rows if r['checkpoint'])} runs in {len(missing)} cells: "
        f"{pflops:,.1f} PFLOPs (counted: forward and training-step FLOPs per image x images), "
        f"about {hours:,.1f} GPU-hours ({'; '.join(bases) or f'stated {rate:g} TFLOP/s per GPU'})"
        + (f"; {len(unknown)} cells of unknown size not counted" if unknown else "")
    )
    from transfer_eval.report import paper as paper_report_

    if preset.backbone_params or any(v is not None for p in preset.parts for v in p.params.values()):
        click.echo("\nParams (M), trainable outside the head (the published column's count):")
        for part in preset.parts:
            for row in part.rows:
                paper_p, ours_p = paper_report_.params_texts(preset, part, row) or ("", "")
                where = f"{part.title} / {row}" if part.title else row
                gap = paper_report_.params_gap(preset, part, row)
                why = f" (gap: {gap})" if gap else ""
                click.echo(f"  {where}: paper {paper_p or '-'}, ours {ours_p or '-'}{why}")
    for choice in preset.choices:
        click.echo(f"Choice: {choice}")


@paper.command("run", context_settings=CONTEXT)
@click.argument("name")
@papers_dir_option
@seeds_option
@executor_options
@_run_options
def paper_run(name, papers_dirs, seeds, per, executor, dry_run, slurm, **shared):
    """Run the table's missing cells, through the same machinery as `sweep` (locally, or on Slurm); cells already
    stored are skipped, so running it again fills the gaps. Then `paper report NAME`."""
    from transfer_eval.cli.options import load_context
    from transfer_eval.cli.run import launch, open_shared_store
    from transfer_eval.methods import companions

    preset = _load(name, papers_dirs, shared["registries"], shared["tasks_dirs"], seeds)
    results_path = shared["results"] or str(paths.default_results())
    store = open_shared_store(results_path)
    runs = [r for c in preset.runnable for r in c.runs]
    pending = {r.key for r in runs if not store.has(r.key)}
    store.close()
    ctx = load_context(shared["data_dir"], shared["skip_verify"], False)
    # no job: an earlier job's model scores them
    with_others = companions.covered(runs, pending, ctx, which=shared["companions"])
    jobs = paper_jobs(preset, pending - with_others, per, {**shared, "results": str(results_path)})
    launch(jobs, len(runs), len(pending), executor, dry_run, slurm, len(with_others))


def paper_jobs(preset, pending: set, per: str, shared: dict) -> list:
    """The sweep jobs of a preset's pending runs: cells that share their settings share jobs, and each job's `run`
    command carries its cells' resolution, recipe and recipe fields beside the shared options."""
    from transfer_eval.run import sweep as sweeps

    groups: dict[tuple, list] = {}
    for c in preset.runnable:
        key = (c.resolution, c.recipe, json.dumps(c.settings, sort_keys=True))
        groups.setdefault(key, []).extend(c.runs)
    jobs = []
    for (resolution, recipe, settings), group in groups.items():
        values = {
            **shared,
            "resolution": resolution,
            "preset": recipe,
            "settings": tuple(f"{k}={json.dumps(v)}" for k, v in json.loads(settings).items()),
            "limit": None,
            "precision": "auto",
        }
        jobs += sweeps.plan_jobs(group, pending, per, shared_argv(values))
    return jobs


@paper.command("report", context_settings=CONTEXT)
@click.argument("name")
@papers_dir_option
@registry_option
@tasks_dir_option
@results_option
@seeds_option
@format_option
@output_option
def paper_report(name, papers_dirs, registries, tasks_dirs, results, seeds, fmt, output):
    """The table as the paper prints it: the paper's numbers, ours (mean +- std over seeds, n), the difference
    and a verdict (within the paper's std or the preset's tolerance, outside it, or missing)."""
    from transfer_eval import papers
    from transfer_eval.report import paper as paper_report_
    from transfer_eval.report import write_text

    preset = _load(name, papers_dirs, registries, tasks_dirs, seeds)
    store = _store_if_any(results)
    if store is None:
        click.echo(f"no results store at {results or paths.default_results()}: every cell is missing", err=True)
    outs = papers.outcomes(preset, store)
    papers.count_params(preset)  # each row's trainable backbone parameters, beside the published Params column
    text = paper_report_.render(preset, outs, fmt)
    if store is not None:
        store.close()
    if output:
        write_text(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
