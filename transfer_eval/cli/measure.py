"""`cost` and `bench`: compute and sharing cost without data, and the suite's loops timed against bare ones."""

from __future__ import annotations

import json

import click

from transfer_eval.cli.group import cli
from transfer_eval.cli.options import CONTEXT, csv, device_option, json_option, overrides, registry_option
from transfer_eval.errors import UserError


@cli.command(context_settings=CONTEXT)
@click.option(
    "-c",
    "--checkpoint",
    "checkpoint_name",
    required=True,
    help="A registry name or a timm architecture; only the architecture is built, nothing downloaded.",
)
@click.option("-m", "--mode", "mode_names", required=True, help="Modes, comma-separated.")
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--resolution", type=click.IntRange(min=16), default=None, help="Input size in pixels.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A mode's own field, as `run --set` takes it (e.g. --set lora_rank=4 --set lora_targets=qkv); repeatable.",
)
@registry_option
@json_option
def cost(checkpoint_name, mode_names, num_classes, resolution, settings, registries, as_json):
    """Compute and parameter-sharing cost of a checkpoint in a mode, without data or weights.

    FLOPs are counted by torch.utils.flop_counter on a real forward pass and a real training step of the mode
    (1 multiply-add = 2 FLOPs; GMACs are multiply-adds). The bytes per task are those of the mode's delta
    written as a safetensors file. Trainable parameters are shown for the backbone and the head apart (the
    published PEFT columns exclude the head); "deployed" is the forward pass of the task as served, after
    merging where the mode merges (SSF, LoRA: the backbone's FLOPs).

    \b
    Example:
      transfer-eval cost -c vit_base_patch16_224 -m linear,attention,full
    """
    from tabulate import tabulate

    from transfer_eval import checkpoints
    from transfer_eval.methods import costs, modes

    ck = checkpoints.resolve(checkpoint_name, checkpoints.load_registry(registries))
    mode_list = [modes.resolve(n) for n in csv(mode_names)]
    fields = overrides(settings)
    known = {k for m in mode_list for k in m.defaults if m.prepare is not None}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(
            f"cost --set: {', '.join(unknown)} shape none of {', '.join(m.name for m in mode_list)}; "
            f"fields that change a mode's structure: {', '.join(sorted(known)) or 'none'}"
        )
    model, cfg = checkpoints.build_model(ck, num_classes, resolution, load_weights=False)
    rows = []
    for mode in mode_list:  # cost_card adapts a copy of the one model for each mode
        mine = {k: v for k, v in fields.items() if k in mode.defaults}
        rows.append(
            {
                "checkpoint": ck.name,
                "model": ck.model,
                "mode": mode.name,
                "num_classes": num_classes,
                **({"set": mine} if mine else {}),
                **costs.cost_card(model, cfg, mode, recipe=mine),
            }
        )
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    table = [
        [
            r["mode"],
            r["resolution"],
            f"{r['fwd_gflops_per_image']:.2f} / {r['fwd_gmacs_per_image']:.2f}",
            f"{r['deployed_gflops_per_image']:.2f}",
            f"{r['train_gflops_per_image']:.2f}",
            f"{r['params_total']:,}",
            f"{r['params_per_task']:,}",
            f"{r['params_backbone']:,}",
            f"{r['params_head']:,}",
            "-" if r["bytes_per_task"] is None else f"{r['bytes_per_task'] / 2**20:.2f}",
            "-" if r["storage_saved_per_extra_task"] is None else f"{100 * r['storage_saved_per_extra_task']:.1f}%",
            r["stored_per_task"],
        ]
        for r in rows
    ]
    click.echo(f"{ck.name} ({ck.model}), {num_classes} classes")
    click.echo(
        tabulate(
            table,
            headers=[
                "mode",
                "px",
                "forward GFLOPs / GMACs per image",
                "deployed GFLOPs/img",
                "train-step GFLOPs/img",
                "params",
                "params/task",
                "backbone params/task",
                "head params",
                "MiB/task",
                "saved per extra task",
                "stored per task",
            ],
            disable_numparse=True,
        )
    )


