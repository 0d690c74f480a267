"""The command line: parse, call the library, print. Exit status: 0 done, 1 a run failed, 2 bad input."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from transfer_eval import paths
from transfer_eval.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise UserError(f"--seed {value!r}: give integers separated by commas, e.g. 0,1,2") from None


def _overrides(pairs) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: use key=value, e.g. --set lr=0.003 or --set steps=500")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {pair!r}: the value is not valid YAML") from None
    return out


registry_option = click.option("--registry", "registries", multiple=True, type=click.Path(dir_okay=False),
                               help="A YAML file of extra or overriding checkpoints (repeatable; also "
                                    "TRANSFER_EVAL_REGISTRY).")
tasks_dir_option = click.option("--tasks-dir", "tasks_dirs", multiple=True, type=click.Path(file_okay=False),
                                help="A folder of task plugin files (*.py) to add (repeatable).")
results_option = click.option("--results", type=click.Path(dir_okay=False), default=None,
                              help="Results database (SQLite). Default: $TRANSFER_EVAL_RESULTS or "
                                   "./transfer_eval_results.sqlite.")
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                               help="Root folder of the datasets. Default: $TRANSFER_EVAL_DATA or ./data.")
device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (CUDA if visible, else CPU), cpu, cuda or cuda:N.")
skip_verify_option = click.option("--skip-verify", is_flag=True,
                                  help="Do not check dataset checksums (re-packed copies, test fixtures).")
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line, flat record fields.")


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="transfer-eval")
def cli():
    """transfer-eval: how well does a ViT checkpoint transfer, and at what cost?

    Adapt checkpoints (timm ViTs) to tasks (labelled image datasets) in modes (linear probe, attention-only or
    full fine-tuning); every result stores test accuracy beside compute (FLOPs, time, memory) and
    parameter-sharing cost (what one more task must store).

    \b
    Try it offline, in about a minute on a laptop CPU:
      transfer-eval run -c vit_demo -t digits -m linear,attention,full
      transfer-eval list checkpoints
      transfer-eval show 1
    """


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_names", required=True,
              help="Checkpoints, comma-separated: registry names, timm architectures (random init) or "
                   "arch.tag (timm's weights).")
@click.option("-t", "--task", "task_names", required=True, help="Tasks, comma-separated (see `list tasks`).")
@click.option("-m", "--mode", "mode_names", required=True,
              help="Modes, comma-separated: linear, attention, full (see `list modes`).")
@data_dir_option
@results_option
@registry_option
@tasks_dir_option
@device_option
@click.option("--seed", "seeds", default="0", show_default=True, help="Seed, or several comma-separated.")
@click.option("--resolution", type=click.IntRange(min=16), default=None,
              help="Input size in pixels (e.g. 384); the position embedding is resampled by timm.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set steps=500 --set lr=0.003 (repeatable).")
@click.option("--force", is_flag=True, help="Run again even where the result is already stored.")
@skip_verify_option
@json_option
def run(checkpoint_names, task_names, mode_names, data_dir, results, registries, tasks_dirs, device, seeds,
        resolution, settings, force, skip_verify, as_json):
    """Adapt each checkpoint to each task in each mode; store and print the results.

    Runs whose result is already stored (same checkpoint, weights, task version, mode, recipe and seed) are
    skipped unless --force.

    \b
    Examples:
      transfer-eval run -c vit_demo -t digits -m linear,attention,full
      transfer-eval run -c deit3_s16_in1k -t cifar100 -m attention --data-dir ~/data --set steps=2000
    """
    from transfer_eval import checkpoints, data, modes, runner, tasks
    from transfer_eval.results import Store
    from transfer_eval.tasks import LoadContext

    registry = checkpoints.load_registry(registries)
    ckpts = [checkpoints.resolve(n, registry) for n in _csv(checkpoint_names)]
    known_tasks = tasks.discover(tasks_dirs)
    task_list = [tasks.resolve(n, known_tasks) for n in _csv(task_names)]
    mode_list = [modes.resolve(n) for n in _csv(mode_names)]
    seed_list = _ints(seeds)
    if not (ckpts and task_list and mode_list and seed_list):
        raise UserError("give at least one checkpoint (-c), task (-t), mode (-m) and seed")
    dev = data.pick_device(device)
    runs = runner.plan(ckpts, task_list, mode_list, seed_list, _overrides(settings), resolution)
    ctx = LoadContext(Path(data_dir) if data_dir else paths.default_data_dir(), verify=not skip_verify)
    store = Store(results or paths.default_results())
    command = shlex.join(["transfer-eval", *sys.argv[1:]])
    # Check the data of every task still to run before the first run starts: a missing dataset for the last
    # task should not surface hours later.
    for task in {r.task.name: r.task for r in runs if force or not store.has(r.key)}.values():
        for split in task.splits:
            task.dataset(split, ctx)
    shown, failed = [], 0
    for i, r in enumerate(runs, 1):
        prefix = f"[{i}/{len(runs)}] {r.label()}"
        if not force and store.has(r.key):
            stored = store.get_key(r.key)
            click.echo(f"{prefix}: stored as run {stored.run_id}, skipped (--force to run again)", err=True)
            shown.append(stored)
            continue
        click.echo(f"{prefix}: running on {dev}", err=True)
        result = runner.execute(r, ctx, dev, store, command, log=click.echo)
        failed += result.status != "ok"
        shown.append(result)
    _print_results(shown, as_json)
    store.close()
    if failed:
        sys.exit(1)


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

    table = [[r.run_id, r.checkpoint, r.task, r.mode, r.seed, pct(r.top1), pct(r.top5), pct(r.val_top1),
              num(r.params_per_task, ","), num(r.bytes_per_task and r.bytes_per_task / 2**20, ".2f"),
              num(r.train_gflops_per_image, ".3g"), num(r.train_seconds, ".1f"), num(r.peak_memory_mb, ".0f"),
              r.status] for r in rows]
    headers = ["run", "checkpoint", "task", "mode", "seed", "top1 %", "top5 %", "val top1 %", "params/task",
               "MiB/task", "train GFLOPs/img", "train s", "peak MB", "status"]
    click.echo(tabulate(table, headers=headers, disable_numparse=True))


@cli.group("list", context_settings=CONTEXT)
def list_():
    """List checkpoints, tasks or modes."""


@list_.command("checkpoints", context_settings=CONTEXT)
@registry_option
@json_option
def list_checkpoints(registries, as_json):
    """Registered checkpoints (`offline` where the weights need no network)."""
    from tabulate import tabulate

    from transfer_eval import checkpoints

    registry = checkpoints.load_registry(registries)
    if as_json:
        for ck in registry.values():
            click.echo(json.dumps(ck.to_dict()))
        return
    rows = [[ck.name, ck.model, ck.weights if len(ck.weights) < 40 else "..." + ck.weights[-37:],
             "yes" if ck.offline else "", ck.pretraining, ck.paper or ""] for ck in registry.values()]
    click.echo(tabulate(rows, headers=["name", "timm model", "weights", "offline", "pretraining", "paper"]))


@list_.command("tasks", context_settings=CONTEXT)
@tasks_dir_option
@json_option
def list_tasks(tasks_dirs, as_json):
    """Tasks from the built-in plugins, installed packages and --tasks-dir folders."""
    from tabulate import tabulate

    from transfer_eval import tasks

    found = tasks.discover(tasks_dirs)
    if as_json:
        for t in found.values():
            click.echo(json.dumps({"name": t.name, "num_classes": t.num_classes, "version": t.version,
                                   "splits": list(t.splits), "description": t.description, "source": t.source,
                                   "val_holdout": t.val_holdout, "data_help": t.data_help}))
        return
    rows = [[t.name, t.num_classes, t.version, t.description, _short(t.source)] for t in found.values()]
    click.echo(tabulate(rows, headers=["name", "classes", "version", "description", "source"]))


def _short(source: str) -> str:
    p = Path(source)
    return p.name if p.suffix == ".py" else source


@list_.command("modes", context_settings=CONTEXT)
@json_option
def list_modes(as_json):
    """Adaptation modes."""
    from tabulate import tabulate

    from transfer_eval.modes import MODES

    if as_json:
        for m in MODES.values():
            click.echo(json.dumps({"name": m.name, "kind": m.kind, "description": m.description,
                                   "stores_per_task": m.stores}))
        return
    click.echo(tabulate([[m.name, m.kind, m.description, m.stores] for m in MODES.values()],
                        headers=["name", "kind", "what trains", "stored per extra task"]))


@cli.command(context_settings=CONTEXT)
@click.argument("run_id", type=int)
@results_option
@json_option
def show(run_id, results, as_json):
    """Every field of one stored result."""
    from transfer_eval.results import Store

    store = Store(results or paths.default_results())
    r = store.get(run_id)
    store.close()
    if r is None:
        raise UserError(f"no run {run_id} in {results or paths.default_results()}; "
                        f"`transfer-eval run ... --json` prints run ids")
    d = r.to_dict()
    if as_json:
        click.echo(json.dumps(d))
        return
    width = max(len(k) for k in d)
    for k, v in d.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, sort_keys=True)
        click.echo(f"{k:<{width}}  {v}")


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_name", required=True, help="A checkpoint (one).")
@click.option("-t", "--task", "task_name", required=True, help="A task (one).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), required=True)
@click.option("--output", type=click.Path(dir_okay=False), required=True, help="The .npz file to write.")
@click.option("--resolution", type=click.IntRange(min=16), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@data_dir_option
@registry_option
@tasks_dir_option
@device_option
@skip_verify_option
def features(checkpoint_name, task_name, split, output, resolution, batch_size, data_dir, registries,
             tasks_dirs, device, skip_verify):
    """Write the pre-logits features the probes use: an .npz with `features` (N x D float32) and `labels`.

    Rows are in the split's order, the order the probes sample from.
    """
    import os

    import numpy as np

    from transfer_eval import checkpoints, data, probe, tasks
    from transfer_eval.tasks import LoadContext

    ck = checkpoints.resolve(checkpoint_name, checkpoints.load_registry(registries))
    task = tasks.resolve(task_name, tasks.discover(tasks_dirs))
    ctx = LoadContext(Path(data_dir) if data_dir else paths.default_data_dir(), verify=not skip_verify)
    dev = data.pick_device(device)
    ds = task.dataset(split, ctx)
    model, cfg = checkpoints.build_model(ck, task.num_classes, resolution)
    feats, labels = probe.extract_features(model, ds, cfg, dev, batch_size, desc=f"features {split}")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part.npz")
    np.savez(tmp, features=feats, labels=labels, ids=np.asarray(ds.ids))
    os.replace(tmp, out)  # never leave a half-written file under the requested name
    click.echo(f"wrote {out}: features {feats.shape[0]} x {feats.shape[1]} float32, labels {len(labels)}")


def main():
    try:
        cli.main(prog_name="transfer-eval", standalone_mode=False)
    except UserError as e:
        click.echo(f"transfer-eval: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("transfer-eval: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
