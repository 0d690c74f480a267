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


def input_options(f):
    """--device-resize, --cache-images, --workers, --compile: how fast images reach the model, not what it learns."""
    f = click.option("--compile", "compile_model", is_flag=True,
                     help="Train through torch.compile (slower start, faster steps on a GPU).")(f)
    f = click.option("--workers", type=click.IntRange(min=0), default=None,
                     help="DataLoader worker processes. Default: none on a CPU, up to 8 with a GPU.")(f)
    f = click.option("--cache-images", is_flag=True,
                     help="Decode each image file once and keep it at the training resolution "
                          "($TRANSFER_EVAL_CACHE/images): later epochs and runs skip decoding and the big resize.")(f)
    f = click.option("--device-resize", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     help="Resize small images (CIFAR's 32 px) on the device in one batched op instead of in the "
                          "CPU workers; auto: on CUDA where the augmentation allows (not RandAugment).")(f)
    return f


def _input_argv(device_resize, cache_images, workers, compile_model) -> list[str]:
    """The same choices as `run` arguments (for the jobs of a sweep)."""
    argv = ["--device-resize", device_resize] if device_resize != "auto" else []
    argv += ["--cache-images"] if cache_images else []
    argv += ["--workers", str(workers)] if workers is not None else []
    return argv + (["--compile"] if compile_model else [])


skip_verify_option = click.option("--skip-verify", is_flag=True,
                                  help="Do not check dataset checksums (re-packed copies, test fixtures).")
download_option = click.option("--download", is_flag=True,
                               help="Download missing datasets where their source allows it (never otherwise).")
bad_images_option = click.option("--bad-images", type=click.Choice(["stop", "skip"]), default="stop",
                                 show_default=True,
                                 help="An unreadable image: stop (the run fails, naming the file) or skip (decode "
                                      "every image first, leave the unreadable out, record how many).")


def _load_context(data_dir, skip_verify, download=False, bad_images="stop"):
    from transfer_eval.tasks import LoadContext

    return LoadContext(Path(data_dir) if data_dir else paths.default_data_dir(), verify=not skip_verify,
                       download=download, bad_images=bad_images)
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
@click.option("--seed", "--seeds", "seeds", default=None,
              help="Seed, or several comma-separated (each is stored). Default: 0,1,2 for fewshot, 0 otherwise.")
@click.option("--resolution", type=click.IntRange(min=16), default=None,
              help="Input size in pixels (e.g. 384); the position embedding is resampled by timm.")
@click.option("--recipe", "preset", type=click.Choice(["vit", "deit"]), default="vit", show_default=True,
              help="Fine-tuning preset: vit (the ViT paper: SGD, lr grid on val, retrain) or deit (DeiT III: AdamW, "
                   "RandAugment, mixup/cutmix, label smoothing). The task's schedule applies to both.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set steps=500 --set lr=0.003 (repeatable).")
@click.option("--force", is_flag=True, help="Run again even where the result is already stored.")
@click.option("--save-delta", type=click.Path(file_okay=False), default=None,
              help="Keep each run's per-task delta (the trained parameters) as a safetensors file in this folder.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Write a training checkpoint every N steps (0: every 10 minutes). A killed run resumes from it "
                   "when the same command is run again.")