@cli.command(context_settings=CONTEXT)
@click.option(
    "-c",
    "--checkpoint",
    "checkpoint_name",
    default=None,
    help="A registry name or a timm architecture (its architecture only: nothing is downloaded). "
    "Required, except with --scale.",
)
@click.option(
    "-m",
    "--mode",
    "mode_names",
    default="attention,full",
    show_default=True,
    help="Fine-tuning modes to time, comma-separated.",
)
@click.option(
    "--scale",
    is_flag=True,
    help="Instead: the linear probe on synthetic N x D x K features (the suite's solver and "
    "scikit-learn's, side by side) and feature extraction's peak memory at two dataset sizes.",
)
@click.option(
    "--n",
    "scale_n",
    type=click.IntRange(min=10),
    default=50_000,
    show_default=True,
    help="--scale: training rows (val and test get N/5 each).",
)
@click.option(
    "--dim",
    "scale_dim",
    type=click.IntRange(min=1),
    default=384,
    show_default=True,
    help="--scale: feature dimension D.",
)
@click.option(
    "--classes",
    "scale_classes",
    type=click.IntRange(min=2),
    default=1000,
    show_default=True,
    help="--scale: number of classes K.",
)
@click.option(
    "--c-grid",
    "scale_grid",
    default="0.1,1,10",
    show_default=True,
    help="--scale: the probe's coarse C grid (the fine grid and refit follow, as in a run).",
)
@click.option(
    "--sklearn/--no-sklearn",
    "scale_sklearn",
    default=True,
    show_default=True,
    help="--scale: also run the protocol with scikit-learn (slow at large N x K).",
)
@click.option(
    "--extract-sizes",
    "scale_sizes",
    default="2000,20000",
    show_default=True,
    help="--scale: image counts for the extraction peak-memory runs; 0 skips them.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Timed steps per loop.")
