"""What is checked before the first run starts (`preflight`), so that a missing dataset or a weights file that
does not fit stops the command at once rather than hours later; and the checks a single run makes again."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from transfer_eval import checkpoints
from transfer_eval.checkpoints import Checkpoint
from transfer_eval.errors import UserError
from transfer_eval.input import pipeline
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
    evaluation, weights from files and URLs (loaded once: unsafe or ill-fitting files stop here), the structure
    of the modes that change it and the input pipeline asked for. Raises UserError; writes nothing."""
    for r in runs:
        if r.mode.stage == "eval":
            check_own_head(r.checkpoint, r.task)
    for ck in {r.checkpoint.name: r.checkpoint for r in runs}.values():
        if ck.weights_kind in ("file", "url"):
            first = next(r for r in runs if r.checkpoint.name == ck.name)
            checkpoints.build_model(
                ck, first.task.num_classes, first.recipe.get("resolution"), keep_head=first.mode.stage == "eval"
            )
    for task, split_names in splits_read(runs).values():
        if download:
            task.fetch(ctx)
        for split in sorted(split_names):
            task.dataset(split, ctx)
    check_structure(runs)
    if inputs.device_resize == "on" or inputs.decode == "device":  # refused now, not when the run comes
        for r in {(r.checkpoint.name, r.task.name, r.mode.stage, r.recipe.get("resolution")): r for r in runs}.values():
            check_inputs(r, ctx, device, inputs)


def check_structure(runs: list[Run]) -> None:
    """Each mode that changes the model's structure (LoRA, SSF, ...) applied to its checkpoint's architecture on the
    meta device (no weights, no memory), once per checkpoint, mode and shaping fields: an architecture the mode
    refuses, or a field the architecture cannot take (a LoRA rank above the width), stops here in one line."""
    import copy

    from transfer_eval.methods import modes

    built: dict = {}
    seen = set()
    for r in runs:
        if r.mode.prepare is None:
            continue
        shape = tuple(sorted((k, str(r.recipe.get(k))) for k in r.mode.defaults))
        key = (r.checkpoint.name, r.recipe.get("resolution"), r.mode.name, shape)
        if key in seen:
            continue
        seen.add(key)
        with torch.device("meta"):
            base = key[:2]
            if base not in built:
                built[base] = checkpoints.build_model(r.checkpoint, 2, key[1], load_weights=False)[0]
            modes.prepare(r.mode, copy.deepcopy(built[base]), r.recipe)


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
