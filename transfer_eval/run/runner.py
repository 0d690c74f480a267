"""Plans runs (checkpoint x task x mode x seed), checks them before the first starts, and drives each one end to end
into a stored Result: `run_all` is what `transfer-eval run` runs, for the CLI and for Python callers alike.

One run is a flat sequence (`execute`): read the splits, build and adapt the model, run the mode's stage (which
returns a `Trained`), score test once, measure, store. The stages know nothing of results or stores.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import torch

from transfer_eval import checkpoints, devices, distributed
from transfer_eval.checkpoints import Checkpoint
from transfer_eval.errors import UserError
from transfer_eval.methods import companions, finetune, knn, modes, presets, sources
from transfer_eval.methods.fields import checked_fields
from transfer_eval.methods.modes import Mode
from transfer_eval.methods.resume import Preempted, requested, stop_on_signal
from transfer_eval.run import checks, locks, stages, trackers
from transfer_eval.run.execution import Options, execute
from transfer_eval.run.runs import Run
from transfer_eval.store.results import Result, Store
from transfer_eval.tasks import LoadContext, Task, groups

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ recipes


def _finetune_only(mode: Mode) -> set[str]:
    """Recipe fields that belong to other fine-tuning modes (lora_rank, lora_alpha), not to this one."""
    others = {k for m in modes.MODES.values() if m.stage == "finetune" for k in m.defaults}
    return others - set(mode.defaults)


def resolve_recipe(
    task: Task, mode: Mode, overrides: dict | None = None, resolution: int | None = None, preset: str | None = None
) -> dict:
    """The full recipe of a run: the mode's defaults (and, fine-tuning, the preset's), then the task's fields for
    the mode, then the user's overrides (--set, --resolution)."""
    overrides = dict(overrides or {})
    if resolution:
        overrides["resolution"] = resolution
    if mode.stage != "finetune":
        merged = {**mode.defaults, **task.recipes.get(mode.name, {}), **overrides}
        unknown = sorted(set(merged) - recipe_fields(mode))
        if unknown:
            raise UserError(
                f"unknown {mode.name} recipe field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(recipe_fields(mode)))}"
            )
        merged = checked_fields(merged)  # type, range, a list only where the field takes one (methods/fields.py)
        if mode.optional:  # features, normalise: at their defaults left out, so that earlier runs keep their keys
            merged = sources.canonical(merged)
        if "c_grid" in merged:
            merged["c_grid"] = [float(c) for c in merged["c_grid"]]
        if "shots" in merged:
            merged["shots"] = merged["shots"] if isinstance(merged["shots"], list) else [merged["shots"]]
            merged["l2"] = float(merged["l2"])
        if "k" in merged:  # k-NN: one k, or a grid chosen on val
            merged["k"] = knn.ks_of(merged["k"])
            merged["temperature"] = float(merged["temperature"])
        return merged
    # a mode the task gives no recipe for (ffn, bitfit) takes its generic fine-tuning one, else full's
    task_fields = task.recipes.get(mode.name) or task.recipes.get("finetune") or task.recipes.get("full", {})
    preset = preset or task_fields.get("preset") or "vit"  # the task's own protocol unless another is chosen
    fields = {**presets.preset_fields(preset, task_fields), **mode.defaults, **overrides}
    foreign = sorted(k for k in _finetune_only(mode) if fields.get(k) is not None)
    if foreign:
        owners = sorted(m.name for m in modes.MODES.values() if set(foreign) & set(m.defaults))
        raise UserError(f"{' and '.join(foreign)} apply to mode {', '.join(owners)} only, not {mode.name}")
    unknown = sorted(set(fields) - recipe_fields(mode) - _finetune_only(mode))
    if unknown:
        raise UserError(
            f"unknown {mode.name} recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(recipe_fields(mode)))}"
        )
    # checked before anything reads them (scale_lr reads batch_size); another mode's fields, unset, stay as they are
    fields = {**fields, **checked_fields({k: v for k, v in fields.items() if k not in _finetune_only(mode)})}
    fields = presets.scale_lr(preset, fields, overrides)
    # the mode's own fields beyond finetune.Recipe's (lora_targets, ...) stay beside it, in this mode's recipe only,
    # so the recipes (and protocol hashes) of the other fine-tuning modes do not change when a mode gains one
    own = {k: fields.pop(k) for k in list(fields) if k in mode.defaults and k not in stages.RECIPE_FIELDS}
    return _jsonable({**dataclasses.asdict(finetune.make_recipe(fields)), **own})