@click.option("--resolution", type=click.IntRange(min=16), default=None)
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=None,
    help="Images for each extraction timing (decoded, and photo-like JPEG files), at least two batches. "
    "Default: batch size x steps; give thousands on a GPU for a steady-state rate.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="DataLoader workers for the input-pipeline timings. Default: as `run` (none on a CPU).",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="Both training loops through torch.compile (the warm-up steps absorb the compilation).",
)
@registry_option
@device_option
@json_option
def bench(
    checkpoint_name,
    mode_names,
    scale,
    scale_n,
    scale_dim,
    scale_classes,
    scale_grid,
    scale_sklearn,
    scale_sizes,
    batch_size,
    steps,
    resolution,
    images,
    workers,
    compile_model,
    registries,
    device,
    as_json,
):
    """Time the suite's training step and feature extraction against bare timm/torch loops, side by side.

    Prints images/s, step time, peak memory, achieved TFLOP/s and its fraction of the device's measured matmul
    peak, and ratio_vs_reference (the bare loop's step time over the suite's: 1.0 is parity). Targets:
    suite step >= 0.97x the bare loop; attention-only <= 0.85x full's step time and <= 0.8x its peak memory
    (ViT-B/16, 224 px); extraction >= 0.9x bare inference (it includes the suite's input pipeline), timed at
    steady state (the loader's start-up reported apart), on decoded images and on photo-like 500x375 JPEG files.

    With --scale: the linear probe on synthetic features through the suite's solver and scikit-learn's (time,
    iterations, chosen C, agreement), and extraction's peak memory at two dataset sizes (target: flat in N).

    \b
    Examples:
      transfer-eval bench -c vit_base_patch16_224 -m attention,full --batch-size 64 --device cuda
      transfer-eval bench --scale --n 50000 --dim 384 --classes 1000
      transfer-eval bench --scale --n 1281167 --dim 768 --classes 1000 --no-sklearn --device cuda
    """
    from tabulate import tabulate

    from transfer_eval import checkpoints, devices
    from transfer_eval.measure import bench as benchmark
    from transfer_eval.methods import modes

    if scale:
        return _bench_scale(
            scale_n,
            scale_dim,
            scale_classes,
            scale_grid,
            scale_sklearn,
            scale_sizes,
            devices.pick_device(device),
            as_json,
        )
    if checkpoint_name is None:
        raise UserError("bench needs -c CHECKPOINT (or --scale for the probe and extraction at scale)")
    ck = checkpoints.resolve(checkpoint_name, checkpoints.load_registry(registries))
    mode_list = [modes.resolve(n) for n in csv(mode_names)]
    if not any(m.stage == "finetune" for m in mode_list):
        raise UserError(
            "bench times fine-tuning modes: give at least one of "
            + ", ".join(m.name for m in modes.MODES.values() if m.stage == "finetune")
        )
    report = benchmark.run(
        ck, mode_list, batch_size, steps, devices.pick_device(device), resolution, workers, compile_model, images
    )
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{report['checkpoint']} ({report['model']}), batch {batch_size}, {steps} timed steps, "
        f"{report['device']}, {report['precision']}{', torch.compile' if compile_model else ''}, "
        f"torch {report['torch']}"
    )
    click.echo(f"measured matmul peak: {report['matmul_peak_tflops']:.3f} TFLOP/s")
    rows = [
        [
            name,
            f"{r['suite_images_per_s']:.1f}",
            f"{r['ref_images_per_s']:.1f}",
            f"{r['ratio_vs_reference']:.3f}",
            f"{1000 * r['suite_step_s']:.1f}",
            f"{r['suite_peak_mb']:.0f}",
            f"{r['ref_peak_mb']:.0f}",
            f"{r['suite_tflops']:.3f}",
            f"{100 * r['fraction_of_matmul_peak']:.1f}%",
        ]
        for name, r in report["modes"].items()
    ]
    e = report["extraction"]
    j = e["jpeg"]
    rows.append(
        [
            "extraction, decoded",
            f"{e['suite_images_per_s']:.1f}",
            f"{e['ref_images_per_s']:.1f}",
            f"{e['ratio_vs_reference']:.3f}",
        ]
        + ["-"] * 5
    )
    rows.append(
        [
            f"extraction, {j['mean_jpeg_kb']:.0f} kB JPEGs",
            f"{j['images_per_s']:.1f}",
            f"{e['ref_images_per_s']:.1f}",
            f"{j['vs_model']:.3f}",
        ]
        + ["-"] * 5
    )
    d = e["jpeg_device_decode"]
    rows.append(
        [
            f"extraction, {j['mean_jpeg_kb']:.0f} kB JPEGs, --decode device",
            f"{d['images_per_s']:.1f}",
            f"{e['ref_images_per_s']:.1f}",
            f"{d['vs_model']:.3f}",
        ]
        + ["-"] * 5
    )
    click.echo(
        tabulate(
            rows,
            headers=[
                "loop",
                "suite img/s",
                "bare img/s",
                "ratio_vs_reference",
                "suite ms/step",
                "suite peak MB",
                "bare peak MB",
                "suite TFLOP/s",
                "of matmul peak",
            ],
            disable_numparse=True,
        )
    )
    click.echo(
        f"extraction over {e['images']} images at steady state; the loader's start-up (workers, first batch) "
        f"apart: {e['startup_s']:.2f} s decoded, {j['startup_s']:.2f} s JPEG files"
    )
    if "attention_vs_full_step_time" in report:
        click.echo(
            f"attention / full: step time {report['attention_vs_full_step_time']:.3f}x, peak memory "
            f"{report['attention_vs_full_peak_memory']:.3f}x"
        )
    p = report["input_pipeline"]
    keeps = lambda k: f"{p[k]:.2f}x the fastest training step" if k in p else "-"  # noqa: E731
    click.echo(f"input pipelines alone ({p['workers']} workers, training augmentation, images/s delivered):")
    click.echo(
        tabulate(
            [
                ["32 px, CPU transforms", f"{p['small_cpu_images_per_s']:.0f}", "-"],
                [
                    "32 px, resized on the device",
                    f"{p['small_device_images_per_s']:.0f}",
                    keeps("small_device_vs_training"),
                ],
                [
                    f"500x375 JPEG ({p['mean_jpeg_kb']:.0f} kB), decoded each time",
                    f"{p['jpeg_decode_images_per_s']:.0f}",
                    keeps("jpeg_decode_vs_training"),
                ],
                [
                    "500x375 JPEG, decoded and resized on the device (--decode device)",
                    f"{p['jpeg_device_decode_images_per_s']:.0f}",
                    keeps("jpeg_device_decode_vs_training"),
                ],
                [
                    "500x375 JPEG, decoded-image cache",
                    f"{p['jpeg_cached_images_per_s']:.0f}",
                    keeps("jpeg_cached_vs_training"),
                ],
            ],
            headers=["pipeline", "img/s", "keeps up?"],
            disable_numparse=True,
        )
    )
    click.echo(
        f"device resize / CPU transforms: {p['device_vs_cpu_small']:.2f}x; image cache / decoding: "
        f"{p['cache_vs_decode_jpeg']:.2f}x; a training split's image cache is "
        f"{p['train_cache_vs_source_bytes']:.2f}x the size of its source JPEGs (target <= 1.2x)"
    )
    lv = p["device_decode_levels"]
    click.echo(
        "--decode device against the CPU path, one batch with the same draws (8-bit levels): "
        + "; ".join(
            f"{k} max {v['max']:.0f}, mean {v['mean']:.3f}, {100 * v['differing']:.2f}% of values differ"
            for k, v in lv.items()
        )
    )


