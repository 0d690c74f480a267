"""Companion test sets: one fine-tuned model scored on several test splits, trained once.

A task may name `companions`: tasks whose train and val are its own (the same images, labels, hold-out and
recipes) and which differ only in their test split, as ImageNet-V2's three variants do from ImageNet-1k (they
train on ImageNet-1k train and select on its minival). Fine-tuning on the task then also scores the trained model
on each companion's test split and stores that result under the companion's own run key (the protocol hash is the
same, since the recipe is), with `selection["model_of_run"]` naming the run that trained it. A separate run of the
companion would train the same model again; `covered` tells a sweep (or `paper run`) which of its pending runs a
companion scoring will store, so that they get no job of their own.
"""

from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger(__name__)


def compatible(task, companion) -> bool:
    """Whether `companion` trains exactly as `task` does: same classes, recipes and val hold-out."""
    return (
        companion.num_classes == task.num_classes
        and companion.recipes == task.recipes
        and companion.val_holdout == task.val_holdout
    )


def runs_for(run, found: dict) -> list:
    """The companion runs of a fine-tuning run: same checkpoint, weights, mode, recipe and seed, the companion's
    task. A companion that is not a known, compatible task is left out (saying so)."""
    if run.mode.stage != "finetune":
        return []
    out = []
    for name in run.task.companions:
        companion = found.get(name)
        if companion is None or not compatible(run.task, companion):
            log.warning(
                "transfer-eval: task %s names companion %s, which is not a task training as it does",
                run.task.name,
                name,
            )
            continue
        out.append(dataclasses.replace(run, task=companion))
    return out


def known(runs: list) -> dict:
    """The tasks a companion may be: the built-in and installed ones, and those of the runs (plugins included)."""
    from transfer_eval import tasks

    return {**tasks.discover(), **{r.task.name: r.task for r in runs}}


def covered(runs: list, pending: set, ctx=None, found: dict | None = None) -> set:
    """Keys of the pending runs that an earlier pending fine-tuning run of `runs` will store as its companions
    (with `ctx`, only companions whose test split is here; `found`: the known tasks, if looked up already).
    Deterministic: every process of a run computes the same set."""
    from transfer_eval.errors import UserError

    if not any(r.task.companions for r in runs if r.key in pending):
        return set()
    found = found or known(runs)
    out, ready = set(), {}
    for r in runs:
        if r.key not in pending or r.key in out:
            continue
        for c in runs_for(r, found):
            if c.key not in pending or c.key == r.key:
                continue
            if ctx is not None and c.task.name not in ready:
                try:
                    ready[c.task.name] = bool(len(c.task.dataset("test", ctx)))
                except UserError:
                    ready[c.task.name] = False
            if ctx is None or ready[c.task.name]:
                out.add(c.key)
    return out


def score(run, result, model, cfg, ctx, device, store, options, found: dict | None = None) -> list:
    """Score the trained `model` on each companion's test split and store each result (the companions whose data
    is here and whose result is not stored yet, unless `options.force`; `found`: the known tasks, if looked up
    already). `result` is the run's own, stored."""
    from transfer_eval.errors import UserError
    from transfer_eval.input import pipeline
    from transfer_eval.methods import inference

    if run.mode.stage != "finetune" or not run.task.companions:
        return []
    out = []
    for comp in runs_for(run, found or known([run])):
        if store.has(comp.key) and not options.force:
            continue
        try:
            test = comp.task.dataset("test", ctx)
        except UserError as e:
            log.info("transfer-eval: companion %s not scored: %s", comp.task.name, e)
            continue
        if comp.limit is not None:
            test = test.limited(comp.limit)
        plan = pipeline.plan_input(options.inputs, test, cfg, device, None)
        bs = inference.eval_batch_size(run.recipe)
        top5, seconds = inference.predict(
            model, test, cfg, device, bs, plan, desc=f"test {comp.task.name}", classes=comp.task.scored_classes
        )
        labels = inference.truth(test)
        r = dataclasses.replace(
            result,
            task=comp.task.name,
            task_version=comp.task.version,
            run_id=None,
            n_test=len(test),
            split_manifest=test.manifest(),
            **inference.scores(labels, top5),
            eval_images_per_second=len(test) / seconds if seconds else None,
            selection={**(result.selection or {}), "model_of_run": result.run_id, "trained_for": run.task.name},
        )
        store.put(r, labels, top5)
        log.info(
            "transfer-eval: also scored on %s (the same model): top-1 %.2f%%, stored as run %s",
            comp.task.name,
            100 * r.top1,
            r.run_id,
        )
        out.append(r)
    return out
