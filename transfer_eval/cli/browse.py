"""`list` (checkpoints, tasks, modes, groups) and `show`: what is registered, and one stored result."""

from __future__ import annotations

import json
from pathlib import Path

import click

from transfer_eval import paths
from transfer_eval.cli.group import cli
from transfer_eval.cli.options import CONTEXT, json_option, registry_option, results_option, tasks_dir_option
from transfer_eval.errors import UserError


@cli.group("list", context_settings=CONTEXT)
def list_():
    """List checkpoints, tasks, modes or task groups."""


@list_.command("checkpoints", context_settings=CONTEXT)
@registry_option
@json_option
def list_checkpoints(registries, as_json):
    """Registered checkpoints (`offline` where the weights need no network; `paper probe`: the features its paper
    probed, which `run --recipe paper` uses)."""
    from tabulate import tabulate

    from transfer_eval import checkpoints
    from transfer_eval.methods import sources

    registry = checkpoints.load_registry(registries)
    if as_json:
        for ck in registry.values():
            click.echo(json.dumps({**ck.to_dict(), "architecture": _architecture(ck)}))
        return
    rows = [
        [
            ck.name,
            _architecture(ck),
            ck.weights if len(ck.weights) < 40 else "..." + ck.weights[-37:],
            "yes" if ck.offline else "",
            ck.pretraining,
            ck.paper or "",
            sources.summary(ck.probe),
        ]
        for ck in registry.values()
    ]
    click.echo(
        tabulate(rows, headers=["name", "architecture", "weights", "offline", "pretraining", "paper", "paper probe"])
    )


_ARGS = {
    "img_size": "{} px",
    "patch_size": "patch {}",
    "embed_dim": "width {}",
    "depth": "depth {}",
    "num_heads": "{} heads",
}


def _architecture(ck) -> str:
    """The timm model, and where the registry resizes it (`model_args`: the demo's 16 px ViTs are not the
    vit_small_patch16_224 they are built from) what it is made into and its backbone's parameter count, counted on
    the meta device (nothing allocated or downloaded)."""
    if not ck.model_args:
        return ck.model
    import timm
    import torch

    with torch.device("meta"):
        backbone = timm.create_model(ck.architecture, pretrained=False, num_classes=0, **ck.model_args)
    params = sum(p.numel() for p in backbone.parameters())
    args = [_ARGS[k].format(v) if k in _ARGS else f"{k} {v}" for k, v in ck.model_args.items()]
    return f"{ck.architecture} as {', '.join(args)}: {params / 1e6:.1f}M params"


@list_.command("tasks", context_settings=CONTEXT)
@tasks_dir_option
@click.option(
    "-t",
    "--task",
    "task_names",
    multiple=True,
    help="Only these tasks: registered or group names, or named by where their data is: folder:PATH (an image "
    "folder), hf:PATH_OR_NAME (a Hugging Face dataset); repeat for several.",
)
@json_option
def list_tasks(tasks_dirs, task_names, as_json):
    """Tasks from the built-in plugins, installed packages and --tasks-dir folders; any image folder or Hugging
    Face dataset is a task too, named folder:PATH or hf:PATH_OR_NAME (-t shows only the tasks named).

    \b
    Examples:
      transfer-eval list tasks
      transfer-eval list tasks -t folder:~/data/birds -t hf:~/data/beans
    """
    from tabulate import tabulate

    from transfer_eval import tasks
    from transfer_eval.tasks import groups
    from transfer_eval.tasks import names as names

    found = tasks.discover(tasks_dirs)
    if task_names:  # only the tasks named, in the order named (a group's name stands for its tasks)
        named = [names.resolve(n, found) for n in groups.expand(list(task_names), found)]
        found = {t.name: t for t in named}
    if as_json:
        for t in found.values():
            click.echo(
                json.dumps(
                    {
                        "name": t.name,
                        "num_classes": t.num_classes,
                        "version": t.version,
                        "splits": list(t.splits),
                        "description": t.description,
                        "source": t.source,
                        "val_holdout": t.val_holdout,
                        "data_help": t.data_help,
                        "classes": list(t.classes) if t.classes else None,  # in label order: index i is class i
                    }
                )
            )
        return
    rows = [[t.name, t.num_classes, t.version, t.description, _short(t.source)] for t in found.values()]
    click.echo(tabulate(rows, headers=["name", "classes", "version", "description", "source"]))
    click.echo("\nClass order (label: name), as predictions and deltas index the classes:")
    click.echo(tabulate([[f"  {t.name}", class_order(t)] for t in found.values()], tablefmt="plain"))
    if not task_names:
        click.echo("\nAny data is a task too (-t NAME, and `list tasks -t NAME` to see it):")
        for prefix, what in names.SOURCES.items():
            click.echo(f"  {prefix}...  {what}")


