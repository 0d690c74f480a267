"""One run, end to end (`execute`): read the splits, build and adapt the model, run the mode's stage (which returns
a `Trained`), merge where the mode merges, score test once (then each companion set's test, by the same scorer),
measure, store. `Options` says how runs execute (none of it enters a run's key); `runner.run_all` calls `execute`
for each run still to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transfer_eval import checkpoints, devices, distributed, provenance
from transfer_eval.input import pipeline
from transfer_eval.methods import companions, costs, deltas, finetune, inference, modes, scoring
from transfer_eval.run import checks, stages
from transfer_eval.run.runs import Run
from transfer_eval.store.results import Result, Store
from transfer_eval.tasks import LoadContext, UnreadableImage
from transfer_eval.version import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """How runs execute, not what they measure (none of these enter a run's key)."""

    force: bool = False  # run again where the result is already stored
    download: bool = False  # fetch missing datasets where their source allows it
    save_delta: Path | None = None  # keep each run's per-task delta (safetensors) in this folder
    checkpoint_every: int = 0  # training checkpoint every N steps (0: every 10 minutes)
    inputs: pipeline.InputOptions = field(default_factory=pipeline.InputOptions)
    compile: bool = False  # train through torch.compile
    log: tuple[str, ...] = ()  # experiment trackers that receive each finished run (trackers.KINDS)
    log_dir: Path = Path("transfer_eval_logs")  # where the trackers write
    companions: str = "all"  # companion test sets scored with each run's model: all (present), none, or names


def execute(
    run: Run,
    ctx: LoadContext,
    device: torch.device,
    store: Store,
    command: str = "",
    options: Options = Options(),
    known_tasks: dict | None = None,
) -> Result:
    """Adapt, measure and store one run. Bad input raises UserError before anything is stored.

    With `options.save_delta` (a folder), the per-task delta is kept there as a safetensors file: the shared
    checkpoint plus `checkpoints.apply_delta(model, file)` gives back this run's model and its test predictions
    exactly. `options.inputs` says how images may reach the model; `options.compile` trains through torch.compile.
    Every phase computes in the run's precision (devices.precision_policy), which the record names.
    """
    with devices.using(devices.precision_policy(run.precision, device)):
        return _execute(run, ctx, device, store, command, options, known_tasks)


def _execute(run, ctx, device, store, command, options, known_tasks) -> Result:
    started, recipe, stage = provenance.now(), run.recipe, run.mode.stage
    # Data first: a missing dataset should fail before a large model is built.
    splits = {s: run.task.dataset(s, ctx) for s in run.mode.splits}
    if run.limit is not None:
        splits = {s: split.limited(run.limit) for s, split in splits.items()}
    skipped = [f for s in splits.values() for f in s.skipped]
    keep_head = stage == "eval"
    if keep_head:
        checks.check_own_head(run.checkpoint, run.task)
    extra = {"drop_path_rate": recipe["drop_path"]} if recipe.get("drop_path") else {}
    model, cfg = checkpoints.build_model(
        run.checkpoint, run.task.num_classes, recipe.get("resolution"), keep_head=keep_head, model_kwargs=extra
    )
    cfg = run.task.input_config(cfg)
    model = modes.prepare(run.mode, model, recipe, run.seed)  # new tensors drawn for the run (methods/seeding.py)
    model.to(device)
    trainable = modes.apply(run.mode, model)
    # Where images are resized, decided once from a split that is not sealed (test is read last).
    shown = splits["train"] if "train" in splits else splits["test"]
    input_plan = pipeline.plan_input(options.inputs, shown, cfg, device, recipe if stage == "finetune" else None)
    loaders = pipeline.EvalLoaders(splits, cfg, device, input_plan)  # its workers start once, for every split
    fwd = costs.forward_flops(model, cfg, device)
    result = Result(
        *run.key,
        status="ok",
        resolution=cfg["input_size"][-1],
        recipe=recipe,
        val_holdout=run.task.val_holdout if "val" in splits else None,
        n_test=len(splits["test"]),
        limit_per_split=run.limit,
        split_manifest=splits["test"].manifest(),
        skipped_images=len(skipped),
        skipped_files=skipped[:100],
        device=devices.device_name(device),
        world_size=distributed.world_size(),
        precision=devices.precision(device),
        input_pipeline=input_plan.describe(),
        compiled=options.compile and stage == "finetune",
        started=started,
        fwd_gflops_per_image=fwd / 1e9,
        fwd_gmacs_per_image=fwd / 2e9,
        params_total=costs.count(model),
        **provenance.fields(command),
    )
    result.params_trainable = result.params_per_task = costs.count(model, trainable)
    result.params_head = costs.count(model, trainable & modes.head_names(model))
    result.params_backbone = result.params_trainable - result.params_head
    resume = checkpoints_for(run, options.checkpoint_every) if stage == "finetune" else None
    if resume is not None and resume.claim():
        log.info("transfer-eval: resuming %s from its training checkpoints in %s", run.label(), resume.folder)
    # Model selection never sees test: the split raises if read before every choice has been made.
    splits["test"].seal("model selection (lr, L2 strength) must use val, never test")
    try:
        with devices.PeakMemory(device) as mem:
            trained = stages.STAGES[stage](
                stages.Stage(run, model, cfg, splits, device, input_plan, fwd / 1e9, resume, options.compile, loaders)
            )
            if trained.delta is None:  # the trained tensors, taken before a merge folds them into the weights
                state = model.state_dict()
                trained.delta = {n: _kept(state[n], run.mode) for n in sorted(trainable)}
            model = _deploy(run, model, result, cfg, device)
            # one scorer for test and the companion sets: the stage's (its features), else the deployed model's
            bs = inference.eval_batch_size(recipe)
            scorer = trained.scorer or scoring.model_scorer(model, cfg, device, bs, trained.temperature)
            splits["test"].unseal()  # the test split is read once, here, after every model choice has been made
            scored = scorer(splits["test"], run.task, input_plan, lambda size: loaders.get("test", size))
    except finetune.Diverged as e:
        return _failed(store, result, f"diverged: {e}")
    except torch.OutOfMemoryError as e:
        return _failed(store, result, f"out of memory: {str(e).splitlines()[0]}")
    except UnreadableImage as e:
        # from a DataLoader worker the message starts with torch's "Caught ... in DataLoader worker": keep ours
        lines = [ln.split("UnreadableImage: ", 1)[-1] for ln in str(e).splitlines() if "unreadable image" in ln]
        line, found = checks.unreadable_images(run.task.name, splits, (lines[-1] if lines else str(e)).strip())
        result.selection = {"unreadable": found} if found else {}
        return _failed(store, result, line)
    _record(result, trained, mem.mb)
    meta = deltas.metadata(run, cfg, (trained.selection or {}).get("chosen"))
    if options.save_delta is not None and distributed.is_main():
        result.bytes_per_task = deltas.save(trained.delta, Path(options.save_delta) / deltas.file_name(run), meta)
    else:
        result.bytes_per_task = deltas.size(trained.delta, meta)
    result.eval_images_per_second = len(splits["test"]) / scored.seconds if scored.seconds else None
    labels = inference.truth(splits["test"])
    for k, v in scoring.fields(scored, labels, trained.temperature).items():
        setattr(result, k, v)
    if device.type == "cuda" and result.train_seconds:
        result.gpu_hours = result.train_seconds * result.world_size / 3600
    result.finished = provenance.now()
    if distributed.is_main():  # one writer; under torchrun every process holds the same result
        store.put(result, labels, scored.top5, scored.probs)
        # the same model, scored on the test splits of the tasks that train as this one does
        companions.score(run, result, scorer, cfg, ctx, device, store, options, known_tasks)
    if resume is not None:
        resume.remove()  # the result is stored: nothing left to resume
    return result


def _kept(tensor, mode) -> "torch.Tensor":
    """A delta tensor: a copy where the mode merges (the merge changes the weights in place), else the tensor."""
    return tensor.detach().clone() if mode.merge is not None else tensor


def _deploy(run: Run, model, result: Result, cfg, device):
    """The model a deployed task runs: a mode that merges (SSF, LoRA) folds its parameters into the weights here,
    after training and before test is scored (its own small tensors, not the merged weights, are the delta, kept
    before). The deployed model's forward FLOPs are recorded."""
    if run.mode.merge is not None:
        model = modes.merge(run.mode, model)
        result.deployed_gflops_per_image = costs.forward_flops(model, cfg, device) / 1e9
    else:
        result.deployed_gflops_per_image = result.fwd_gflops_per_image
    return model


def _record(result: Result, t: stages.Trained, peak_mb: float | None) -> None:
    result.val_top1, result.selection = t.val_top1, t.selection
    result.train_seconds, result.train_images_per_second = t.train_seconds, t.train_images_per_second
    result.train_gflops_per_image = t.train_gflops_per_image
    result.train_pflops_total = t.train_gflops_per_image * t.train_images / 1e6
    result.peak_memory_mb = peak_mb
    for k, v in t.fields.items():
        setattr(result, k, v)


def _failed(store: Store, result: Result, reason: str) -> Result:
    result.status = "failed"
    result.error = reason
    result.finished = provenance.now()
    if distributed.is_main():
        store.put(result)
    log.warning("transfer-eval: run failed: %s", reason)
    return result


def checkpoints_for(run: Run, every_steps: int = 0):
    """The training checkpoints of a run: one folder per run key, so the same command finds them again."""
    from transfer_eval import paths
    from transfer_eval.methods.resume import RunCheckpoints

    digest = hashlib.sha256(json.dumps(list(run.key)).encode()).hexdigest()[:24]
    identity = {"key": list(run.key), "recipe": run.recipe, "suite": __version__}
    return RunCheckpoints(paths.cache_dir() / "resume" / digest, every_steps=every_steps, identity=identity)
