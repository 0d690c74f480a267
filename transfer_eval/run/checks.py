"""What is checked before the first run starts (`preflight`), so that a missing dataset or a weights file that
does not fit stops the command at once rather than hours later; and the checks a single run makes again."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from transfer_eval import checkpoints
from transfer_eval.checkpoints import Checkpoint
from transfer_eval.errors import UserError
from transfer_eval.input import pipeline
from transfer_eval.methods import modes, sources
from transfer_eval.tasks import LoadContext, Task

if TYPE_CHECKING:
    from transfer_eval.run.runner import Run


def splits_read(runs: list[Run]) -> dict[str, tuple[Task, list[str]]]:
    """Each task of the runs, with the splits its runs read (in the task's order)."""
    needed: dict[str, tuple[Task, set]] = {}
    for r in runs:
        needed.setdefault(r.task.name, (r.task, set()))[1].update(r.mode.splits)
    return {name: (task, [s for s in task.splits if s in names]) for name, (task, names) in needed.items()}


def preflight(
    runs: list[Run], ctx: LoadContext, device: torch.device, inputs: pipeline.InputOptions, download: bool = False
) -> None:
    """Check everything the runs need before the first one starts, so that a missing dataset for the last task
    does not surface hours later: each task's splits (downloaded first with `download`), the own head of an
    evaluation, weights from files and URLs (loaded once: unsafe or ill-fitting files stop here) and the input
    pipeline asked for. Each task's classes are checked on the splits read here (`Task.check_classes`: two or more
    classes in train, none in val/test without training images), for every task source alike. Raises UserError;
    writes nothing."""
    for r in runs:
        if r.mode.stage == "eval":
            check_own_head(r.checkpoint, r.task)
    for ck in {r.checkpoint.name: r.checkpoint for r in runs}.values():
        if ck.weights_kind in ("file", "url"):
            first = next(r for r in runs if r.checkpoint.name == ck.name)
            checkpoints.build_model(
                ck, first.task.num_classes, first.recipe.get("resolution"), keep_head=first.mode.stage == "eval"
            )
    check_sources(runs)
    check_structures(runs)
    for task, split_names in splits_read(runs).values():
        if download:
            task.fetch(ctx)
        task.check_classes({split: task.dataset(split, ctx) for split in sorted(split_names)})
    if inputs.device_resize == "on" or inputs.decode == "device":  # refused now, not when the run comes
        for r in {(r.checkpoint.name, r.task.name, r.mode.stage, r.recipe.get("resolution")): r for r in runs}.values():
            check_inputs(r, ctx, device, inputs)


def check_structures(runs: list[Run]) -> None:
    """Each mode that changes the model's structure (`Mode.prepare`: VPT, adapters, LoRA) applied once per
    checkpoint and recipe to the architecture built on the meta device (no weights, no compute): an architecture
    the mode does not adapt, or a field that does not fit the model (a bottleneck wider than it), stops the command
    here, before the first run, rather than when that run comes."""
    done = set()
    for r in runs:
        own = tuple(str(r.recipe.get(k)) for k in sorted(r.mode.defaults))
        key = (r.checkpoint.name, r.mode.name, r.recipe.get("resolution"), own)
        if r.mode.prepare is None or key in done:
            continue
        done.add(key)
        with torch.device("meta"):
            model, _ = checkpoints.build_model(
                r.checkpoint, r.task.num_classes, r.recipe.get("resolution"), load_weights=False
            )
            modes.prepare(r.mode, model, r.recipe)


def check_inputs(run: Run, ctx: LoadContext, device: torch.device, inputs: pipeline.InputOptions) -> None:
    """Raise UserError now if the input pipeline asked for cannot serve this run (`--device-resize on` for large
    images, say), rather than when the run starts. The architecture is built on the meta device: no weights."""
    with torch.device("meta"):
        _, cfg = checkpoints.build_model(
            run.checkpoint, run.task.num_classes, run.recipe.get("resolution"), load_weights=False
        )
    cfg = run.task.input_config(cfg)
    shown = "train" if "train" in run.mode.splits else "test"
    pipeline.plan_input(
        inputs, run.task.dataset(shown, ctx), cfg, device, run.recipe if run.mode.stage == "finetune" else None
    )


def check_sources(runs: list[Run]) -> None:
    """Raise UserError now where a checkpoint cannot give a feature source its probe runs ask for (a projection it
    does not have, more blocks than it has): the architecture is built on the meta device, no weights."""
    wanted: dict[tuple, tuple[Run, set]] = {}
    for r in runs:
        names = sources.of(r.recipe) if r.mode.optional else [sources.DEFAULT]
        if names != [sources.DEFAULT]:
            wanted.setdefault((r.checkpoint.name, r.recipe.get("resolution")), (r, set()))[1].update(names)
    for r, names in wanted.values():
        with torch.device("meta"):
            model, _ = checkpoints.build_model(
                r.checkpoint, r.task.num_classes, r.recipe.get("resolution"), load_weights=False
            )
        sources.check(model, sorted(names), r.checkpoint.name, r.checkpoint.probe.get("projection"))


def check_own_head(ck: Checkpoint, task: Task) -> None:
    """Evaluating a checkpoint as it is needs its own classifier over the task's label space."""
    if ck.weights_kind == "none":
        raise UserError(
            f"checkpoint {ck.name!r} has random weights: its classifier means nothing; the "
            f"pretrained mode needs trained weights with a {task.num_classes}-class head"
        )
    if ck.weights_kind in ("timm", "hf-hub"):
        import timm

        cfg = timm.models.get_pretrained_cfg(ck.model) if ck.weights_kind == "timm" else None
        classes = getattr(cfg, "num_classes", None) if cfg is not None else None
        if classes is not None and classes != task.num_classes:
            raise UserError(
                f"checkpoint {ck.name!r} has a {classes}-class head, task {task.name!r} has "
                f"{task.num_classes} classes; evaluate it with linear, attention or full instead"
            )
        return
    path = checkpoints.weights_path_for(ck)
    head = checkpoints.head_shape(path)
    if head is None or head[0] != task.num_classes:
        raise UserError(
            f"checkpoint {ck.name!r}: {path} has no {task.num_classes}-class head"
            f"{f' (its head has {head[0]} classes)' if head else ''}; the pretrained mode evaluates "
            f"the checkpoint's own classifier"
        )