@input_options
@skip_verify_option
@download_option
@bad_images_option
@json_option
def run(checkpoint_names, task_names, mode_names, data_dir, results, registries, tasks_dirs, device, seeds,
        resolution, preset, settings, force, save_delta, checkpoint_every, device_resize, cache_images, workers,
        compile_model, skip_verify, download, bad_images, as_json):
    """Adapt each checkpoint to each task in each mode; store and print the results.

    Runs whose result is already stored (same checkpoint, weights, task version, mode, recipe and seed) are
    skipped unless --force.

    \b
    Examples:
      transfer-eval run -c vit_demo -t digits -m linear,attention,full
      transfer-eval run -c deit3_s16_in1k -t cifar100 -m attention --data-dir ~/data --set steps=2000
    """
    from transfer_eval import checkpoints, data, distributed, modes, runner, tasks
    from transfer_eval.results import Store

    registry = checkpoints.load_registry(registries)
    ckpts = [checkpoints.resolve(n, registry) for n in _csv(checkpoint_names)]
    known_tasks = tasks.discover(tasks_dirs)
    task_list = [tasks.resolve(n, known_tasks) for n in _csv(task_names)]
    mode_list = [modes.resolve(n) for n in _csv(mode_names)]
    seed_list = _ints(seeds) if seeds is not None else None
    if not (ckpts and task_list and mode_list and (seed_list is None or seed_list)):
        raise UserError("give at least one checkpoint (-c), task (-t), mode (-m) and seed")
    dev = distributed.init(device) if distributed.launched() else data.pick_device(device)
    main = distributed.is_main()
    runs = runner.plan(ckpts, task_list, mode_list, seed_list, _overrides(settings), resolution, preset)
    ctx = _load_context(data_dir, skip_verify, download, bad_images)
    store = Store(results or paths.default_results())
    command = shlex.join(["transfer-eval", *sys.argv[1:]])
    # Check the data of every run still to do before the first one starts: a missing dataset for the last
    # task should not surface hours later.
    needed: dict[str, set] = {}
    for r in runs:
        if force or not store.has(r.key):
            needed.setdefault(r.task.name, set()).update(r.mode.splits)
            if r.mode.kind == "eval":
                runner.check_own_head(r.checkpoint, r.task)
    # Weights from files and URLs are loaded once before any run: unsafe or ill-fitting files stop here.
    pending = [r for r in runs if force or not store.has(r.key)]
    for ck in {r.checkpoint.name: r.checkpoint for r in pending}.values():
        if ck.weights_kind in ("file", "url"):
            first = next(r for r in pending if r.checkpoint.name == ck.name)
            checkpoints.build_model(ck, first.task.num_classes, first.recipe.get("resolution"),
                                    keep_head=first.mode.kind == "eval")
    for name, split_names in needed.items():
        task = known_tasks[name]
        if download:
            task.fetch(ctx)
        for split in sorted(split_names):
            task.dataset(split, ctx)
    inputs = data.InputOptions(device_resize, cache_images, workers)
    if device_resize == "on":  # refused now, not when the run comes
        for r in pending:
            runner.check_inputs(r, ctx, dev, inputs)
    # Decided once, before anything is written, so that every torchrun process runs the same list.
    todo = {r.key for r in pending}
    distributed.barrier()
    shown, failed = [], 0
    for i, r in enumerate(runs, 1):
        prefix = f"[{i}/{len(runs)}] {r.label()}"
        if r.key not in todo:
            if main:
                stored = store.get_key(r.key)
                click.echo(f"{prefix}: stored as run {stored.run_id}, skipped (--force to run again)", err=True)
                shown.append(stored)
            continue
        if not main and r.mode.kind != "finetune":
            continue  # probes and evaluation are rank 0's; fine-tuning trains across every process
        if main:
            where = f"{dev}" + (f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else "")
            click.echo(f"{prefix}: running on {where}", err=True)
        result = runner.execute(r, ctx, dev, store, command, log=click.echo,
                                save_delta=Path(save_delta) if save_delta else None,
                                checkpoint_every=checkpoint_every, compile=compile_model, inputs=inputs)
        failed += result.status != "ok"
        shown.append(result)
    distributed.barrier()
    if main:
        _print_results(shown, as_json)
    store.close()
    distributed.shutdown()
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

    table = [[r.run_id, r.checkpoint, r.task, r.mode if r.shots is None else f"{r.mode} {r.shots}-shot", r.seed, pct(r.top1), pct(r.top5), pct(r.balanced_top1), pct(r.val_top1),
              num(r.params_per_task, ","), num(r.bytes_per_task and r.bytes_per_task / 2**20, ".2f"),
              num(r.train_gflops_per_image, ".3g"), num(r.train_seconds, ".1f"), num(r.peak_memory_mb, ".0f"),
              r.status] for r in rows]
    headers = ["run", "checkpoint", "task", "mode", "seed", "top1 %", "top5 %", "balanced %", "val top1 %",
               "params/task",
               "MiB/task", "train GFLOPs/img", "train s", "peak MB", "status"]
    click.echo(tabulate(table, headers=headers, disable_numparse=True))


@cli.group("list", context_settings=CONTEXT)
def list_():
    """List checkpoints, tasks, modes or task groups."""


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


@cli.group("cache", context_settings=CONTEXT)
def cache_group():
    """The feature and decoded-image caches ($TRANSFER_EVAL_CACHE, default ~/.cache/transfer-eval): list or clear."""


