"""`cache` (list, clear), `data check`, `features` and `store copy`: the caches, the datasets, the features a
probe uses, and the results stores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from transfer_eval.cli.group import cli
from transfer_eval.cli.options import (
    CONTEXT,
    csv,
    data_dir_option,
    device_option,
    download_option,
    json_option,
    load_context,
    registry_option,
    skip_verify_option,
    tasks_dir_option,
)
from transfer_eval.errors import UserError


@cli.group("cache", context_settings=CONTEXT)
def cache_group():
    """The feature and decoded-image caches ($TRANSFER_EVAL_CACHE, default ~/.cache/transfer-eval): list or clear."""


@cache_group.command("list", context_settings=CONTEXT)
@json_option
def cache_list(as_json):
    """Cached feature files (checkpoint, task, split, feature source, images, size), then cached decoded images."""
    from tabulate import tabulate

    from transfer_eval.store import cache

    found = cache.entries()
    if as_json:
        for r in found:
            click.echo(json.dumps(r))
        return
    rows, images = ([r for r in found if r["kind"] == k] for k in ("features", "images"))
    click.echo(
        tabulate(
            [
                [
                    r["key"],
                    r.get("checkpoint", "?"),
                    r.get("task", "?"),
                    r.get("split", "?"),
                    r.get("source", "pooled"),  # the feature source (methods/sources.py)
                    r.get("images", "?"),
                    f"{r['bytes'] / 2**20:.1f}",
                    r["modified"],
                ]
                for r in rows
            ],
            headers=["key", "checkpoint", "task", "split", "source", "images", "MiB", "modified"],
        )
    )
    click.echo(f"{len(rows)} feature entries in {cache.features.folder()}")
    if images:
        click.echo(
            tabulate(
                [
                    [
                        r["key"],
                        r.get("source", "?"),
                        r.get("images", "?"),
                        r.get("format", "raw"),
                        r.get("resize", "?"),
                        f"{r['bytes'] / 2**20:.1f}",
                        r["modified"],
                    ]
                    for r in images
                ],
                headers=["key", "images from", "images", "stored as", "resized by", "MiB", "modified"],
                maxcolwidths=[None, 50, None, None, 50, None, None],
            )
        )
    click.echo(f"{len(images)} decoded-image entries in {cache.image_cache.folder()}")


@cache_group.command("clear", context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_names", default=None, help="Only these checkpoints' features.")
@click.option("-t", "--task", "task_names", default=None, help="Only these tasks' features.")
@click.option("--images", "images_only", is_flag=True, help="Only the decoded-image cache.")
def cache_clear(checkpoint_names, task_names, images_only):
    """Delete cached features (all, or those of some checkpoints or tasks) and, without -c/-t, decoded images."""
    from transfer_eval.store import cache

    cks, tks = set(csv(checkpoint_names)), set(csv(task_names))
    if not images_only:
        keys = {
            e["key"]
            for e in cache.entries("features")
            if (not cks or e.get("checkpoint") in cks) and (not tks or e.get("task") in tks)
        }
        click.echo(f"removed {cache.clear('features', keys)['features']} cached feature files")
    if images_only or not (cks or tks):
        click.echo(f"removed {cache.clear('images')['images']} cached decoded-image entries")


@cli.group(context_settings=CONTEXT)
def data():
    """Datasets: what is present, what is missing and how to get it."""


@data.command("check", context_settings=CONTEXT)
@click.argument("task_names", required=False, default="")
@data_dir_option
@tasks_dir_option
@skip_verify_option
@download_option
@click.option(
    "-m",
    "--mode",
    "mode_name",
    default=None,
    help="Check only the splits this mode reads (e.g. pretrained reads only test).",
)
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

    from transfer_eval import tasks
    from transfer_eval.methods import modes
    from transfer_eval.tasks import groups
    from transfer_eval.tasks import names as names

    found = tasks.discover(tasks_dirs)
    chosen = [names.resolve(n, found, download) for n in groups.expand(csv(task_names), found)]
    chosen = chosen or list(found.values())
    mode_splits = modes.resolve(mode_name).splits if mode_name else None
    ctx = load_context(data_dir, skip_verify, download)
    rows, not_ready = [], []
    for task in chosen:
        if download:
            try:
                task.fetch(ctx)
            except UserError as e:
                rows.append(
                    {
                        "task": task.name,
                        "split": "-",
                        "status": "not downloaded",
                        "images": None,
                        "classes": None,
                        "detail": str(e),
                    }
                )
        for split in [sp for sp in task.splits if mode_splits is None or sp in mode_splits]:
            row = {"task": task.name, "split": split, "status": "ok", "images": None, "classes": None, "detail": ""}
            try:
                ds = task.dataset(split, ctx)
                row["images"], row["classes"] = len(ds), int(len(set(ds.labels.tolist())))
                if deep and ds.paths is not None:
                    bad = ds.unreadable()
                    if bad:
                        row["status"] = "unreadable images"
                        row["detail"] = f"{len(bad)} unreadable, e.g. {ds.paths[bad[0]]}"
            except UserError as e:  # missing data, or another state the error names (an empty class)
                row["status"], row["detail"] = getattr(e, "status", "missing"), str(e)
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
            if (
                last
                and last["task"] == r["task"]
                and r["status"] == last["status"] != "ok"
                and r["detail"] == last["detail"]
            ):
                last["split"] += "," + r["split"]
            else:
                merged.append(dict(r))
        rows = merged
        click.echo(
            tabulate(
                [
                    [
                        r["task"],
                        r["split"],
                        r["status"],
                        "-" if r["images"] is None else r["images"],
                        "-" if r["classes"] is None else r["classes"],
                        r["detail"],
                    ]
                    for r in rows
                ],
                headers=["task", "split", "status", "images", "classes", "detail"],
                disable_numparse=True,
                maxcolwidths=[None, None, None, None, None, 90],
            )
        )
        for name in not_ready:  # where to get the data, under a task whose data is not there (the rest say what)
            if any(r["task"] == name and r["status"] in ("missing", "not downloaded") for r in rows):
                click.echo(f"\n{name}: {next(t for t in chosen if t.name == name).data_help}")
    if not_ready:
        sys.exit(1)


@cli.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "checkpoint_name", required=True, help="A checkpoint (one).")
@click.option("-t", "--task", "task_name", required=True, help="A task (one).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), required=True)
@click.option("--output", type=click.Path(dir_okay=False), required=True, help="The .npz file to write.")
@click.option("--resolution", type=click.IntRange(min=16), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--features",
    "source",
    default="pooled",
    show_default=True,
    help="The feature source: pooled, cls, avg, cls+avg, lastN, lastN+avg or proj (README: which features a probe "
    "reads).",
)
@data_dir_option
@registry_option
@tasks_dir_option
@device_option
@skip_verify_option
def features(
    checkpoint_name,
    task_name,
    split,
    output,
    resolution,
    batch_size,
    source,
    data_dir,
    registries,
    tasks_dirs,
    device,
    skip_verify,
):
    """Write the pre-logits features the probes use: an .npz with `features` (N x D float32) and `labels`.

    Rows are in the split's order, the order the probes sample from.
    """
    import numpy as np

    from transfer_eval import checkpoints, devices, tasks
    from transfer_eval.methods import probe, sources
    from transfer_eval.run import stages
    from transfer_eval.tasks import names

    picked = sources.parse(source)
    if len(picked) != 1:
        raise UserError(f"--features {source!r}: name one source (a file holds one)")
    source = picked[0]
    ck = checkpoints.resolve(checkpoint_name, checkpoints.load_registry(registries))
    task = names.resolve(task_name, tasks.discover(tasks_dirs))
    ctx = load_context(data_dir, skip_verify)
    dev = devices.pick_device(device)
    ds = task.dataset(split, ctx)
    model, cfg = checkpoints.build_model(ck, task.num_classes, resolution)
    cfg = task.input_config(cfg)
    sources.check(model, [source], ck.name, ck.probe.get("projection"))
    proj = stages.projection(ck, resolution).to(dev) if source == "proj" else None
    key_parts = {"weights_sha256": checkpoints.weights_digest(ck), "checkpoint": ck, "task": task, "split_name": split}
    feats, labels, _ = probe.cached_sources(
        model, ds, cfg, dev, batch_size, key_parts, [source], f"features {split}", projection=proj
    )
    feats = feats[source]
    from transfer_eval import io

    out = Path(output)
    with io.replacing(out, ".npz") as tmp:  # never a half-written file under the requested name
        np.savez(tmp, features=feats, labels=labels, ids=np.asarray(ds.ids))
    click.echo(f"wrote {out}: features {feats.shape[0]} x {feats.shape[1]} float32, labels {len(labels)}")


@cli.group("store", context_settings=CONTEXT)
def store_group():
    """The results stores: SQLite files and PostgreSQL databases (postgresql://USER@HOST/DB)."""


@store_group.command("copy", context_settings=CONTEXT)
@click.argument("source")
@click.argument("destination")
def store_copy(source, destination):
    """Copy every result (with its per-sample predictions) from SOURCE to DESTINATION, each a SQLite file or a
    postgresql:// URL. Idempotent: a result already in DESTINATION is left alone, so copying again copies nothing.

    \b
    Example:
      transfer-eval store copy transfer_eval_results.sqlite postgresql://me@dbhost/transfer_eval
    """
    from transfer_eval.cli.options import open_store
    from transfer_eval.store.results import Store

    src = open_store(source)
    dst = Store(destination)
    copied, new = src.copy_to(dst)
    src.close()
    dst.close()
    click.echo(f"copied {copied} results ({new} new) from {src.path} to {dst.path}")
