"""What is checked before the first run starts (`preflight`), so that a missing dataset or a weights file that
does not fit stops the command at once rather than hours later; and the checks a single run makes again."""

from __future__ import annotations

import dataclasses
import logging

import torch

from transfer_eval import checkpoints, distributed, provenance
from transfer_eval.checkpoints import Checkpoint
from transfer_eval.errors import UserError
from transfer_eval.input import pipeline
from transfer_eval.methods import modes, sources
from transfer_eval.run.runs import Run
from transfer_eval.store.results import Result, Store
from transfer_eval.tasks import ImageSplit, LoadContext, Task

log = logging.getLogger(__name__)


def splits_read(runs: list[Run]) -> dict[str, tuple[Task, list[str]]]:
    """Each task of the runs, with the splits its runs read (in the task's order)."""
    needed: dict[str, tuple[Task, set]] = {}
    for r in runs:
        needed.setdefault(r.task.name, (r.task, set()))[1].update(r.mode.splits)
    return {name: (task, [s for s in task.splits if s in names]) for name, (task, names) in needed.items()}


def preflight(
    runs: list[Run], ctx: LoadContext, device: torch.device, inputs: pipeline.InputOptions, download: bool = False
) -> dict[str, int]:
    """Check everything the runs need before the first one starts, so that a missing dataset for the last task
    does not surface hours later: each task's splits (downloaded first with `download`), the own head of an
    evaluation, weights from files and URLs (loaded once: unsafe or ill-fitting files stop here), the structure
    of the modes that change it and the input pipeline asked for. Each task's classes are checked on the splits read
    here (`Task.check_classes`: two or more classes in train, none in val/test without training images), for every
    task source alike. Raises UserError; writes nothing. Returns the size of each train split it read (task name ->
    images), which `fit_knn` uses rather than reading those splits again."""
    train_sizes: dict[str, int] = {}
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
    for task, split_names in splits_read(runs).values():
        if download:
            task.fetch(ctx)
        read = {split: task.dataset(split, ctx) for split in sorted(split_names)}
        task.check_classes(read)
        if "train" in read:
            train_sizes[task.name] = len(read["train"])
    check_structure(runs)
    if inputs.device_resize == "on" or inputs.decode == "device":  # refused now, not when the run comes
        for r in {(r.checkpoint.name, r.task.name, r.mode.stage, r.recipe.get("resolution")): r for r in runs}.values():
            check_inputs(r, ctx, device, inputs)
    return train_sizes


def check_structure(runs: list[Run]) -> None:
    """Each mode that changes the model's structure (LoRA, SSF, ...) applied to its checkpoint's architecture on the
    meta device (no weights, no memory), once per checkpoint, mode and shaping fields: an architecture the mode
    refuses, or a field the architecture cannot take (a LoRA rank above the width), stops here in one line."""
    import copy

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


def fit_knn(runs: list[Run], ctx: LoadContext, train_sizes: dict[str, int] | None = None) -> list[Run]:
    """k-NN runs whose k is above the size of their memory (the train split, which the val queries search; test's
    memory, train+val, is larger) with each such k clamped to that size, saying so: a larger k cannot mean what it
    says (every image of the memory votes, as k = its size does). The clamped recipe is the run's, so its key,
    its stored recipe and its leaderboard variant name the k that was used. A run whose train split cannot be read
    now is left as it is (preflight names what is missing where the run is still to do)."""
    sizes: dict[tuple, int | None] = {}
    out = []
    for r in runs:
        if r.mode.stage != "knn":
            out.append(r)
            continue
        where = (r.task.name, r.limit)
        known = (train_sizes or {}).get(r.task.name)
        if where not in sizes and known is not None:  # read by the preflight: --limit keeps min(limit, size)
            sizes[where] = known if r.limit is None else min(known, r.limit)
        if where not in sizes:
            try:
                train = r.task.dataset("train", ctx)
                sizes[where] = len(train if r.limit is None else train.limited(r.limit))
            except UserError:
                sizes[where] = None
        n, ks = sizes[where], list(r.recipe["k"])
        if n is None or max(ks) <= n:
            out.append(r)
            continue
        used = sorted({min(k, n) for k in ks})
        log.warning(
            "transfer-eval: knn k=%s is above the %s images of %s's k-NN memory (its train split%s): clamped to "
            "k=%s, which every image of the memory votes in; stored as k=%s",
            ",".join(str(k) for k in ks if k > n),
            f"{n:,}",
            r.task.name,
            f", --limit {r.limit}" if r.limit is not None else "",
            n,
            ",".join(map(str, used)),
        )
        out.append(dataclasses.replace(r, recipe={**r.recipe, "k": used}))
    return out


SHOWN_UNREADABLE = 5  # files named in the one line; the record keeps up to 100 per split


def unreadable_images(task: str, splits: dict[str, ImageSplit], first: str) -> tuple[str, dict[str, list[str]]]:
    """Under --bad-images stop, once a run has met an unreadable image (`first`, its error): every image of the
    run's splits is decoded once (kept in the cache under the files' signature, as --bad-images skip keeps it) and
    the one line names the unreadable files (the first few, and how many in all) with the first one's reason.
    Returns the line and, per split, the unreadable files (the first 100)."""
    found = {}
    for name, split in splits.items():
        bad = split.unreadable()
        if bad:
            found[name] = [split.paths[i] if split.paths is not None else f"{name} {split.ids[i]}" for i in bad]
    files = [f for names in found.values() for f in names]
    if not files:  # not a file that fails to decode here (a decoder of the device, say): the error as it came
        return first, {}
    reason = first.split("; fix or remove", 1)[0]
    reason = reason.split(": ", 1)[1] if reason.startswith("unreadable image ") and ": " in reason else reason
    total = sum(len(s) for s in splits.values())
    more = f" and {len(files) - SHOWN_UNREADABLE:,} more" if len(files) > SHOWN_UNREADABLE else ""
    line = (
        f"unreadable images in {task}: {len(files):,} of the {total:,} images of its {', '.join(found)} "
        f"split{'s' if len(found) > 1 else ''}: {', '.join(files[:SHOWN_UNREADABLE])}{more} (the first: {reason}); "
        f"fix or remove them, or rerun with --bad-images skip to leave unreadable images out"
    )
    return line, {name: names[:100] for name, names in found.items()}


def not_run(store: Store, r: Run, found: dict, command: str, prefix: str) -> Result:
    """A run that would read the unreadable images an earlier run of this command found (--bad-images stop): not
    run, stored as failed with the same reason (the next run of the command retries it), said in a short line."""
    result = Result(*r.key, recipe=r.recipe, started=provenance.now(), **provenance.fields(command))
    result.status, result.error, result.finished = "failed", found["error"], provenance.now()
    result.selection = {"unreadable": {s: v for s, v in found.items() if s != "error"}}
    if distributed.is_main():
        store.put(result)
        log.warning(
            "%s: not run: it reads the unreadable images of %s named above; stored as failed as run %s, the next "
            "run of this command retries it",
            prefix,
            r.task.name,
            result.run_id,
        )
    return result


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