@cache_group.command("list", context_settings=CONTEXT)
@json_option
def cache_list(as_json):
    """Cached feature files (checkpoint, task, split, images, size), then cached decoded images."""
    from tabulate import tabulate

    from transfer_eval import cache, image_cache

    rows, images = cache.entries(), image_cache.entries()
    if as_json:
        for r in rows:
            click.echo(json.dumps({"kind": "features", **r}))
        for r in images:
            click.echo(json.dumps({"kind": "images", **r}))
        return
    click.echo(tabulate([[r["key"], r.get("checkpoint", "?"), r.get("task", "?"), r.get("split", "?"),
                          r.get("images", "?"), f"{r['bytes'] / 2**20:.1f}", r["modified"]] for r in rows],
                        headers=["key", "checkpoint", "task", "split", "images", "MiB", "modified"]))
    click.echo(f"{len(rows)} feature entries in {paths.cache_dir() / 'features'}")
    if images:
        click.echo(tabulate([[r["key"], r.get("source", "?"), r.get("images", "?"), r.get("format", "raw"),
                              r.get("resize", "?"), f"{r['bytes'] / 2**20:.1f}", r["modified"]] for r in images],
                            headers=["key", "images from", "images", "stored as", "resized by", "MiB", "modified"],
                            maxcolwidths=[None, 50, None, None, 50, None, None]))
    click.echo(f"{len(images)} decoded-image entries in {image_cache.folder()}")


@cache_group.command("clear", context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_names", default=None, help="Only these checkpoints' features.")
@click.option("-t", "--task", "task_names", default=None, help="Only these tasks' features.")
@click.option("--images", "images_only", is_flag=True, help="Only the decoded-image cache.")
def cache_clear(checkpoint_names, task_names, images_only):
    """Delete cached features (all, or those of some checkpoints or tasks) and, without -c/-t, decoded images."""
    from transfer_eval import cache, image_cache

    cks, tks = set(_csv(checkpoint_names)), set(_csv(task_names))
    if not images_only:
        keys = {e["key"] for e in cache.entries()
                if (not cks or e.get("checkpoint") in cks) and (not tks or e.get("task") in tks)}
        click.echo(f"removed {cache.clear(keys)} cached feature files")
    if images_only or not (cks or tks):
        click.echo(f"removed {image_cache.clear()} cached decoded-image entries")


@cli.group(context_settings=CONTEXT)
def data():
    """Datasets: what is present, what is missing and how to get it."""


@data.command("check", context_settings=CONTEXT)
@click.argument("task_names", required=False, default="")
@data_dir_option
@tasks_dir_option
@skip_verify_option
@download_option
@click.option("-m", "--mode", "mode_name", default=None,
              help="Check only the splits this mode reads (e.g. pretrained reads only test).")
@click.option("--deep", is_flag=True, help="Also decode every image file and report the unreadable ones.")
@json_option
def data_check(task_names, data_dir, tasks_dirs, skip_verify, download, mode_name, deep, as_json):
    """For each task (all by default; or TASKS comma-separated): each split's size, or what is missing.

    Exit status 0 when every task checked is ready, 1 when one is not.

    \b
    Example:
      transfer-eval data check cifar10,cifar100 --data-dir ~/data
    """
    from tabulate import tabulate

    from transfer_eval import modes, tasks

    found = tasks.discover(tasks_dirs)
    chosen = [tasks.resolve(n, found) for n in _csv(task_names)] or list(found.values())
    mode_splits = modes.resolve(mode_name).splits if mode_name else None
    ctx = _load_context(data_dir, skip_verify, download)
    rows, not_ready = [], []
    for task in chosen:
        if download:
            try:
                task.fetch(ctx)
            except UserError as e:
                rows.append({"task": task.name, "split": "-", "status": "not downloaded", "images": None,
                             "classes": None, "detail": str(e)})
        for split in [sp for sp in task.splits if mode_splits is None or sp in mode_splits]:
            row = {"task": task.name, "split": split, "status": "ok", "images": None, "classes": None,
                   "detail": ""}
            try:
                ds = task.dataset(split, ctx)
                row["images"], row["classes"] = len(ds), int(len(set(ds.labels.tolist())))
                if deep and ds.paths is not None:
                    bad = ds.unreadable()
                    if bad:
                        row["status"] = "unreadable images"
                        row["detail"] = f"{len(bad)} unreadable, e.g. {ds.paths[bad[0]]}"
            except UserError as e:
                row["status"], row["detail"] = "missing", str(e)
            if row["status"] != "ok" and task.name not in not_ready:
                not_ready.append(task.name)
            rows.append(row)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        merged = []  # one row where every split of a task fails the same way
        for r in rows:
            last = merged[-1] if merged else None
            if last and last["task"] == r["task"] and r["status"] == last["status"] == "missing" \
                    and r["detail"] == last["detail"]:
                last["split"] += "," + r["split"]
            else:
                merged.append(dict(r))
        rows = merged
        click.echo(tabulate([[r["task"], r["split"], r["status"], "-" if r["images"] is None else r["images"],
                              "-" if r["classes"] is None else r["classes"], r["detail"]] for r in rows],
                            headers=["task", "split", "status", "images", "classes", "detail"],
                            disable_numparse=True, maxcolwidths=[None, None, None, None, None, 90]))
        for name in not_ready:
            click.echo(f"\n{name}: {found[name].data_help}")
    if not_ready:
        sys.exit(1)


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_name", required=True,
              help="A registry name or a timm architecture; only the architecture is built, nothing downloaded.")
