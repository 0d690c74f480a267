"""What runs not yet stored will need: their data (is it here?) and their compute (counted FLOPs, GPU-hours).

Compute is counted, not guessed: each run's model is built on PyTorch's meta device (no weights, no memory, no
arithmetic) and torch.utils.flop_counter counts one forward pass and one training step of the run's mode at the
run's resolution and head size, as `transfer-eval cost` does on a real model. A run's images come from its
recipe and its task's split sizes (from the data where it is here, else the task's official `sizes`):

- fine-tuning: each learning rate tried trains `steps x batch_size` images and scores val; the retraining (ViT
  recipe) trains as many again; test is scored once;
- linear probe: one forward pass over train, val and test (the solver's cost is small beside it);
- few-shot: one forward pass over `shots x classes` training images and test;
- pretrained: one forward pass over test;
- each companion test set a run scores with what it trained (methods/companions.py: every set whose data is here,
  of those --companions keeps): one forward pass over the set's test images (`companion_needs`).

GPU-hours divide those FLOPs by a throughput: measured where the store holds a GPU run of the same checkpoint,
mode and resolution (its training images per second times its counted FLOPs per image), else the stated one
(`--tflops`, sustained training TFLOP/s per GPU).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from transfer_eval.errors import UserError

DEFAULT_TFLOPS = 100.0  # stated, not measured: about a third of an A100's dense bf16 peak (312 TFLOP/s)


@dataclass
class Need:
    run: object  # runs.Run
    train_images: int | None  # images through a training step (fine-tuning) or 0
    eval_images: int | None  # images through a forward pass only
    train_gflops_per_image: float
    fwd_gflops_per_image: float
    pflops: float | None
    gpu_hours: float | None
    basis: str  # where the throughput came from


def split_sizes(task, ctx=None) -> dict[str, int] | None:
    """Images in train, val and test as runs read them: from the data where `ctx` finds it, else from the task's
    official `sizes` (val held out of train by the task's fraction); None where neither says."""
    if ctx is not None:
        try:
            return {s: len(task.dataset(s, ctx)) for s in task.splits}
        except UserError:
            pass
    sizes = dict(task.sizes or {})
    if "train" not in sizes and "test" not in sizes:
        return None
    if task.val_holdout and "train" in sizes:
        held = round(sizes["train"] * float(task.val_holdout["fraction"]))
        sizes = {**sizes, "train": sizes["train"] - held, "val": held}
    return sizes


class FlopCounts:
    """Counted GFLOPs per image (training step, forward) of a checkpoint in a mode at a resolution and head size.
    Each architecture is built once, on the meta device; the counts are affine in the head's size (a linear
    layer, its forward and its gradients), so they are counted at two head sizes and read off for any other."""

    def __init__(self):
        self._models: dict = {}
        self._counts: dict = {}

    def __call__(self, run, num_classes: int) -> tuple[float, float]:
        (t1, f1), (t2, f2) = (self._count(run, k) for k in (1000, 2000))
        scale = (num_classes - 1000) / 1000
        return t1 + (t2 - t1) * scale, f1 + (f2 - f1) * scale

    def _count(self, run, num_classes: int) -> tuple[float, float]:
        import torch

        from transfer_eval import checkpoints
        from transfer_eval.methods import costs, modes

        res = run.recipe.get("resolution")
        shape = tuple(sorted((k, str(run.recipe.get(k))) for k in run.mode.defaults)) if run.mode.prepare else ()
        key = (run.checkpoint.name, res, num_classes, run.mode.name, shape)  # the fields that shape the model
        if key in self._counts:
            return self._counts[key]
        base = (run.checkpoint.name, res)
        with torch.device("meta"):
            if base not in self._models:
                self._models[base] = checkpoints.build_model(run.checkpoint, 1000, res, load_weights=False)
            model, cfg = self._models[base]
            model = copy.deepcopy(model)
            model.reset_classifier(num_classes)
            model = modes.prepare(run.mode, model, run.recipe)
        modes.apply(run.mode, model)
        meta = torch.device("meta")
        fwd = costs.forward_flops(model, cfg, meta) / 1e9
        train = costs.train_step_flops(model, cfg, meta) / 1e9 if run.mode.stage == "finetune" else fwd
        self._counts[key] = (train, fwd)
        return train, fwd


def images(run, sizes: dict) -> tuple[int, int]:
    """(images through a training step, images through a forward pass only) of one run."""
    stage, recipe = run.mode.stage, run.recipe
    train, val, test = sizes.get("train", 0), sizes.get("val", 0), sizes.get("test", 0)
    if run.limit is not None:
        train, val, test = (min(n, run.limit) for n in (train, val, test))
    if stage == "finetune":
        lrs = len(recipe.get("lr_grid") or []) or 1
        steps = int(recipe["steps"]) * int(recipe["batch_size"])
        return steps * (lrs + (1 if recipe.get("retrain") else 0)), val * lrs + test
    if stage == "fewshot":
        return 0, int(recipe["shots"]) * run.task.num_classes + test
    if stage == "eval":
        return 0, test
    return 0, train + val + test  # a probe: features of every split


def measured_tflops(store, run) -> tuple[float, str] | None:
    """Sustained training TFLOP/s per GPU of the newest stored GPU run of the same checkpoint, mode and
    resolution, from its images per second and counted FLOPs per image."""
    if store is None:
        return None
    best = None
    for r in store.query(checkpoints=[run.checkpoint.name], modes=[run.mode.name]):
        if not r.train_images_per_second or not r.train_gflops_per_image or (r.device or "cpu") == "cpu":
            continue
        if r.resolution != (run.recipe.get("resolution") or r.resolution):
            continue
        if best is None or (r.run_id or 0) > (best.run_id or 0):
            best = r
    if best is None:
        return None
    per_gpu = best.train_images_per_second * best.train_gflops_per_image / 1e3 / max(best.world_size or 1, 1)
    return per_gpu, f"measured on {best.device} (run {best.run_id})"


def need(
    run, sizes: dict | None, flops: FlopCounts, tflops: float = DEFAULT_TFLOPS, store=None, scored_only: bool = False
) -> Need:
    """`scored_only`: the run is a companion of another (transfer_eval.methods.companions): only its test is scored."""
    train_g, fwd_g = flops(run, run.task.num_classes)
    if sizes is None:
        return Need(run, None, None, train_g, fwd_g, None, None, "split sizes unknown")
    n_train, n_eval = (0, sizes.get("test", 0)) if scored_only else images(run, sizes)
    pflops = (n_train * train_g + n_eval * fwd_g) / 1e6
    measured = measured_tflops(store, run) if run.mode.stage == "finetune" else None
    rate, basis = measured if measured else (tflops, f"stated {tflops:g} TFLOP/s per GPU")
    return Need(run, n_train, n_eval, train_g, fwd_g, pflops, pflops * 1e3 / rate / 3600, basis)


def companion_needs(run, ctx, flops: FlopCounts, found: dict, which="all", exclude=(), store=None) -> list[Need]:
    """What scoring `run`'s companion test sets adds: for each companion `which` keeps whose test split `ctx` finds
    (what the run will score), one forward pass over its test images, as a Need of its own run. A companion whose
    key is in `exclude` (counted elsewhere) or stored in `store` (the run skips it) is left out."""
    from transfer_eval.methods import companions

    out = []
    for c in companions.runs_for(run, found, which):
        if c.key in exclude or (store is not None and store.has(c.key)):
            continue
        try:
            n = len(c.task.dataset("test", ctx))
        except UserError:
            continue  # not here: the run does not score it
        out.append(need(c, {"test": min(n, c.limit) if c.limit is not None else n}, flops, scored_only=True))
    return out


def data_status(task, splits, ctx) -> tuple[bool, str]:
    """Whether `data check` finds the splits a run reads, and what it says where it does not."""
    try:
        counts = [f"{s} {len(task.dataset(s, ctx)):,}" for s in splits]
    except UserError as e:
        return False, str(e)
    return True, ", ".join(counts)