def class_order(task, first: int = 3, last: int = 2, width: int = 28) -> str:
    """A task's classes in label order, compactly: all of a dozen or fewer, else the first and last few and the
    count; a long name is cut to `width` characters (JSON gives every name whole)."""
    if not task.classes:
        return f"not named by the task (labels 0..{task.num_classes - 1})"
    named = [f"{i}: {c!r}" if len(c) <= width else f"{i}: {c[: width - 3]!r}..." for i, c in enumerate(task.classes)]
    if len(named) <= 12:
        return ", ".join(named)
    return f"{', '.join(named[:first])}, ..., {', '.join(named[-last:])} ({len(named):,} classes)"


def _short(source: str) -> str:
    p = Path(source)
    return p.name if p.suffix == ".py" else source


@list_.command("modes", context_settings=CONTEXT)
@click.option(
    "-c",
    "--checkpoint",
    "checkpoint_name",
    default=None,
    help="Also list what each mode trains on this checkpoint's architecture (built without weights): "
    "each selector's parameter count, and with --json the parameter names.",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="With -c: the head's class count.",
)
@registry_option
@json_option
def list_modes(checkpoint_name, num_classes, registries, as_json):
    """Adaptation modes: their stage, what trains (selectors) and what one more task stores.

    \b
    Example:
      transfer-eval list modes -c vit_demo --num-classes 10
    """
    from tabulate import tabulate

    from transfer_eval.methods import modes

    found = _matches(checkpoint_name, num_classes, registries) if checkpoint_name else {}
    if as_json:
        for m in modes.MODES.values():
            row = {
                "name": m.name,
                "kind": m.stage,
                "stage": m.stage,
                "trains": list(m.trains),
                "splits": list(m.splits),
                "seeds": list(m.seeds),
                "protocol_version": m.version,
                "description": m.description,
                "stores_per_task": m.stores,
                "needs": m.needs or None,
            }
            if m.name in found:
                row["matches"] = {k: sorted(v) for k, v in found[m.name].items()}
                row["params_trainable"] = sum({n: c for v in found[m.name].values() for n, c in v.items()}.values())
            click.echo(json.dumps(row))
        return

    def trains(m):
        if m.name not in found:
            return " + ".join(m.trains) or "nothing"
        return " + ".join(f"{k} ({sum(found[m.name][k].values()):,})" for k in m.trains) or "nothing"

    click.echo(
        tabulate(
            [
                [m.name, m.stage, trains(m), m.description + (f" [needs {m.needs}]" if m.needs else ""), m.stores]
                for m in modes.MODES.values()
            ],
            headers=[
                "name",
                "stage",
                "trains (parameters)" if checkpoint_name else "trains",
                "what it does",
                "stored per extra task",
            ],
            maxcolwidths=[None, None, 40, 60, 30],
        )
    )


def _matches(checkpoint_name, num_classes, registries) -> dict[str, dict[str, dict[str, int]]]:
    """mode -> selector -> {parameter name: size} on the checkpoint's architecture, adapted as a run adapts it
    (LoRA's adapters injected); modes that do not apply to it are left out."""
    import copy

    import torch

    from transfer_eval import checkpoints
    from transfer_eval.methods import modes

    ck = checkpoints.resolve(checkpoint_name, checkpoints.load_registry(registries))
    with torch.device("meta"):
        model, _ = checkpoints.build_model(ck, num_classes, load_weights=False)
        out = {}
        for m in modes.MODES.values():
            try:  # a mode that does not apply to this architecture (no attention, not a ViT) is left out
                adapted = modes.prepare(m, copy.deepcopy(model))
                sizes = {n: p.numel() for n, p in adapted.named_parameters()}
                out[m.name] = {k: {n: sizes[n] for n in v} for k, v in modes.matches(m, adapted).items()}
            except (ValueError, UserError):
                continue
    return out