@click.option("-m", "--mode", "mode_names", required=True, help="Modes, comma-separated.")
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--resolution", type=click.IntRange(min=16), default=None, help="Input size in pixels.")
@registry_option
@json_option
def cost(checkpoint_name, mode_names, num_classes, resolution, registries, as_json):
    """Compute and parameter-sharing cost of a checkpoint in a mode, without data or weights.

    FLOPs are counted by torch.utils.flop_counter on a real forward pass and a real training step of the mode
    (1 multiply-add = 2 FLOPs; GMACs are multiply-adds). The bytes per task are those of the mode's delta
    written as a safetensors file.

    \b
    Example:
      transfer-eval cost -c vit_base_patch16_224 -m linear,attention,full
    """
    from tabulate import tabulate

    from transfer_eval import checkpoints, costs, modes

    ck = checkpoints.resolve(checkpoint_name, checkpoints.load_registry(registries))
    mode_list = [modes.resolve(n) for n in _csv(mode_names)]
    model, cfg = checkpoints.build_model(ck, num_classes, resolution, load_weights=False)
    rows = []
    for mode in mode_list:  # cost_card adapts a copy of the one model for each mode
        rows.append({"checkpoint": ck.name, "model": ck.model, "mode": mode.name, "num_classes": num_classes,
                     **costs.cost_card(model, cfg, mode)})
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    table = [[r["mode"], r["resolution"], f"{r['fwd_gflops_per_image']:.2f} / {r['fwd_gmacs_per_image']:.2f}",
              f"{r['train_gflops_per_image']:.2f}", f"{r['params_total']:,}", f"{r['params_per_task']:,}",
              f"{r['bytes_per_task'] / 2**20:.2f}", f"{100 * r['storage_saved_per_extra_task']:.1f}%",
              r["stored_per_task"]] for r in rows]
    click.echo(f"{ck.name} ({ck.model}), {num_classes} classes")
    click.echo(tabulate(table, headers=["mode", "px", "forward GFLOPs / GMACs per image",
                                        "train-step GFLOPs/img", "params", "params/task", "MiB/task",
                                        "saved per extra task", "stored per task"], disable_numparse=True))


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_name", default=None,
              help="A registry name or a timm architecture (its architecture only: nothing is downloaded). "
                   "Required, except with --scale.")
@click.option("-m", "--mode", "mode_names", default="attention,full", show_default=True,
              help="Fine-tuning modes to time, comma-separated.")
@click.option("--scale", is_flag=True,
              help="Instead: the linear probe on synthetic N x D x K features (the suite's solver and "
                   "scikit-learn's, side by side) and feature extraction's peak memory at two dataset sizes.")
@click.option("--n", "scale_n", type=click.IntRange(min=10), default=50_000, show_default=True,
              help="--scale: training rows (val and test get N/5 each).")
@click.option("--dim", "scale_dim", type=click.IntRange(min=1), default=384, show_default=True,
              help="--scale: feature dimension D.")
@click.option("--classes", "scale_classes", type=click.IntRange(min=2), default=1000, show_default=True,
              help="--scale: number of classes K.")
@click.option("--c-grid", "scale_grid", default="0.1,1,10", show_default=True,
              help="--scale: the probe's coarse C grid (the fine grid and refit follow, as in a run).")
@click.option("--sklearn/--no-sklearn", "scale_sklearn", default=True, show_default=True,
              help="--scale: also run the protocol with scikit-learn (slow at large N x K).")
@click.option("--extract-sizes", "scale_sizes", default="2000,20000", show_default=True,
              help="--scale: image counts for the extraction peak-memory runs; 0 skips them.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Timed steps per loop.")
@click.option("--resolution", type=click.IntRange(min=16), default=None)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers for the input-pipeline timings. Default: as `run` (none on a CPU).")
@click.option("--compile", "compile_model", is_flag=True,
              help="Both training loops through torch.compile (the warm-up steps absorb the compilation).")
