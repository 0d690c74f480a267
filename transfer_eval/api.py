"""The Python API, for notebooks and scripts: what the CLI runs, returning objects instead of printing.

    import transfer_eval as te

    results = te.evaluate("vit_demo", "digits", ["linear", "fewshot"], results="runs.sqlite")
    df = te.load_results("runs.sqlite", modes=["linear"])
    te.leaderboard("runs.sqlite").to_frame()
    te.compare(["vit_demo", "vit_demo_shapes"], "runs.sqlite").to_frame()

`evaluate` runs exactly what `transfer-eval run` runs (runner.run_all: the same run keys, store and skip rule);
progress goes to the `transfer_eval` logger (`logging.basicConfig(level=logging.INFO)` shows it). Checkpoints
and tasks can be added from Python without writing a file (`add_checkpoint`, `add_task`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transfer_eval import checkpoints as _checkpoints
from transfer_eval import paths
from transfer_eval import tasks as _tasks
from transfer_eval.checkpoints import Checkpoint
from transfer_eval.errors import UserError
from transfer_eval.store.results import Result, Store
from transfer_eval.tasks import Task, plugins


def evaluate(
    checkpoints,
    tasks,
    modes,
    *,
    seeds: list[int] | None = None,
    results: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    recipe: str | None = None,
    settings: dict | None = None,
    resolution: int | None = None,
    limit: int | None = None,
    precision: str = "auto",
    force: bool = False,
    download: bool = False,
    skip_verify: bool = False,
    bad_images: str = "stop",
    save_delta: str | Path | None = None,
    checkpoint_every: int = 0,
    device_resize: str = "auto",
    cache_images: bool = False,
    workers: int | None = None,
    decode: str = "cpu",
    compile: bool = False,
    log: tuple[str, ...] | list[str] = (),
    log_dir: str | Path = "transfer_eval_logs",
    companions: str = "all",
    registries=(),
    tasks_dirs=(),
) -> list[Result]:
    """Adapt each checkpoint to each task in each mode, store the results and return them (stored ones are
    returned without running again, unless `force`). `checkpoints`, `tasks` and `modes`: names (a list, or one
    comma-separated string, as on the command line) or the objects themselves; `settings`: recipe fields, as
    `--set`; the other arguments are `run`'s options (`companions`: the companion test sets scored with each run,
    "all" whose data is here, "none", or task names comma-separated)."""
    from transfer_eval import devices, distributed
    from transfer_eval.input import pipeline
    from transfer_eval.run import runner

    runs = runner.plan_named(
        checkpoints,
        tasks,
        modes,
        seeds,
        settings,
        resolution,
        recipe,
        limit,
        registries,
        tasks_dirs,
        precision,
        download,
    )
    dev = distributed.init(device) if distributed.launched() else devices.pick_device(device)
    ctx = _tasks.LoadContext(
        Path(data_dir) if data_dir else paths.default_data_dir(),
        verify=not skip_verify,
        download=download,
        bad_images=bad_images,
    )
    options = runner.Options(
        force=force,
        download=download,
        save_delta=Path(save_delta) if save_delta else None,
        checkpoint_every=checkpoint_every,
        compile=compile,
        inputs=pipeline.InputOptions(device_resize, cache_images, workers, decode),
        log=tuple(log),
        log_dir=Path(log_dir),
        companions=companions,
    )
    store = Store(results or paths.default_results())
    try:
        return runner.run_all(runs, ctx, dev, store, options, command=f"transfer_eval.evaluate({_call(locals())})")
    finally:
        store.close()


def _call(args: dict) -> str:
    shown = {k: v for k, v in args.items() if k in ("checkpoints", "tasks", "modes", "settings", "seeds", "limit")}
    if args.get("precision", "auto") != "auto":
        shown["precision"] = args["precision"]
    return ", ".join(f"{k}={_name(v)!r}" for k, v in shown.items() if v is not None)


def _name(v):
    if isinstance(v, (list, tuple)):
        return [_name(x) for x in v]
    return getattr(v, "name", v)


def _reading(store) -> tuple[Store, bool]:
    """A store to read: an open Store as it is, else the file at a path (or the default), which must exist."""
    if isinstance(store, Store):
        return store, False
    return Store.existing(store, first="transfer_eval.evaluate(...) or `transfer-eval run`"), True


def predict(checkpoint, delta, images, *, top_k: int = 5, device: str = "auto", registries=()) -> list:
    """What `transfer-eval predict` prints: one task served from its delta (`save_delta=` of `evaluate`, or
    `run --save-delta`) on `checkpoint` (a name or a Checkpoint). `images`: an image file or folder, or a list of
    them (folders walked recursively, in sorted order). Returns one `Prediction` per image (path, labels, names,
    scores: its top-k, best first; `.to_dict()`)."""
    from transfer_eval.run import serve

    return serve.predict(checkpoint, delta, images, top_k, device, registries)


def load_results(
    store=None,
    *,
    checkpoints=(),
    tasks=(),
    modes=(),
    status: str | None = "ok",
    include_limited: bool = True,
    predictions: bool = False,
):
    """The stored results as a pandas DataFrame: one row per result, the record's fields as columns (recipe,
    selection and curves as dicts). Filters: checkpoint, task and mode names; `status` ("ok", "failed", None for
    all); `include_limited` keeps --limit runs (the `limit_per_split` column marks them). With `predictions`, the
    per-sample test `labels` and `top5_predictions` (N x 5 class indices, best first) too. Needs pandas (the
    `pandas` extra)."""
    from transfer_eval import frames

    frames.pandas()  # the missing-package line before any work
    db, mine = _reading(store)
    try:
        found = db.query(checkpoints=_names(checkpoints), tasks=_names(tasks), modes=_names(modes), status=status)
        found = [r for r in found if include_limited or r.limit_per_split is None]
        preds = {r.run_id: db.predictions(r.run_id) for r in found} if predictions else None
    finally:
        if mine:
            db.close()
    return frames.results_frame(found, preds)


def _names(value) -> list[str]:
    from transfer_eval.run.runner import names

    return [_name(v) for v in names(value)]


def leaderboard(
    store=None,
    *,
    checkpoints=(),
    tasks=(),
    modes=(),
    group: str | None = None,
    sort: str | None = None,
    include_limited: bool = False,
    mean: str = "tasks",
    metric: str = "top1",
):
    """The leaderboard `transfer-eval leaderboard` renders (report.Leaderboard: rows, cells, `.to_frame()`);
    `mean`: tasks, groups or both, for a group of groups (vtab1k); `metric`: what the cells show (top1, top5,
    balanced, ece, nll)."""
    from transfer_eval import report

    db, mine = _reading(store)
    try:
        return report.leaderboard(
            db, _names(checkpoints), _names(tasks), _names(modes), group, sort, include_limited, mean, metric
        )
    finally:
        if mine:
            db.close()


def compare(checkpoints, store=None, *, tasks=(), modes=(), resamples: int = 10_000, include_limited: bool = False):
    """The paired comparison `transfer-eval compare` renders (report.Comparison: typed rows, `.to_frame()`);
    the first checkpoint is the reference A."""
    from transfer_eval import report

    db, mine = _reading(store)
    try:
        return report.compare(
            db, _names(checkpoints), _names(tasks), _names(modes), resamples, include_limited=include_limited
        )
    finally:
        if mine:
            db.close()


def add_checkpoint(
    name: str, model: str, *, weights: str = "none", pretraining: str = "added from Python", **fields
) -> Checkpoint:
    """Register a checkpoint in this process, as a registry entry would (the same fields and checks: `model` a
    timm architecture, `weights` timm | hf-hub:ORG/NAME | a file | an https URL with `sha256` | none, `paper`,
    `model_args`, `data_config`, ...); relative file paths are taken from the working folder. It wins over a
    registry entry of the same name and is known to every call by name from then on."""
    entry = {"model": model, "weights": weights, "pretraining": pretraining, **fields}
    ck = _checkpoints.from_entry(name, entry, f"add_checkpoint({name!r})", str(Path.cwd() / "<python>"))
    _checkpoints.ADDED[ck.name] = ck
    return ck


def add_task(task: Task) -> Task:
    """Register a Task built in this process (see tasks.Task: a loader returning an ImageSplit per split); it is
    known to every call by name from then on, and wins over a plugin of the same name."""
    if not isinstance(task, Task):
        raise UserError(f"add_task takes a transfer_eval.tasks.Task, got {type(task).__name__}")
    added = dataclasses.replace(task, source=task.source or "added from Python")
    plugins.ADDED[added.name] = added
    return added