def recipe_fields(mode: Mode) -> set[str]:
    """The recipe fields a mode has (what --set may change for it)."""
    if mode.stage != "finetune":
        return set(mode.defaults) | set(mode.optional)
    return ({f.name for f in dataclasses.fields(finetune.Recipe)} | set(mode.defaults)) - _finetune_only(mode)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def plan(
    ckpts: list[Checkpoint],
    tasks: list[Task],
    mode_list: list[Mode],
    seeds: list[int] | None = None,
    overrides: dict | None = None,
    resolution: int | None = None,
    preset: str | None = None,
    limit: int | None = None,
    precision: str = "auto",
) -> list[Run]:
    """Every run of checkpoints x tasks x modes x seeds; a few-shot mode becomes one run per shot count.
    Without `seeds`, each mode's default seeds (three for few-shot, one otherwise)."""
    devices.precision_policy(precision, torch.device("cpu"))  # a bad name stops here
    runs = []
    overrides = dict(overrides or {})
    known = set().union(*(recipe_fields(m) for m in mode_list)) if mode_list else set()
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(
            f"unknown recipe field(s) {', '.join(unknown)} for mode(s) "
            f"{', '.join(m.name for m in mode_list)}; known: {', '.join(sorted(known))}"
        )
    planned, unprobed = [], {}  # (checkpoint, task, mode, recipes); checkpoint -> {mode without a paper probe: recipe}
    for ck in ckpts:
        for task in tasks:
            for mode in mode_list:
                mine = {k: v for k, v in overrides.items() if k in recipe_fields(mode)}  # each mode its own fields
                own = preset
                if preset == presets.PAPER:  # the probe the checkpoint's paper made (registry); --set still wins
                    probe = paper_probe(ck, mode)
                    mine, own = {**probe, **mine}, None
                recipe = resolve_recipe(task, mode, mine, resolution, own)
                if mode.check is not None:
                    mode.check(recipe)
                if preset == presets.PAPER and mode.optional and not probe:  # said below, once per checkpoint
                    unprobed.setdefault(ck.name, {})[mode.name] = recipe
                recipes = [{**recipe, "shots": k} for k in recipe["shots"]] if mode.stage == "fewshot" else [recipe]
                if mode.stage == "fewshot" and isinstance(recipe.get("features"), list):
                    # no val to choose a source on: each source is a run (and a leaderboard row) of its own
                    recipes = [sources.canonical({**r, "features": f}) for r in recipes for f in recipe["features"]]
                planned.append((ck, task, mode, recipes))
    for name, missed in unprobed.items():
        used = sources.describe(next(iter(missed.values())))  # (--set gives each probe mode the same source)
        log.info(
            "--recipe paper: %s has no paper probe for %s (the registry's `probe`, `list checkpoints`), so %s",
            name,
            ", ".join(missed),
            f"{'it reads' if len(missed) == 1 else 'they read'} "
            + (f"{used}, as the recipe says" if used else "the default features: pooled, not normalised"),
        )
    digests = {ck.name: checkpoints.weights_digest(ck) for ck in ckpts}  # after every recipe is checked
    for ck, task, mode, recipes in planned:
        for r in recipes:
            for seed in seeds or mode.seeds:
                runs.append(Run(ck, task, mode, seed, r, digests[ck.name], limit, precision))
    return runs


def paper_probe(ck: Checkpoint, mode: Mode) -> dict:
    """The recipe fields of `mode` that the checkpoint's paper probed with (the registry's `probe`), or none."""
    return dict(ck.probe.get(mode.name) or {}) if mode.optional else {}