@registry_option
@device_option
@json_option
def bench(checkpoint_name, mode_names, scale, scale_n, scale_dim, scale_classes, scale_grid, scale_sklearn,
          scale_sizes, batch_size, steps, resolution, workers, compile_model, registries, device, as_json):
    """Time the suite's training step and feature extraction against bare timm/torch loops, side by side.

    Prints images/s, step time, peak memory, achieved TFLOP/s and its fraction of the device's measured matmul
    peak, and ratio_vs_reference (the bare loop's step time over the suite's: 1.0 is parity). Targets:
    suite step >= 0.97x the bare loop; attention-only <= 0.85x full's step time and <= 0.8x its peak memory
    (ViT-B/16, 224 px); extraction >= 0.9x bare inference (it includes the suite's input pipeline).

    With --scale: the linear probe on synthetic features through the suite's solver and scikit-learn's (time,
    iterations, chosen C, agreement), and extraction's peak memory at two dataset sizes (target: flat in N).

    \b
    Examples:
      transfer-eval bench -c vit_base_patch16_224 -m attention,full --batch-size 64 --device cuda
      transfer-eval bench --scale --n 50000 --dim 384 --classes 1000
      transfer-eval bench --scale --n 1281167 --dim 768 --classes 1000 --no-sklearn --device cuda
    """
    from tabulate import tabulate

    from transfer_eval import bench as benchmark
    from transfer_eval import checkpoints, data, modes

    if scale:
        return _bench_scale(scale_n, scale_dim, scale_classes, scale_grid, scale_sklearn, scale_sizes,
                            data.pick_device(device), as_json)
    if checkpoint_name is None:
        raise UserError("bench needs -c CHECKPOINT (or --scale for the probe and extraction at scale)")
    ck = checkpoints.resolve(checkpoint_name, checkpoints.load_registry(registries))
    mode_list = [modes.resolve(n) for n in _csv(mode_names)]
    if not any(m.kind == "finetune" for m in mode_list):
        raise UserError("bench times fine-tuning modes: give at least one of attention, full, ffn, bitfit, lora")
    report = benchmark.run(ck, mode_list, batch_size, steps, data.pick_device(device), resolution, workers,
                           compile_model)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{report['checkpoint']} ({report['model']}), batch {batch_size}, {steps} timed steps, "
               f"{report['device']}, {report['precision']}{', torch.compile' if compile_model else ''}, "
               f"torch {report['torch']}")
    click.echo(f"measured matmul peak: {report['matmul_peak_tflops']:.3f} TFLOP/s")
    rows = [[name, f"{r['suite_images_per_s']:.1f}", f"{r['ref_images_per_s']:.1f}",
             f"{r['ratio_vs_reference']:.3f}", f"{1000 * r['suite_step_s']:.1f}", f"{r['suite_peak_mb']:.0f}",
             f"{r['ref_peak_mb']:.0f}", f"{r['suite_tflops']:.3f}", f"{100 * r['fraction_of_matmul_peak']:.1f}%"]
            for name, r in report["modes"].items()]
    e = report["extraction"]
    rows.append(["extraction", f"{e['suite_images_per_s']:.1f}", f"{e['ref_images_per_s']:.1f}",
                 f"{e['ratio_vs_reference']:.3f}", "-", "-", "-", "-", "-"])
    click.echo(tabulate(rows, headers=["loop", "suite img/s", "bare img/s", "ratio_vs_reference", "suite ms/step",
                                       "suite peak MB", "bare peak MB", "suite TFLOP/s", "of matmul peak"],
                        disable_numparse=True))
    if "attention_vs_full_step_time" in report:
        click.echo(f"attention / full: step time {report['attention_vs_full_step_time']:.3f}x, peak memory "
                   f"{report['attention_vs_full_peak_memory']:.3f}x")
    p = report["input_pipeline"]
    keeps = lambda k: f"{p[k]:.2f}x the fastest training step" if k in p else "-"  # noqa: E731
    click.echo(f"input pipelines alone ({p['workers']} workers, training augmentation, images/s delivered):")
    click.echo(tabulate([["32 px, CPU transforms", f"{p['small_cpu_images_per_s']:.0f}", "-"],
                         ["32 px, resized on the device", f"{p['small_device_images_per_s']:.0f}",
                          keeps("small_device_vs_training")],
                         ["500x375 JPEG, decoded each time", f"{p['jpeg_decode_images_per_s']:.0f}", "-"],
                         ["500x375 JPEG, decoded-image cache", f"{p['jpeg_cached_images_per_s']:.0f}",
                          keeps("jpeg_cached_vs_training")]],
                        headers=["pipeline", "img/s", "keeps up?"], disable_numparse=True))
    click.echo(f"device resize / CPU transforms: {p['device_vs_cpu_small']:.2f}x; image cache / decoding: "
               f"{p['cache_vs_decode_jpeg']:.2f}x; a training split's image cache is "
               f"{p['train_cache_vs_source_bytes']:.2f}x the size of its source JPEGs (target <= 1.2x)")