@cli.command(context_settings=CONTEXT)
@click.argument("run_id", type=int)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw the run's reliability diagram (from its stored test probabilities) beside its training curves "
    "(fine-tuning: loss and lr per phase) to this .png, .svg or .pdf.",
)
@click.option(
    "--predictions",
    "predictions_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the run's per-sample test predictions to this file: id (the position in the test split), "
    "label, top-5 class indices and, where the mode gives them, their probabilities and the label's; CSV, or "
    "JSON Lines where FILE ends in .jsonl.",
)
@results_option
@json_option
def show(run_id, plot, predictions_file, results, as_json):
    """Every field of one stored result (its calibration too: ece, nll, the temperature fitted on val, and both
    after scaling).

    \b
    Example:
      transfer-eval show 3 --plot run3.png
      transfer-eval show 3 --predictions preds.csv
    """
    from transfer_eval import report
    from transfer_eval.report import predictions
    from transfer_eval.store.results import Store

    if plot:
        report.check_plot_path(plot)
    store = Store(results or paths.default_results())
    r = store.get(run_id)
    probs = store.probabilities(run_id) if r is not None else None
    stored = store.predictions(run_id) if r is not None and (predictions_file or probs is not None) else None
    store.close()
    if r is None:
        raise UserError(
            f"no run {run_id} in {results or paths.default_results()}; `transfer-eval run ... --json` prints run ids"
        )
    if predictions_file and stored is None:
        raise UserError(f"run {run_id} has no stored predictions (status {r.status}): only a scored run has them")
    missing = []
    if plot:  # refused before anything is printed where the run has nothing to draw
        missing = report.plot_run(r, plot, probs, stored)
    if predictions_file:
        n = predictions.write(predictions_file, predictions.columns(*stored, probs))
        click.echo(f"wrote {n:,} test predictions of run {run_id} to {predictions_file}", err=True)
    d = r.to_dict()
    if as_json:
        click.echo(json.dumps(d))
    else:
        width = max(len(k) for k in d)
        for k, v in d.items():
            if k == "curves" and v:
                v = (
                    ", ".join(f"{name}: {len(c['step'])} points" for name, c in v["phases"].items())
                    + f" (every {v['every']} steps; `show {run_id} --plot FILE` draws them)"
                )
            elif isinstance(v, (dict, list)):
                v = json.dumps(v, sort_keys=True)
            click.echo(f"{k:<{width}}  {v}")
        shown = None
        if probs is not None:
            shown = f"{len(probs):,} x 6 (top-5, true class; `show {run_id} --plot FILE` draws the reliability diagram)"
        click.echo(f"{'probabilities':<{width}}  {shown}")
    for line in missing:
        click.echo(line, err=True)
    if plot:
        click.echo(f"wrote {plot}", err=True)


@list_.command("groups", context_settings=CONTEXT)
@json_option
def list_groups(as_json):
    """Task groups: the leaderboard's mean (--group), and a name for all their tasks (`run -t vtab1k`)."""
    from tabulate import tabulate

    from transfer_eval.tasks.groups import GROUPS

    if as_json:
        for g in GROUPS.values():
            parts = {p: list(ts) for p, ts in g.parts}
            click.echo(
                json.dumps({"name": g.name, "tasks": list(g.tasks), "parts": parts, "description": g.description})
            )
        return
    rows = []
    for g in GROUPS.values():
        tasks = "; ".join(f"{p}: {', '.join(ts)}" for p, ts in g.parts) if g.parts else ", ".join(g.tasks)
        rows.append([g.name, tasks, g.description])
    click.echo(tabulate(rows, headers=["name", "tasks", "description"], maxcolwidths=[None, 70, 50]))
