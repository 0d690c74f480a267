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
from transfer_eval import checkpoints, costs, data, finetune, modes, probe
from transfer_eval.checkpoints import Checkpoint
from transfer_eval.errors import UserError
from transfer_eval.modes import Mode
from transfer_eval.results import Result, Store
from transfer_eval.tasks import LoadContext, Task

# Bump when a mode's code changes in a way that can move accuracy; it is part of every protocol hash.
PROTOCOL_VERSION = {"linear": 1, "attention": 1, "full": 1}
PROBE_DEFAULTS = {"batch_size": 256, "c_grid": list(probe.COARSE_C), "resolution": None}


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
        return f"{self.checkpoint.name} / {self.task.name} / {self.mode.name} / seed {self.seed}"


def resolve_recipe(task: Task, mode: Mode, overrides: dict | None = None, resolution: int | None = None) -> dict:
    overrides = dict(overrides or {})
    if resolution:
        overrides["resolution"] = resolution
    if mode.kind == "probe":
        merged = {**PROBE_DEFAULTS, **task.recipes.get(mode.name, {}), **overrides}
        unknown = sorted(set(merged) - set(PROBE_DEFAULTS))
        if unknown:
            raise UserError(f"unknown {mode.name} recipe field(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(PROBE_DEFAULTS))}")
        merged["c_grid"] = [float(c) for c in merged["c_grid"]]
        return merged
    fields = {**task.recipes.get(mode.name, {}), **overrides}
    return _jsonable(dataclasses.asdict(finetune.make_recipe(fields)))


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def plan(ckpts: list[Checkpoint], tasks: list[Task], mode_list: list[Mode], seeds: list[int],
         overrides: dict | None = None, resolution: int | None = None) -> list[Run]:
    runs = []
    digests = {ck.name: checkpoints.weights_digest(ck) for ck in ckpts}
    for ck in ckpts:
        for task in tasks:
            for mode in mode_list:
                recipe = resolve_recipe(task, mode, overrides, resolution)
                for seed in seeds:
                    runs.append(Run(ck, task, mode, seed, recipe, digests[ck.name]))
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


def _topk(logits: np.ndarray, k: int = 5) -> np.ndarray:
    k = min(k, logits.shape[1])
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    if k < 5:  # pad so every run stores N x 5
        idx = np.concatenate([idx, np.full((len(idx), 5 - k), -1, idx.dtype)], axis=1)
    return idx


def execute(run: Run, ctx: LoadContext, device: torch.device, store: Store, command: str = "",
            log=print) -> Result:
    """Adapt, measure and store one run. Bad input raises UserError before anything is stored."""
    started = _now()
    recipe = run.recipe
    # Data first: a missing dataset should fail before a large model is built.
    splits = {s: run.task.dataset(s, ctx) for s in ("train", "val", "test")}
    model, cfg = checkpoints.build_model(run.checkpoint, run.task.num_classes, recipe.get("resolution"))
    model.to(device)
    trainable = modes.apply(run.mode, model)
    result = Result(*run.key, status="ok", resolution=cfg["input_size"][-1], recipe=recipe,
                    val_holdout=run.task.val_holdout, n_test=len(splits["test"]),
                    split_manifest=splits["test"].manifest(), device=costs.device_name(device),
                    precision=data.precision(device), started=started, **_provenance(command))
    fwd = costs.forward_flops(model, cfg, device)
    result.fwd_gflops_per_image = fwd / 1e9
    result.fwd_gmacs_per_image = fwd / 2e9
    result.params_total = costs.count(model)
    result.params_trainable = result.params_per_task = costs.count(model, trainable)
    try:
        with costs.PeakMemory(device) as mem:
            if run.mode.kind == "probe":
                logits, delta, eval_seconds = _probe(run, model, cfg, splits, device, result)
            else:
                logits, delta, eval_seconds = _finetune(run, model, cfg, splits, device, result, trainable)
    except finetune.Diverged as e:
        return _failed(store, result, f"diverged: {e}", log)
    except torch.OutOfMemoryError as e:
        return _failed(store, result, f"out of memory: {str(e).splitlines()[0]}", log)
    result.peak_memory_mb = mem.mb
    result.bytes_per_task = costs.delta_bytes(delta)
    result.eval_images_per_second = len(splits["test"]) / eval_seconds if eval_seconds > 0 else None
    labels = splits["test"].labels
    top5 = _topk(logits)
    result.top1 = float((top5[:, 0] == labels).mean())
    result.top5 = float((top5 == labels[:, None]).any(1).mean())
    if device.type == "cuda" and result.train_seconds:
        result.gpu_hours = result.train_seconds * result.world_size / 3600
    result.finished = _now()
    store.put(result, labels, top5)
    return result


def _probe(run, model, cfg, splits, device, result):
    bs = int(run.recipe["batch_size"])
    start = time.perf_counter()
    feats = {s: probe.extract_features(model, splits[s], cfg, device, bs, desc=f"features {s}")
             for s in ("train", "val")}
    extract_seconds = time.perf_counter() - start
    t0 = time.perf_counter()
    feats["test"] = probe.extract_features(model, splits["test"], cfg, device, bs, desc="features test")
    eval_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = probe.linear_probe(feats["train"], feats["val"], feats["test"], run.task.num_classes, run.seed,
                             run.recipe["c_grid"])
    fit_seconds = time.perf_counter() - t1
    n = len(splits["train"]) + len(splits["val"])
    # A probe's training compute is the feature extraction over train+val (the classifier's is negligible).
    result.train_gflops_per_image = result.fwd_gflops_per_image
    result.train_pflops_total = result.fwd_gflops_per_image * n / 1e6
    result.train_seconds = extract_seconds + fit_seconds
    result.train_images_per_second = n / extract_seconds if extract_seconds > 0 else None
    result.val_top1 = out["val_top1"]
    result.selection = out["selection"]
    head = model.get_classifier()
    delta = {"head.weight": torch.from_numpy(out["head_weight"]), "head.bias": torch.from_numpy(out["head_bias"])}
    with torch.no_grad():  # the probe becomes the model's head, so the stored delta is a usable model part
        head.weight.copy_(delta["head.weight"])
        head.bias.copy_(delta["head.bias"])
    return out["test_logits"], delta, eval_seconds


def _finetune(run, model, cfg, splits, device, result, trainable):
    recipe = finetune.make_recipe({k: v for k, v in run.recipe.items()})
    result.train_gflops_per_image = costs.train_step_flops(model, cfg, device) / 1e9
    out = finetune.finetune(model, splits["train"], splits["val"], cfg, recipe, device, run.seed)
    result.val_top1 = out["val_top1"]
    result.selection = out["selection"]
    result.train_seconds = out["train_seconds"]
    result.train_images_per_second = out["train_images"] / out["train_seconds"] if out["train_seconds"] else None
    result.train_pflops_total = result.train_gflops_per_image * out["train_images"] / 1e6
    logits, eval_seconds = finetune.predict(model, splits["test"], cfg, device, recipe.eval_batch_size, desc="test")
    state = model.state_dict()
    delta = {n: state[n] for n in sorted(trainable)}
    return logits, delta, eval_seconds


def _failed(store: Store, result: Result, reason: str, log) -> Result:
    result.status = "failed"
    result.error = reason
    result.finished = _now()
    store.put(result)
    log(f"transfer-eval: run failed: {reason}", file=sys.stderr)
    return result