def _bench_scale(n, dim, classes, grid, with_sklearn, sizes, device, as_json):
    from tabulate import tabulate

    from transfer_eval import bench_scale

    try:
        c_grid = [float(c) for c in _csv(grid)]
        extract = [int(k) for k in _csv(sizes) if int(k) > 0]
    except ValueError:
        raise UserError(f"--c-grid {grid!r} / --extract-sizes {sizes!r}: give comma-separated numbers") from None
    if not c_grid or any(c <= 0 for c in c_grid):
        raise UserError(f"--c-grid {grid!r}: give positive values of C, comma-separated")
    report = {"probe": bench_scale.probe_scale(n, dim, classes, device, c_grid, sklearn=with_sklearn)}
    if extract:
        report["extraction"] = bench_scale.extraction_memory(tuple(sorted(extract)))
    if as_json:
        click.echo(json.dumps(report))
        return
    p = report["probe"]
    click.echo(f"linear probe: {p['n_train']} train + {p['n_val']} val rows x {p['dim']} dims x {p['classes']} "
               f"classes on {p['device']}; coarse C grid {p['c_grid']}, tol {p['tol']:g}")
    solvers = [("suite (torch L-BFGS)", p["suite"])] + ([("scikit-learn", p["sklearn"])] if "sklearn" in p else [])
    click.echo(tabulate([[name, f"{r['seconds']:.1f}", r["total_iterations"], f"{r['seconds_per_iteration']:.3f}",
                          f"{r['chosen_c']:.4g}", f"{r['test_top1']:.4f}"] for name, r in solvers],
                        headers=["solver", "seconds", "iterations", "s/iteration", "chosen C", "test top-1"],
                        disable_numparse=True))
    if p["suite"]["not_converged"]:
        click.echo(f"suite fits stopped at the iteration cap: {', '.join(p['suite']['not_converged'])}")
    if "agreement" in p:
        a = p["agreement"]
        click.echo(f"suite / scikit-learn: {p['speedup_vs_sklearn']:.2f}x faster; same C: {a['same_c']}; "
                   f"identical test predictions {100 * a['test_predictions_identical']:.2f}%; head weights within "
                   f"{a['head_weight_max_diff_relative']:.2e} of the largest")
    if "extraction" in report:
        e = report["extraction"]
        click.echo(f"feature extraction (width {e['width']}, each size in a fresh process):")
        click.echo(tabulate([[r["images"], f"{r['feature_mb']:.1f}", f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.1f}"]
                             for r in e["runs"]], headers=["images", "features MB", "peak RSS MB", "seconds"],
                            disable_numparse=True))
        click.echo(f"peak memory, largest / smallest: {e['peak_growth']:.3f}x (target: within 1.10x)")


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_names", required=True, help="Checkpoints, comma-separated.")
@click.option("-t", "--task", "task_names", required=True, help="Tasks, comma-separated.")
@click.option("-m", "--mode", "mode_names", required=True, help="Modes, comma-separated.")
@click.option("--seed", "--seeds", "seeds", default=None, help="Seeds, comma-separated (default per mode).")
@click.option("--per", type=click.Choice(["run", "group"]), default="group", show_default=True,
              help="One job per run, or per checkpoint x task (its modes and seeds together).")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: the jobs one after another here; slurm: submitted through submitit.")
