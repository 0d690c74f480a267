"""Companion test sets: one trained model (or probe, or k-NN memory) scored on several test splits, trained once.

A task may name `companions`: tasks whose train and val are its own (the same images, labels, hold-out and
recipes) and which differ only in their test split, as ImageNet-V2's three variants and ImageNet's other test sets
do from ImageNet-1k (they train on ImageNet-1k train and select on its minival). A run of the task, in any mode,
then also scores what it trained on each companion's test split whose data is here, through the run's own scorer
(methods/scoring.py: the deployed model, or the probe or memory on the set's features, cached per set as test's
are; the companion's `scored_classes` masked before top-k; its probabilities at the run's temperature), and stores
that result under the companion's own run key (the protocol hash is the same, since the recipe is), with
`selection["model_of_run"]` naming the run that trained it. Nothing is fitted or trained again: a set adds only
its own images' scoring (feature extraction) time. `which` (`--companions`) chooses them: all (the default),
none, or a comma-separated list of task names. A separate run of the companion would train the same model again;
`covered` tells a sweep (or `paper run`) which of its pending runs a companion scoring will store, so that they
get no job of their own.
"""

from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger(__name__)
ALL, NONE = "all", "none"  # --companions: every companion (whose data is here), or none


def compatible(task, companion) -> bool:
    """Whether `companion` trains exactly as `task` does: same classes, recipes and val hold-out."""
    return (
        companion.num_classes == task.num_classes
        and companion.recipes == task.recipes
        and companion.val_holdout == task.val_holdout
    )


def chosen(which) -> set | None:
    """The companion task names `which` (--companions: all, none, or names comma-separated) keeps; None: all."""
    names = which if isinstance(which, (list, tuple, set)) else str(which or ALL).split(",")
    names = {n.strip() for n in names if n.strip()}
    return None if names == {ALL} else set() if names == {NONE} else names


def check(which, runs: list) -> None:
    """A --companions list names companions of the runs' tasks, else one line of bad input."""
    from transfer_eval.errors import UserError

    names = chosen(which)
    if not names:
        return
    if names & {ALL, NONE}:
        raise UserError(f"--companions {which}: give all, none, or task names (not mixed with all or none)")
    offered = sorted({c for r in runs for c in r.task.companions})
    other = sorted(names - set(offered))
    if other:
        tasks = ", ".join(sorted({r.task.name for r in runs}))
        raise UserError(
            f"--companions: {', '.join(other)} is no companion test set of {tasks} (they have: "
            f"{', '.join(offered) or 'none'}); give all, none, or some of those"
        )


def runs_for(run, found: dict, which=ALL) -> list:
    """The companion runs of a run, in any mode: same checkpoint, weights, mode, recipe and seed, the companion's
    task; those `which` keeps (`chosen`). A companion that is not a known, compatible task is left out (saying
    so)."""
    keep = chosen(which)
    out = []
    for name in run.task.companions:
        if keep is not None and name not in keep:
            continue
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
    """The tasks a companion may be: the built-in and installed ones, those of the folders the runs' plugin files
    are in (a --tasks-dir plugin's companions beside it), and those of the runs."""
    from pathlib import Path

    from transfer_eval import paths, tasks

    builtin = Path(paths.builtin("tasks")).resolve()
    folders = {Path(r.task.source).resolve().parent for r in runs if r.task.source.endswith(".py")}
    return {**tasks.discover(sorted(str(f) for f in folders - {builtin})), **{r.task.name: r.task for r in runs}}


def covered(runs: list, pending: set, ctx=None, found: dict | None = None, which=ALL) -> set:
    """Keys of the pending runs that an earlier pending run of `runs` (any mode) will store as its companions
    (those `which` keeps; with `ctx`, only companions whose test split is here; `found`: the known tasks, if
    looked up already). Deterministic: every process of a run computes the same set."""
    from transfer_eval.errors import UserError

    check(which, runs)
    if not any(r.task.companions for r in runs if r.key in pending):
        return set()
    found = found or known(runs)
    out, ready = set(), {}
    for r in runs:
        if r.key not in pending or r.key in out:
            continue
        for c in runs_for(r, found, which):
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


def score(run, result, scorer, cfg, ctx, device, store, options, found: dict | None = None) -> list:
    """Score each companion's test split with the run's `scorer` (methods/scoring.py: what the run scored its own
    test with) and store each result (the companions `options.companions` keeps whose data is here and whose result
    is not stored yet, unless `options.force`; `found`: the known tasks, if looked up already). `result` is the
    run's own, stored: a companion's keeps its temperature, training figures and selection."""
    from transfer_eval.errors import UserError
    from transfer_eval.input import pipeline
    from transfer_eval.methods import inference, scoring

    if not run.task.companions:
        return []
    out = []
    for comp in runs_for(run, found or known([run]), options.companions):
        if store.has(comp.key) and not options.force:
            continue
        try:
            test = comp.task.dataset("test", ctx)
        except UserError as e:
            log.info("transfer-eval: companion %s not scored: %s", comp.task.name, e)
            continue
        if comp.limit is not None:
            test = test.limited(comp.limit)
        try:
            inputs = pipeline.plan_input(options.inputs, test, cfg, device, None)
        except UserError as e:  # e.g. --decode device on a set whose images are edited on the host (ObjectNet)
            log.warning("transfer-eval: companion %s not scored: %s", comp.task.name, e)
            continue
        scored = scorer(test, comp.task, inputs)
        labels = inference.truth(test)
        r = dataclasses.replace(
            result,
            task=comp.task.name,
            task_version=comp.task.version,
            run_id=None,
            n_test=len(test),
            split_manifest=test.manifest(),
            **scoring.fields(scored, labels, result.temperature),
            eval_images_per_second=len(test) / scored.seconds if scored.seconds else None,
            selection={**(result.selection or {}), "model_of_run": result.run_id, "trained_for": run.task.name},
        )
        store.put(r, labels, scored.top5, scored.probs)
        log.info(
            "transfer-eval: also scored on %s (the same model): top-1 %.2f%%, stored as run %s",
            comp.task.name,
            100 * r.top1,
            r.run_id,
        )
        out.append(r)
    return out
