"""`run` and `sweep`: adapt checkpoints to tasks here, or plan the missing runs and launch them as jobs."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from transfer_eval import paths
from transfer_eval.cli.group import cli
from transfer_eval.cli.options import (
    CONTEXT,
    device_option,
    download_option,
    executor_options,
    ints,
    json_option,
    load_context,
    overrides,
    shared_argv,
    shared_options,
)
from transfer_eval.methods.modes import MODES
from transfer_eval.store import filesystems
from transfer_eval.store.databases import is_url


@cli.command(context_settings=CONTEXT)
@click.option(
    "-c",
    "--checkpoint",
    "checkpoint_names",
    required=True,
    help="Checkpoints, comma-separated: registry names, timm architectures (random init) or arch.tag (timm's weights).",
)
@click.option(
    "-t",
    "--task",
    "task_names",
    required=True,
    help="Tasks, comma-separated (see `list tasks`): task names, group names (vtab1k: its 19 tasks), folder:PATH, "
    "hf:PATH_OR_NAME.",
)
@click.option(
    "-m", "--mode", "mode_names", required=True, help=f"Modes, comma-separated: {', '.join(MODES)} (see `list modes`)."
)
@click.option(
    "--seed",
    "--seeds",
    "seeds",
    default=None,
    help="Seed, or several comma-separated (each is stored). Default: 0,1,2 for fewshot, 0 otherwise.",
)
@device_option
@click.option("--force", is_flag=True, help="Run again even where the result is already stored.")
@download_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the runs still to do, each companion test set they score, their images and counted FLOPs; run nothing.",
)
@shared_options
@json_option
def run(checkpoint_names, task_names, mode_names, seeds, device, force, download, dry_run, as_json, **shared):
    """Adapt each checkpoint to each task in each mode; store and print the results.

    Runs whose result is already stored (same checkpoint, weights, task version, mode, recipe and seed) are
    skipped unless --force.

    \b
    Examples:
      transfer-eval run -c vit_demo_shapes -t digits -m linear,attention,full
      transfer-eval run -c deit3_s16_in1k -t cifar100 -m attention --data-dir ~/data --set steps=2000
    """
    from transfer_eval import devices, distributed
    from transfer_eval.input import pipeline
    from transfer_eval.run import runner
    from transfer_eval.store.results import Store

    o = shared
    runs = _plan(checkpoint_names, task_names, mode_names, seeds, o, download)
    dev = distributed.init(device) if distributed.launched() else devices.pick_device(device)
    ctx = load_context(o["data_dir"], o["skip_verify"], download, o["bad_images"])
    if dry_run:
        return _dry_run(runs, o["results"] or paths.default_results(), ctx, force, o["companions"])
    options = runner.Options(
        force=force,
        download=download,
        save_delta=Path(o["save_delta"]) if o["save_delta"] else None,
        checkpoint_every=o["checkpoint_every"],
        compile=o["compile_model"],
        inputs=pipeline.InputOptions(o["device_resize"], o["cache_images"], o["workers"], o["decode"]),
        log=tuple(o["trackers"]),
        log_dir=Path(o["log_dir"]),
        companions=o["companions"],
    )
    target = o["results"] or paths.default_results()
    if not is_url(str(target)) and distributed.is_main():
        filesystems.check_sqlite_store(target, many_writers=False)
    store = Store(target)
    results = runner.run_all(runs, ctx, dev, store, options, command=shlex.join(["transfer-eval", *sys.argv[1:]]))
    if distributed.is_main():
        _print_results(results, as_json)
    store.close()
    distributed.shutdown()
    if any(r.status != "ok" for r in results):
        sys.exit(1)


def _plan(checkpoint_names, task_names, mode_names, seeds, o: dict, download: bool = False):
    """The runs a run or sweep command line names (checkpoints, tasks, modes, seeds, recipe options)."""
    from transfer_eval.run import runner

    return runner.plan_named(
        checkpoint_names,
        task_names,
        mode_names,
        ints(seeds) if seeds is not None else None,
        overrides(o["settings"]),
        o["resolution"],
        o["preset"],
        o["limit"],
        o["registries"],
        o["tasks_dirs"],
        o["precision"],
        download,
    )


def _dry_run(runs, target, ctx, force: bool, which: str) -> None:
    """`run --dry-run`: each run (stored, to run, or scored with another run's model as its companion) and each
    companion test set the runs to do score besides, with their images and counted FLOPs (measure/planning.py)."""
    from tabulate import tabulate

    from transfer_eval.measure import planning
    from transfer_eval.methods import companions
    from transfer_eval.store.results import Store

    store = Store.existing(target, missing_ok=True)
    pending = {r.key for r in runs if force or store is None or not store.has(r.key)}
    found = companions.known(runs) if any(r.task.companions for r in runs) else {}
    with_others = companions.covered(runs, pending, ctx, found, which)
    flops, sizes, counted, needs, table = planning.FlopCounts(), {}, set(pending), [], []

    def row(label, what, n=None):
        images = "" if n is None or n.eval_images is None else f"{n.train_images:,} / {n.eval_images:,}"
        table.append([label, what, images, "" if n is None or n.pflops is None else f"{n.pflops:.3g}"])

    for r in runs:
        if r.key not in pending:
            row(r.label(), "stored")
            continue
        if r.task.name not in sizes:
            sizes[r.task.name] = planning.split_sizes(r.task, ctx)
        own = planning.need(r, sizes[r.task.name], flops, scored_only=r.key in with_others)
        needs.append(own)
        row(r.label(), "scored with a companion's model" if r.key in with_others else "to run", own)
        if r.key not in with_others:
            for n in planning.companion_needs(r, ctx, flops, found, which, counted, None if force else store):
                counted.add(n.run.key)
                needs.append(n)
                row(f"+ {n.run.task.name}", "companion test set, scored with the run above", n)
    if store is not None:
        store.close()
    click.echo(
        f"{len(runs)} runs planned, {len(runs) - len(pending)} stored, {len(pending)} to run; "
        f"{len(counted - pending)} companion test sets scored besides"
    )
    click.echo(tabulate(table, headers=["run", "what", "train / eval images", "PFLOPs"], disable_numparse=True))
    known = [n.pflops for n in needs if n.pflops is not None]
    unknown = f" ({len(needs) - len(known)} of unknown size not counted)" if len(known) < len(needs) else ""
    click.echo(f"To run: {sum(known):.3g} PFLOPs (counted: forward and training-step FLOPs x images){unknown}")


def _print_results(rows, as_json: bool):
    if as_json:
        for r in rows:
            click.echo(json.dumps(r.to_dict(), sort_keys=False))
        return
    from tabulate import tabulate

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}"

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    table = [
        [
            r.run_id,
            r.checkpoint,
            r.task,
            r.mode if r.shots is None else f"{r.mode} {r.shots}-shot",
            r.seed,
            pct(r.top1),
            pct(r.top5),
            pct(r.balanced_top1),
            pct(r.val_top1),
            num(r.params_per_task, ","),
            num(r.bytes_per_task and r.bytes_per_task / 2**20, ".2f"),
            num(r.train_gflops_per_image, ".3g"),
            num(r.train_seconds, ".1f"),
            num(r.peak_memory_mb, ".0f"),
            r.status,
        ]
        for r in rows
    ]
    headers = [
        "run",
        "checkpoint",
        "task",
        "mode",
        "seed",
        "top1 %",
        "top5 %",
        "balanced %",
        "val top1 %",
        "params/task",
        "MiB/task",
        "train GFLOPs/img",
        "train s",
        "peak MB",
        "status",
    ]
    click.echo(tabulate(table, headers=headers, disable_numparse=True))


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_names", required=True, help="Checkpoints, comma-separated.")
@click.option("-t", "--task", "task_names", required=True, help="Tasks or task groups, comma-separated.")
@click.option("-m", "--mode", "mode_names", required=True, help="Modes, comma-separated.")
@click.option("--seed", "--seeds", "seeds", default=None, help="Seeds, comma-separated (default per mode).")
@executor_options
@shared_options
def sweep(checkpoint_names, task_names, mode_names, seeds, per, executor, dry_run, slurm, **shared):
    """Plan every run not yet stored and launch the missing ones as jobs (locally, or on Slurm via submitit).

    All jobs write to the same results store; launching the same sweep again runs only what is still missing.

    \b
    Examples:
      transfer-eval sweep -c vit_demo,vit_demo_shapes -t digits -m linear,fewshot --dry-run
      transfer-eval sweep -c deit3_b16_in1k,dinov2_b14_lvd142m -t cifar100,flowers102 -m attention,full \\
          --data-dir ~/data --executor slurm --partition gpu
    """
    from transfer_eval.methods import companions
    from transfer_eval.run import sweep as sweeps

    runs = _plan(checkpoint_names, task_names, mode_names, seeds, shared)
    results_path = shared["results"] or str(paths.default_results())
    store = open_shared_store(results_path)
    pending = {r.key for r in runs if not store.has(r.key)}
    store.close()
    ctx = load_context(shared["data_dir"], shared["skip_verify"], False)
    # no job: an earlier job's model scores them
    with_others = companions.covered(runs, pending, ctx, which=shared["companions"])
    common = shared_argv({**shared, "results": str(results_path)})  # every job writes to this one store
    jobs = sweeps.plan_jobs(runs, pending - with_others, per, common)
    launch(jobs, len(runs), len(pending), executor, dry_run, slurm, len(with_others))


def open_shared_store(target):
    """The store every job of a sweep writes to, at once, from any node: SQLite on a network filesystem is refused."""
    from transfer_eval.store.results import Store

    if not is_url(str(target)):
        filesystems.check_sqlite_store(target, many_writers=True)
    return Store(target)


def launch(jobs, planned: int, pending: int, executor: str, dry_run: bool, slurm: dict, companion: int = 0) -> None:
    """Print the jobs, then (unless a dry run) run them here one after another or submit them to Slurm."""
    from tabulate import tabulate

    from transfer_eval.run import sweep as sweeps

    along = f" ({companion} of them scored with another job's model: companion test sets)" if companion else ""
    click.echo(f"{planned} runs planned, {planned - pending} stored, {pending} to run in {len(jobs)} jobs{along}")
    click.echo(
        tabulate(
            [[i, j.name, len(j.runs), "transfer-eval " + shlex.join(j.argv)] for i, j in enumerate(jobs, 1)],
            headers=["job", "what", "runs", "command"],
            maxcolwidths=[None, None, None, 90],
        )
    )
    if dry_run or not jobs:
        return
    if executor == "slurm":
        folder = slurm["slurm_folder"]
        ids = sweeps.launch_slurm(
            jobs,
            Path(folder),
            slurm["partition"],
            slurm["gpus_per_job"],
            slurm["cpus_per_job"],
            slurm["mem_gb"],
            slurm["timeout_min"],
        )
        click.echo(f"submitted {len(ids)} Slurm jobs: {', '.join(ids)}; logs in {folder}")
        return
    codes = sweeps.launch_local(jobs, echo=click.echo)
    if any(codes):
        click.echo(f"{sum(c != 0 for c in codes)} of {len(codes)} jobs failed", err=True)
        sys.exit(1 if all(c in (0, 1) for c in codes) else 2)