@click.option("--dry-run", is_flag=True, help="Print the plan (the runs still missing, as jobs) and stop.")
@click.option("--slurm-folder", type=click.Path(file_okay=False), default="transfer_eval_slurm", show_default=True)
@click.option("--partition", default=None, help="Slurm partition.")
@click.option("--gpus-per-job", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--cpus-per-job", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--mem-gb", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--timeout-min", type=click.IntRange(min=1), default=24 * 60, show_default=True)
@data_dir_option
@results_option
@registry_option
@tasks_dir_option
@click.option("--recipe", "preset", type=click.Choice(["vit", "deit"]), default="vit", show_default=True)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Recipe overrides, as for run.")
@click.option("--resolution", type=click.IntRange(min=16), default=None)
@input_options
@skip_verify_option
def sweep(checkpoint_names, task_names, mode_names, seeds, per, executor, dry_run, slurm_folder, partition,
          gpus_per_job, cpus_per_job, mem_gb, timeout_min, data_dir, results, registries, tasks_dirs, preset,
          settings, resolution, device_resize, cache_images, workers, compile_model, skip_verify):
    """Plan every run not yet stored and launch the missing ones as jobs (locally, or on Slurm via submitit).

    All jobs write to the same results store; launching the same sweep again runs only what is still missing.

    \b
    Examples:
      transfer-eval sweep -c vit_demo,vit_demo_shapes -t digits -m linear,fewshot --dry-run
      transfer-eval sweep -c deit3_b16_in1k,dinov2_b14_lvd142m -t cifar100,flowers102 -m attention,full \\
          --data-dir ~/data --executor slurm --partition gpu
    """
    from tabulate import tabulate

    from transfer_eval import checkpoints, modes, runner, tasks
    from transfer_eval import sweep as sweeps
    from transfer_eval.results import Store

    registry = checkpoints.load_registry(registries)
    ckpts = [checkpoints.resolve(n, registry) for n in _csv(checkpoint_names)]
    known = tasks.discover(tasks_dirs)
    task_list = [tasks.resolve(n, known) for n in _csv(task_names)]
    mode_list = [modes.resolve(n) for n in _csv(mode_names)]
    runs = runner.plan(ckpts, task_list, mode_list, _ints(seeds) if seeds else None, _overrides(settings),
                       resolution, preset)
    results_path = results or str(paths.default_results())
    store = Store(results_path)
    pending = {r.key for r in runs if not store.has(r.key)}
    store.close()
    common = ["--results", str(results_path), "--recipe", preset]
    common += [a for d in (data_dir,) if d for a in ("--data-dir", d)]
    common += [a for f in registries for a in ("--registry", f)] + [a for d in tasks_dirs for a in ("--tasks-dir", d)]
    common += [a for s in settings for a in ("--set", s)]
    common += (["--resolution", str(resolution)] if resolution else []) + (["--skip-verify"] if skip_verify else [])
    common += _input_argv(device_resize, cache_images, workers, compile_model)
    jobs = sweeps.plan_jobs(runs, pending, per, common)
    click.echo(f"{len(runs)} runs planned, {len(runs) - len(pending)} stored, {len(pending)} to run in "
               f"{len(jobs)} jobs")
    click.echo(tabulate([[i, j.name, len(j.runs), "transfer-eval " + shlex.join(j.argv)]
                         for i, j in enumerate(jobs, 1)], headers=["job", "what", "runs", "command"],
                        maxcolwidths=[None, None, None, 90]))
    if dry_run or not jobs:
        return
    if executor == "slurm":
        ids = sweeps.launch_slurm(jobs, Path(slurm_folder), partition, gpus_per_job, cpus_per_job, mem_gb,
                                  timeout_min)
        click.echo(f"submitted {len(ids)} Slurm jobs: {', '.join(ids)}; logs in {slurm_folder}")
        return
    codes = sweeps.launch_local(jobs, echo=click.echo)
    if any(codes):
        click.echo(f"{sum(c != 0 for c in codes)} of {len(codes)} jobs failed", err=True)
        sys.exit(1 if all(c in (0, 1) for c in codes) else 2)


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
    import numpy as np

    from transfer_eval import checkpoints, data, probe, tasks

    ck = checkpoints.resolve(checkpoint_name, checkpoints.load_registry(registries))
    task = tasks.resolve(task_name, tasks.discover(tasks_dirs))
    ctx = _load_context(data_dir, skip_verify)
    dev = data.pick_device(device)
    ds = task.dataset(split, ctx)
    model, cfg = checkpoints.build_model(ck, task.num_classes, resolution)
    key_parts = {"weights_sha256": checkpoints.weights_digest(ck), "checkpoint": ck, "task": task,
                 "split_name": split}
    feats, labels, _ = probe.cached_features(model, ds, cfg, dev, batch_size, key_parts, desc=f"features {split}")
    from transfer_eval import io

    out = Path(output)
    with io.replacing(out, ".npz") as tmp:  # never a half-written file under the requested name
        np.savez(tmp, features=feats, labels=labels, ids=np.asarray(ds.ids))
    click.echo(f"wrote {out}: features {feats.shape[0]} x {feats.shape[1]} float32, labels {len(labels)}")


# --------------------------------------------------------------- leaderboard, compare, report (transfer_eval.report)


def _open_store(results):
    """The results store for reading: a missing file is bad input, not an empty store to create."""
    from transfer_eval.results import Store

    path = Path(results) if results else paths.default_results()
    if not path.is_file():
        raise UserError(f"no results store at {path}; run `transfer-eval run ...` first or give --results DB")
    return Store(path)


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_names", default=None,
              help="Only these checkpoints (comma-separated).")
@click.option("-t", "--task", "task_names", default=None,
              help="The task columns (comma-separated). Default: the group's tasks, else every stored task.")
@click.option("-m", "--mode", "mode_names", default=None, help="Only these modes (comma-separated).")
@click.option("--group", default=None,
              help="The task group the mean, suite storage and compute are over: paper6 (the six transfer sets of "
                   "the attention-only paper), cifar, inat, demo, or all (the task columns shown; default). "
                   "See `transfer-eval list groups`.")
@click.option("--sort", default=None, metavar="COLUMN[:asc|desc]",
              help="checkpoint, mode, a task name, mean, params_per_task, suite_bytes, storage_ratio or "
                   "train_pflops. Default: mean, best first; missing values always last.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json", "latex", "html"]),
              default="table", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also plot accuracy against params/task and training compute (.png, .svg or .pdf).")
