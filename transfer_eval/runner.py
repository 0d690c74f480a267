"""Plans runs (checkpoint x task x mode x seed) and drives one run end to end into a Result."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import transfer_eval
from transfer_eval import checkpoints, costs, data, distributed, evaluate, fewshot, finetune, logistic, modes, probe
from transfer_eval.checkpoints import Checkpoint
from transfer_eval.errors import UserError
from transfer_eval.modes import Mode
from transfer_eval.results import Result, Store
from transfer_eval.tasks import LoadContext, Task, UnreadableImage

# Bump when a mode's code changes in a way that can move accuracy; it is part of every protocol hash.
# linear 2: the torch L-BFGS solver run to convergence (tol, max_iter) in place of scikit-learn's capped fits.
PROTOCOL_VERSION = {"linear": 2, "fewshot": 1, "attention": 1, "full": 1, "ffn": 1, "bitfit": 1, "lora": 1,
                    "pretrained": 1}
PROBE_DEFAULTS = {"batch_size": 256, "c_grid": list(probe.COARSE_C), "tol": logistic.TOL,
                  "max_iter": logistic.MAX_ITER, "resolution": None}
FEWSHOT_DEFAULTS = {"batch_size": 256, "shots": list(fewshot.SHOTS), "l2": fewshot.L2,
                    "resolution": None}
EVAL_DEFAULTS = {"batch_size": 256, "resolution": None}
LORA_DEFAULTS = modes.LORA_DEFAULTS
DEFAULT_SEEDS = {"fewshot": (0, 1, 2)}  # big_vision's three sampling seeds; one seed elsewhere


@dataclass(frozen=True)
class Run:
    checkpoint: Checkpoint
    task: Task
    mode: Mode
    seed: int
    recipe: dict  # fully resolved: the mode's defaults, then the task's, then the user's overrides
    weights_sha256: str

    @property
    def protocol_hash(self) -> str:
        blob = json.dumps({"mode": self.mode.name, "version": PROTOCOL_VERSION[self.mode.name],
                           "recipe": self.recipe}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def key(self) -> tuple:
        return (self.checkpoint.name, self.weights_sha256, self.task.name, self.task.version, self.mode.name,
                self.protocol_hash, self.seed)

    def label(self) -> str:
        shots = f" / {self.recipe['shots']}-shot" if self.mode.kind == "fewshot" else ""
        return f"{self.checkpoint.name} / {self.task.name} / {self.mode.name}{shots} / seed {self.seed}"


def resolve_recipe(task: Task, mode: Mode, overrides: dict | None = None, resolution: int | None = None,
                   preset: str = "vit") -> dict:
    """The full recipe of a run: the preset (fine-tuning modes), then the task's fields for the mode, then the
    user's overrides (--set, --resolution)."""
    overrides = dict(overrides or {})
    if resolution:
        overrides["resolution"] = resolution
    if mode.kind in ("probe", "eval", "fewshot"):
        defaults = {"probe": PROBE_DEFAULTS, "eval": EVAL_DEFAULTS, "fewshot": FEWSHOT_DEFAULTS}[mode.kind]
        merged = {**defaults, **task.recipes.get(mode.name, {}), **overrides}
        unknown = sorted(set(merged) - set(defaults))
        if unknown:
            raise UserError(f"unknown {mode.name} recipe field(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(defaults))}")
        if "c_grid" in merged:
            merged["c_grid"] = [float(c) for c in merged["c_grid"]]
        if "shots" in merged:
            shots = merged["shots"] if isinstance(merged["shots"], list) else [merged["shots"]]
            if not shots or not all(isinstance(k, int) and k > 0 for k in shots):
                raise UserError(f"fewshot shots must be positive integers, got {merged['shots']!r}")
            merged["shots"] = shots
            merged["l2"] = float(merged["l2"])
        return merged
    # a mode the task gives no recipe for (ffn, bitfit) takes its generic fine-tuning one, else full's
    task_fields = task.recipes.get(mode.name) or task.recipes.get("finetune") or task.recipes.get("full", {})
    fields = {**finetune.preset_fields(preset, task_fields), **LORA_DEFAULTS, **overrides} if mode.name == "lora" \
        else {**finetune.preset_fields(preset, task_fields), **overrides}
    if mode.name != "lora" and any(fields.get(k) is not None for k in LORA_DEFAULTS):
        raise UserError(f"lora_rank and lora_alpha apply to mode lora only, not {mode.name}")
    fields = finetune.scale_lr(preset, fields, overrides)
    return _jsonable(dataclasses.asdict(finetune.make_recipe(fields)))