def names(value) -> list:
    """ "a,b", ["a", "b"] or objects: the list of names or objects a caller gave."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def plan_named(
    checkpoint_names,
    task_names,
    mode_names,
    seeds: list[int] | None = None,
    overrides: dict | None = None,
    resolution: int | None = None,
    preset: str | None = None,
    limit: int | None = None,
    registries=(),
    tasks_dirs=(),
    precision: str = "auto",
    download: bool = False,
) -> list[Run]:
    """`plan` over names as a user gives them (registry names, timm names, task names, task group names,
    `folder:PATH` and `hf:...` tasks, mode names, comma-separated or as lists) or the objects themselves
    (Checkpoint, Task, Mode): what `run` and `evaluate` plan. `download`: a Hub dataset named as a task may be
    fetched."""
    from transfer_eval import tasks as task_registry  # (`plan` names its task list `tasks`)
    from transfer_eval.tasks import names as by_name  # (the parameter is `task_names`)

    registry = checkpoints.load_registry(registries)
    ckpts = [c if isinstance(c, Checkpoint) else checkpoints.resolve(c, registry) for c in names(checkpoint_names)]
    wanted = names(task_names)
    registered = [t for t in wanted if not isinstance(t, Task) and not by_name.is_source(t)]
    known = task_registry.discover(tasks_dirs) if registered else {}
    wanted_tasks = groups.expand(wanted, known)  # a group's name stands for its tasks (-t vtab1k)
    task_list = [t if isinstance(t, Task) else by_name.resolve(t, known, download) for t in wanted_tasks]
    mode_list = [m if isinstance(m, Mode) else modes.resolve(m) for m in names(mode_names)]
    if not (ckpts and task_list and mode_list and (seeds is None or list(seeds))):
        raise UserError("give at least one checkpoint (-c), task (-t), mode (-m) and seed")
    seed_list = list(seeds) if seeds is not None else None
    return plan(ckpts, task_list, mode_list, seed_list, overrides, resolution, preset, limit, precision)


# --------------------------------------------------------------------------------------------------- run_all


def pending(runs: list[Run], store: Store, force: bool = False) -> list[Run]:
    """The runs still to do: those whose result is not stored (all of them with `force`)."""
    return [r for r in runs if force or not store.has(r.key)]


def run_all(
    runs: list[Run],
    ctx: LoadContext,
    device: torch.device,
    store: Store,
    options: Options = Options(),
    command: str = "",
) -> list[Result]:
    """What `transfer-eval run` runs: the preflight over the runs still to do, then each run in order, a stored
    one skipped (its stored result returned) unless `options.force`. Under torchrun every process calls this;
    fine-tuning trains across all of them, the rest runs on rank 0, and only rank 0 writes results or returns
    stored ones."""
    trackers.check(options.log)
    companions.check(options.companions, runs)
    # data, classes, weights and inputs first (a k-NN's k does not change what it reads), then a k above the k-NN
    # memory's size is clamped to it, saying so (the run's key names the k used)
    train_sizes = checks.preflight(pending(runs, store, options.force), ctx, device, options.inputs, options.download)
    runs = checks.fit_knn(runs, ctx, train_sizes)
    todo_runs = pending(runs, store, options.force)
    todo = {r.key for r in todo_runs}  # decided once, before anything is written: every process runs one list
    known = companions.known(runs) if any(r.task.companions for r in runs) else None
    # stored by an earlier run's model (companions)
    with_others = companions.covered(runs, todo, found=known, which=options.companions)
    main = distributed.is_main()
    distributed.barrier()
    out = []
    unreadable: dict[tuple, dict] = {}  # (task, limit) -> the unreadable files a failed run found, per split
    with stop_on_signal():  # SIGTERM / SIGUSR1 (pre-emption): fine-tuning checkpoints and stops; no run fails
        for i, r in enumerate(runs, 1):
            prefix = f"[{i}/{len(runs)}] {r.label()}"
            if r.key not in todo:
                if main:
                    stored = store.get_key(r.key)
                    log.info("%s: stored as run %s, skipped (--force to run again)", prefix, stored.run_id)
                    out.append(stored)
                continue
            if r.key in with_others:
                if main:
                    stored = store.get_key(r.key)
                    log.info(
                        "%s: scored with the model trained for a companion task, as run %s",
                        prefix,
                        stored.run_id if stored else "(not stored: see above)",
                    )
                    if stored is not None:
                        out.append(stored)
                continue
            if not main and r.mode.stage != "finetune":
                continue  # probes and evaluation are rank 0's; fine-tuning trains across every process
            if requested():
                raise Preempted(
                    f"{requested()} before {r.label()}: the runs before it are stored; the same command runs the rest"
                )
            if unreadable.get((r.task.name, r.limit), {}).keys() & set(r.mode.splits):  # met by an earlier run
                out.append(checks.not_run(store, r, unreadable[(r.task.name, r.limit)], command, prefix))
                continue
            held = locks.claim(r, store, prefix, options.force)  # one process per run key at a time (its cache)
            if not held.run:
                if main and held.stored is not None:
                    out.append(held.stored)
                continue
            where = f"{device}" + (f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else "")
            if main:
                log.info("%s: running on %s", prefix, where)
            with held:
                result = execute(r, ctx, device, store, command, options, known)
            out.append(result)
            if result.status == "failed" and (result.selection or {}).get("unreadable"):
                unreadable[(r.task.name, r.limit)] = {**result.selection["unreadable"], "error": result.error}
            if main:
                log.info("%s: %s", prefix, summary(result))
                trackers.publish(options.log, result, options.log_dir)
    distributed.barrier()
    return out


def summary(r: Result) -> str:
    """One line for a finished run: its accuracy beside its cost."""
    if r.status != "ok":
        return f"failed (the reason is above), stored as run {r.run_id}; the next run of this command retries it"

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}%"

    peak = f", peak {r.peak_memory_mb:.0f} MB" if r.peak_memory_mb is not None else ""
    left_out = f", {r.skipped_images:,} unreadable images left out (--bad-images skip)" if r.skipped_images else ""
    return (
        f"top-1 {pct(r.top1)} (val {pct(r.val_top1)}), {r.params_per_task:,} params/task, "
        f"train {r.train_seconds or 0:.1f} s{peak}{left_out}; stored as run {r.run_id}"
    )