@results_option
def leaderboard(checkpoint_names, task_names, mode_names, group, sort, fmt, output, plot, results):
    """Rows checkpoint x mode; columns: the task accuracies, their mean over a task group, params per task, suite
    storage and training compute.

    Several seeds show as mean ± std (n); a missing result shows as missing, and a group mean with a missing
    task as incomplete. csv and json carry raw values (accuracies as fractions).

    \b
    Examples:
      transfer-eval leaderboard
      transfer-eval leaderboard --group paper6 --format markdown --output leaderboard.md
      transfer-eval leaderboard -m attention,full --sort train_pflops --plot acc_vs_cost.png
    """
    from transfer_eval import report

    if plot:
        report.check_plot_path(plot)
    store = _open_store(results)
    lb = report.leaderboard(store, _csv(checkpoint_names), _csv(task_names), _csv(mode_names), group, sort)
    text = report.render(lb, fmt)
    if output:
        report.write_text(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
    if plot:
        report.plot_leaderboard(lb, plot)
        click.echo(f"wrote {plot}", err=True)
    store.close()


@cli.command(context_settings=CONTEXT)
@click.argument("checkpoint_names", nargs=-1, metavar="CHECKPOINT CHECKPOINT [CHECKPOINT ...]")
@click.option("-t", "--task", "task_names", default=None, help="Only these tasks (comma-separated).")
@click.option("-m", "--mode", "mode_names", default=None, help="Only these modes (comma-separated).")
@click.option("--resamples", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Bootstrap resamples for the confidence intervals.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also plot the differences with their CIs (.png, .svg or .pdf).")
@results_option
@json_option
def compare(checkpoint_names, task_names, mode_names, resamples, plot, results, as_json):
    """Paired comparison of checkpoints on every task and mode both were run on.

    delta = B - A (A: the first checkpoint; with more than two, each is compared against the first), with a
    95% paired bootstrap CI and McNemar's exact p-value from the stored per-sample predictions; results measured
    on different test examples are refused. Win / loss: p < 0.05.

    \b
    Examples:
      transfer-eval compare deit3_s16_in1k augreg_s16_in21k_ft_in1k
      transfer-eval compare vit_demo vit_demo_b -m linear --json
    """
    from transfer_eval import report

    if len(checkpoint_names) < 2:
        raise UserError("compare needs two or more checkpoints, e.g. `transfer-eval compare CHECKPOINT_A "
                        "CHECKPOINT_B`")
    if plot:
        report.check_plot_path(plot)
    store = _open_store(results)
    cmp = report.compare(store, list(checkpoint_names), _csv(task_names), _csv(mode_names), resamples)
    if as_json:
        if len(cmp.others) > 1:
            click.echo(report.compare_intro(cmp)[0], err=True)
        click.echo(report.compare_json(cmp), nl=False)
    else:
        click.echo(report.compare_text(cmp), nl=False)
    if plot:
        lb = report.leaderboard(store, [cmp.reference, *cmp.others], sorted({r["task"] for r in cmp.rows}),
                                sorted({r["mode"] for r in cmp.rows}))
        report.plot_compare(cmp, plot, lb)
        click.echo(f"wrote {plot}", err=True)
    store.close()


@cli.command(context_settings=CONTEXT)
@click.option("--html", "html_dir", required=True, type=click.Path(file_okay=False),
              help="The folder to write the site to (index.html and the plots).")
@click.option("--group", default=None, help="The task group of the leaderboard's mean (see leaderboard --group).")
@click.option("--resamples", type=click.IntRange(min=1), default=10_000, show_default=True)
@results_option
def report(html_dir, group, resamples, results):
    """A static html report: the sortable leaderboard, the comparisons against the top checkpoint and the plots.

    Open DIR/index.html in a browser; no server is needed.

    \b
    Example:
      transfer-eval report --html site && xdg-open site/index.html
    """
    from transfer_eval import report as report_

    store = _open_store(results)
    index = report_.html_report(store, html_dir, group, resamples)
    store.close()
    click.echo(f"wrote {index}")


@list_.command("groups", context_settings=CONTEXT)
@json_option
def list_groups(as_json):
    """Task groups for the leaderboard's mean (--group)."""
    from tabulate import tabulate

    from transfer_eval.report import GROUPS

    if as_json:
        for g in GROUPS.values():
            click.echo(json.dumps({"name": g.name, "tasks": list(g.tasks), "description": g.description}))
        return
    click.echo(tabulate([[g.name, ", ".join(g.tasks), g.description] for g in GROUPS.values()],
                        headers=["name", "tasks", "description"]))


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