def recipe_fields(mode: Mode) -> set[str]:
    """The recipe fields a mode has (what --set may change for it)."""
    if mode.kind == "probe":
        return set(PROBE_DEFAULTS)
    if mode.kind == "fewshot":
        return set(FEWSHOT_DEFAULTS)
    if mode.kind == "eval":
        return set(EVAL_DEFAULTS)
    names = {f.name for f in dataclasses.fields(finetune.Recipe)}
    return names if mode.name == "lora" else names - set(LORA_DEFAULTS)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def plan(ckpts: list[Checkpoint], tasks: list[Task], mode_list: list[Mode], seeds: list[int] | None = None,
         overrides: dict | None = None, resolution: int | None = None, preset: str = "vit") -> list[Run]:
    """Every run of checkpoints x tasks x modes x seeds; a few-shot mode becomes one run per shot count.
    Without `seeds`, each mode's default seeds (three for few-shot, one otherwise)."""
    runs = []
    overrides = dict(overrides or {})
    known = set().union(*(recipe_fields(m) for m in mode_list)) if mode_list else set()
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown recipe field(s) {', '.join(unknown)} for mode(s) "
                        f"{', '.join(m.name for m in mode_list)}; known: {', '.join(sorted(known))}")
    digests = {ck.name: checkpoints.weights_digest(ck) for ck in ckpts}
    for ck in ckpts:
        for task in tasks:
            for mode in mode_list:
                mine = {k: v for k, v in overrides.items() if k in recipe_fields(mode)}  # each mode its own fields
                recipe = resolve_recipe(task, mode, mine, resolution, preset)
                recipes = [{**recipe, "shots": k} for k in recipe["shots"]] if mode.kind == "fewshot" else [recipe]
                for r in recipes:
                    for seed in seeds or DEFAULT_SEEDS.get(mode.name, (0,)):
                        runs.append(Run(ck, task, mode, seed, r, digests[ck.name]))
    return runs


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    root = Path(transfer_eval.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _provenance(command: str) -> dict:
    import timm
    import torchvision

    return {"suite_version": transfer_eval.__version__, "git_commit": _git_commit(),
            "torch_version": torch.__version__, "timm_version": timm.__version__,
            "torchvision_version": torchvision.__version__, "command": command}


def checkpoints_for(run: Run, every_steps: int = 0):
    """The training checkpoints of a run: one folder per run key, so the same command finds them again."""
    from transfer_eval import paths
    from transfer_eval.resume import RunCheckpoints

    digest = hashlib.sha256(json.dumps(list(run.key)).encode()).hexdigest()[:24]
    return RunCheckpoints(paths.cache_dir() / "resume" / digest, every_steps=every_steps)


def execute(run: Run, ctx: LoadContext, device: torch.device, store: Store, command: str = "",
            log=print, save_delta: Path | None = None, checkpoint_every: int = 0,
            inputs: data.InputOptions | None = None, compile: bool = False) -> Result:
    """Adapt, measure and store one run. Bad input raises UserError before anything is stored.

    With `save_delta` (a folder), the per-task delta is kept there as a safetensors file: the shared checkpoint
    plus `checkpoints.apply_delta(model, file)` gives back this run's model and its test predictions exactly.
    `inputs` says how images may reach the model (data.InputOptions); `compile` trains through torch.compile.
    """
    started = _now()
    recipe = run.recipe
    # Data first: a missing dataset should fail before a large model is built.
    splits = {s: run.task.dataset(s, ctx) for s in run.mode.splits}
    skipped = [f for s in splits.values() for f in s.skipped]
    keep_head = run.mode.kind == "eval"
    if keep_head:
        check_own_head(run.checkpoint, run.task)
    extra = {"drop_path_rate": recipe["drop_path"]} if recipe.get("drop_path") else {}
    model, cfg = checkpoints.build_model(run.checkpoint, run.task.num_classes, recipe.get("resolution"),
                                         keep_head=keep_head, model_kwargs=extra)
    model = modes.prepare(run.mode, model, recipe)
    model.to(device)
    trainable = modes.apply(run.mode, model)
    # Where images are resized, decided once from a split that is not sealed (test is read last).
    shown = splits["train"] if "train" in splits else splits["test"]
    plan = data.plan_input(inputs or data.InputOptions(), shown, cfg, device,
                           recipe if run.mode.kind == "finetune" else None)
    result = Result(*run.key, status="ok", resolution=cfg["input_size"][-1], recipe=recipe,
                    val_holdout=run.task.val_holdout if "val" in splits else None, n_test=len(splits["test"]),
                    split_manifest=splits["test"].manifest(), skipped_images=len(skipped),
                    skipped_files=skipped[:100], device=costs.device_name(device),
                    world_size=distributed.world_size(),
                    precision=data.precision(device), input_pipeline=plan.describe(),
                    compiled=compile and run.mode.kind == "finetune", started=started, **_provenance(command))
    fwd = costs.forward_flops(model, cfg, device)
    result.fwd_gflops_per_image = fwd / 1e9
    result.fwd_gmacs_per_image = fwd / 2e9
    result.params_total = costs.count(model)
    result.params_trainable = result.params_per_task = costs.count(model, trainable)
    ckpts = checkpoints_for(run, checkpoint_every) if run.mode.kind == "finetune" else None
    if ckpts is not None and ckpts.exists:
        log(f"transfer-eval: resuming {run.label()} from its training checkpoints in {ckpts.folder}",
            file=sys.stderr)
    # Model selection never sees test: the split raises if read before every choice has been made.
    splits["test"].seal("model selection (lr, L2 strength) must use val, never test")
    try:
        with costs.PeakMemory(device) as mem:
            if run.mode.kind == "fewshot":
                splits["test"].unseal()  # nothing is chosen: lambda is fixed (big_vision)
                top5, eval_seconds, delta = _fewshot(run, model, cfg, splits, device, result, plan)
            else:
                if run.mode.kind == "probe":
                    _probe(run, model, cfg, splits, device, result, plan)
                elif run.mode.kind == "finetune":
                    _finetune(run, model, cfg, splits, device, result, ckpts, plan, compile)
                else:
                    result.train_gflops_per_image = result.train_pflops_total = result.train_seconds = 0.0
                # the test split is read once, here, after every model choice has been made on val
                splits["test"].unseal()
                bs = int(recipe.get("eval_batch_size", recipe.get("batch_size", 256)))
                top5, eval_seconds = evaluate.predict(model, splits["test"], cfg, device, bs, plan, desc="test")
                state = model.state_dict()
                delta = {n: state[n] for n in sorted(trainable)}
    except finetune.Diverged as e:
        return _failed(store, result, f"diverged: {e}", log)
    except torch.OutOfMemoryError as e:
        return _failed(store, result, f"out of memory: {str(e).splitlines()[0]}", log)
    except UnreadableImage as e:
        # from a DataLoader worker the message starts with torch's "Caught ... in DataLoader worker": keep ours
        lines = [ln.split("UnreadableImage: ", 1)[-1] for ln in str(e).splitlines() if "unreadable image" in ln]
        return _failed(store, result, (lines[-1] if lines else str(e)).strip(), log)
    result.peak_memory_mb = mem.mb
    path = None
    if save_delta is not None and distributed.is_main():
        path = Path(save_delta) / f"{run.checkpoint.name}__{run.task.name}__{run.mode.name}__seed{run.seed}__" \
                                  f"{run.protocol_hash}.safetensors"
    result.bytes_per_task = costs.delta_bytes(delta, path, metadata=_delta_metadata(run, cfg))
    result.eval_images_per_second = len(splits["test"]) / eval_seconds if eval_seconds else None
    labels = splits["test"].labels
    result.top1 = float((top5[:, 0] == labels).mean())
    result.top5 = float((top5 == labels[:, None]).any(1).mean())
    result.balanced_top1 = balanced_accuracy(labels, top5[:, 0])
    if device.type == "cuda" and result.train_seconds:
        result.gpu_hours = result.train_seconds * result.world_size / 3600
    result.finished = _now()
    if distributed.is_main():  # one writer; under torchrun every process holds the same result
        store.put(result, labels, top5)
    if ckpts is not None:
        ckpts.remove()  # the result is stored: nothing left to resume
    return result


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `labels`."""
    classes = np.unique(labels)
    return float(np.mean([(predictions[labels == c] == c).mean() for c in classes]))


def _features(run, model, cfg, split, name, device, plan=None):
    """(features, labels, extraction seconds or 0.0 on a cache hit)."""
    start = time.perf_counter()
    key_parts = {"weights_sha256": run.weights_sha256, "checkpoint": run.checkpoint, "task": run.task,
                 "split_name": name}
    feats, labels, hit = probe.cached_features(model, split, cfg, device, int(run.recipe["batch_size"]),
                                               key_parts, desc=f"features {name}", plan=plan)
    return feats, labels, 0.0 if hit else time.perf_counter() - start


def _fewshot(run, model, cfg, splits, device, result, plan=None):
    """big_vision's few-shot evaluator for one (shots, seed): features of train and test (cached), k examples
    per class sampled by the run's seed, closed-form ridge regression, test top-1."""
    xtr, ytr, extract_seconds = _features(run, model, cfg, splits["train"], "train", device, plan)
    xte, yte, test_seconds = _features(run, model, cfg, splits["test"], "test", device, plan)
    shots = int(run.recipe["shots"])
    counts = np.bincount(ytr)
    short = int(((counts > 0) & (counts < shots)).sum())  # classes with fewer than k examples give all they have
    idx = np.sort(fewshot.indices(ytr, shots, run.seed))  # in file order: one pass over memory-mapped features
    start = time.perf_counter()
    mean, std, w = fewshot.solve(xtr[idx], ytr[idx], run.task.num_classes, run.recipe["l2"], device)
    top5 = fewshot.predict(xte, mean, std, w, device)
    solve_seconds = time.perf_counter() - start
    result.shots = shots
    result.selection = {"searched": "none (l2 fixed)", "l2": run.recipe["l2"], "examples": int(len(idx)),
                        "classes_short_of_k": short, "features_cached": extract_seconds == 0.0}
    result.val_top1 = None
    # training compute: the forward passes of the few-shot examples the solve needs
    result.train_gflops_per_image = result.fwd_gflops_per_image
    result.train_pflops_total = result.fwd_gflops_per_image * len(idx) / 1e6
    result.train_seconds = extract_seconds + solve_seconds
    result.train_images_per_second = len(ytr) / extract_seconds if extract_seconds else None
    result.params_trainable = result.params_per_task = int(w.size)
    delta = {"fewshot.weight": torch.from_numpy(w.astype(np.float32)),
             "fewshot.mean": torch.from_numpy(mean.astype(np.float32)),
             "fewshot.std": torch.from_numpy(std.astype(np.float32))}
    return top5, test_seconds, delta


def _probe(run, model, cfg, splits, device, result, plan=None):
    feats, extract_seconds = {}, 0.0
    for s in ("train", "val"):
        x, y, seconds = _features(run, model, cfg, splits[s], s, device, plan)
        feats[s], extract_seconds = (x, y), extract_seconds + seconds
    t1 = time.perf_counter()
    out = probe.linear_probe(feats["train"], feats["val"], run.task.num_classes, run.recipe["c_grid"], device,
                             run.recipe["tol"], run.recipe["max_iter"])
    fit_seconds = time.perf_counter() - t1
    n = len(splits["train"]) + len(splits["val"])
    # A probe's training compute is the feature extraction over train+val (the classifier's is negligible).
    result.train_gflops_per_image = result.fwd_gflops_per_image
    result.train_pflops_total = result.fwd_gflops_per_image * n / 1e6
    result.train_seconds = extract_seconds + fit_seconds
    result.train_images_per_second = n / extract_seconds if extract_seconds > 0 else None
    result.val_top1 = out["val_top1"]
    result.selection = {**out["selection"], "features_cached": extract_seconds == 0.0}
    head = model.get_classifier()
    with torch.no_grad():  # the probe becomes the model's head: the stored delta is a usable model part
        head.weight.copy_(torch.from_numpy(out["head_weight"]))
        head.bias.copy_(torch.from_numpy(out["head_bias"]))


def _finetune(run, model, cfg, splits, device, result, ckpts=None, plan=None, compile=False):
    recipe = finetune.make_recipe(run.recipe)
    result.train_gflops_per_image = costs.train_step_flops(model, cfg, device) / 1e9
    out = finetune.finetune(model, splits["train"], splits["val"], cfg, recipe, device, run.seed, ckpts, plan,
                            compile)
    result.val_top1 = out["val_top1"]
    result.selection = out["selection"]
    result.train_seconds = out["train_seconds"]
    result.train_images_per_second = out["train_images"] / out["train_seconds"] if out["train_seconds"] else None
    result.train_pflops_total = result.train_gflops_per_image * out["train_images"] / 1e6
    result.micro_batch_size, result.oom_backoffs = out["micro_batch_size"], out["oom_backoffs"]


def check_inputs(run: Run, ctx: LoadContext, device: torch.device, inputs: data.InputOptions) -> None:
    """Raise UserError now if the input pipeline asked for cannot serve this run (`--device-resize on` for large
    images, say), rather than when the run starts. The architecture is built on the meta device: no weights."""
    with torch.device("meta"):
        _, cfg = checkpoints.build_model(run.checkpoint, run.task.num_classes, run.recipe.get("resolution"),
                                         load_weights=False)
    shown = "train" if "train" in run.mode.splits else "test"
    data.plan_input(inputs, run.task.dataset(shown, ctx), cfg, device,
                    run.recipe if run.mode.kind == "finetune" else None)


def check_own_head(ck: Checkpoint, task: Task) -> None:
    """Evaluating a checkpoint as it is needs its own classifier over the task's label space."""
    if ck.weights_kind == "none":
        raise UserError(f"checkpoint {ck.name!r} has random weights: its classifier means nothing; the "
                        f"pretrained mode needs trained weights with a {task.num_classes}-class head")
    if ck.weights_kind in ("timm", "hf-hub"):
        import timm

        cfg = timm.models.get_pretrained_cfg(ck.model) if ck.weights_kind == "timm" else None
        classes = getattr(cfg, "num_classes", None) if cfg is not None else None
        if classes is not None and classes != task.num_classes:
            raise UserError(f"checkpoint {ck.name!r} has a {classes}-class head, task {task.name!r} has "
                            f"{task.num_classes} classes; evaluate it with linear, attention or full instead")
        return
    path = checkpoints.weights_path_for(ck)
    head = checkpoints.head_shape(path)
    if head is None or head[0] != task.num_classes:
        raise UserError(f"checkpoint {ck.name!r}: {path} has no {task.num_classes}-class head"
                        f"{f' (its head has {head[0]} classes)' if head else ''}; the pretrained mode evaluates "
                        f"the checkpoint's own classifier")


def _delta_metadata(run: Run, cfg: dict) -> dict[str, str]:
    return {"checkpoint": run.checkpoint.name, "weights_sha256": run.weights_sha256, "task": run.task.name,
            "task_version": str(run.task.version), "mode": run.mode.name, "num_classes": str(run.task.num_classes),
            "resolution": str(cfg["input_size"][-1]), "protocol_hash": run.protocol_hash, "seed": str(run.seed),
            "format": "transfer-eval delta v1: load with transfer_eval.checkpoints.apply_delta",
            **({"lora_rank": str(run.recipe["lora_rank"]), "lora_alpha": str(run.recipe["lora_alpha"])}
               if run.mode.name == "lora" else {})}


def _failed(store: Store, result: Result, reason: str, log) -> Result:
    result.status = "failed"
    result.error = reason
    result.finished = _now()
    if distributed.is_main():
        store.put(result)
    log(f"transfer-eval: run failed: {reason}", file=sys.stderr)
    return result