def _bench_scale(n, dim, classes, grid, with_sklearn, sizes, device, as_json):
    from tabulate import tabulate

    from transfer_eval.measure import bench_scale

    try:
        c_grid = [float(c) for c in csv(grid)]
        extract = [int(k) for k in csv(sizes) if int(k) > 0]
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
    click.echo(
        f"linear probe: {p['n_train']} train + {p['n_val']} val rows x {p['dim']} dims x {p['classes']} "
        f"classes on {p['device']}; coarse C grid {p['c_grid']}, tol {p['tol']:g}"
    )
    solvers = [("suite (torch L-BFGS)", p["suite"])] + ([("scikit-learn", p["sklearn"])] if "sklearn" in p else [])
    click.echo(
        tabulate(
            [
                [
                    name,
                    f"{r['seconds']:.1f}",
                    r["total_iterations"],
                    f"{r['seconds_per_iteration']:.3f}",
                    f"{r['chosen_c']:.4g}",
                    f"{r['test_top1']:.4f}",
                ]
                for name, r in solvers
            ],
            headers=["solver", "seconds", "iterations", "s/iteration", "chosen C", "test top-1"],
            disable_numparse=True,
        )
    )
    if p["suite"]["not_converged"]:
        click.echo(f"suite fits stopped at the iteration cap: {', '.join(p['suite']['not_converged'])}")
    if "agreement" in p:
        a = p["agreement"]
        click.echo(
            f"suite / scikit-learn: {p['speedup_vs_sklearn']:.2f}x faster; same C: {a['same_c']}; "
            f"identical test predictions {100 * a['test_predictions_identical']:.2f}%; head weights within "
            f"{a['head_weight_max_diff_relative']:.2e} of the largest"
        )
    if "extraction" in report:
        e = report["extraction"]
        click.echo(f"feature extraction (width {e['width']}, each size in a fresh process):")
        click.echo(
            tabulate(
                [
                    [r["images"], f"{r['feature_mb']:.1f}", f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.1f}"]
                    for r in e["runs"]
                ],
                headers=["images", "features MB", "peak RSS MB", "seconds"],
                disable_numparse=True,
            )
        )
        click.echo(f"peak memory, largest / smallest: {e['peak_growth']:.3f}x (target: within 1.10x)")
