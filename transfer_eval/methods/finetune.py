"""The fine-tuning recipe and training loop, with the learning rate chosen on val (never test)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from transfer_eval import devices, distributed
from transfer_eval.errors import UserError
from transfer_eval.input import pipeline
from transfer_eval.methods import inference, resume, scoring
from transfer_eval.progress import bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning recipe. Defaults follow the ViT paper (Table 4, App. B.1.1): SGD momentum 0.9, batch 512,
    no weight decay, gradient clipping at norm 1, 500 warmup steps then cosine decay to zero."""

    preset: str = "vit"  # the named preset these fields started from (presets.PRESETS)
    preset_version: int = 1
    optimizer: str = "sgd"  # sgd (heavy-ball momentum) | adamw
    lr: float = 0.01
    lr_grid: tuple = ()  # when given, each is trained and the best on val is kept
    retrain: bool = False  # after choosing on val, train again on train+val with that choice (ViT protocol)
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 512
    micro_batch_size: int | None = None  # gradient accumulation: each step's batch in chunks of this size
    steps: int = 10000
    warmup_steps: int = 500
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    augment: bool = True  # random-resized crop + flip; False uses the eval transform for training
    hflip: float = 0.5
    crop_scale: tuple = (0.05, 1.0)  # big_vision's inception crop area range
    randaugment: str | None = None  # a timm RandAugment spec, e.g. rand-m9-mstd0.5-inc1
    random_erasing: float = 0.0
    mixup: float = 0.0  # mixup alpha (timm's Mixup); 0 is off
    cutmix: float = 0.0  # cutmix alpha; 0 is off
    drop_path: float = 0.0  # stochastic depth rate of the model during training
    lora_rank: int | None = None  # mode lora only
    lora_alpha: float | None = None
    eval_batch_size: int = 256
    resolution: int | None = None  # None: the checkpoint's own input size

    def lrs(self) -> list[float]:
        return [float(x) for x in (self.lr_grid or (self.lr,))]


def make_recipe(fields: dict) -> Recipe:
    """The Recipe of these fields. Their values are checked when runs are planned (methods/fields.py, through
    runner.resolve_recipe), where the message can name the field."""
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    try:
        return Recipe(**fields)
    except TypeError as e:
        raise UserError(f"recipe: {e}") from None


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


LOSS_EVERY = 20  # optimizer steps between reads of the loss: each read waits for the device to finish its queue


def _optimizer(model, recipe: Recipe, lr: float, device: torch.device):
    from timm.optim import create_optimizer_v2

    # timm groups parameters (no weight decay on biases, norms, position embeddings) and skips frozen ones.
    if recipe.optimizer == "sgd":
        return create_optimizer_v2(
            model, opt="momentum", lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=recipe.weight_decay, **kwargs)


def _schedule(optimizer, warmup: int, total: int):
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    """torch's, Python's and numpy's generators: timm's crops and mixup draw from Python's and numpy's."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def augmentation(recipe: Recipe) -> dict:
    return {k: getattr(recipe, k) for k in ("augment", "hflip", "crop_scale", "randaugment", "random_erasing")}


def train(
    model,
    split,
    data_config: dict,
    recipe: Recipe,
    lr: float,
    device: torch.device,
    seed: int,
    desc: str = "train",
    checkpoints=None,
    phase: str = "train",
    plan: pipeline.InputPlan | None = None,
    compile: bool = False,
    more_steps: int = 0,
) -> dict:
    """Train the parameters that require grad for `recipe.steps` optimizer steps. Returns timing figures and the
    training curve: the mean loss of every LOSS_EVERY steps and the learning rate then (`more_steps`: the steps of
    the phases still to come in this run, for the progress estimate).

    With `checkpoints` (resume.RunCheckpoints), the phase resumes from its last training checkpoint and writes
    new ones as it goes; a resumed phase sees the same batches and random draws as an uninterrupted one.
    `plan` says how images reach the model (pipeline.plan_input); `compile` runs the forward and backward through
    torch.compile."""
    seed_everything(seed)
    # The training loader used to draw its workers' base seed from torch's generator, the first draw after the
    # seeding; it has a generator of its own now (pipeline.batch_loader), so that a resumed phase draws what an
    # uninterrupted one does. This draw stands in for it: every later draw (dropout, drop path, random erasing)
    # stays where it was, and stored runs keep their results.
    torch.empty((), dtype=torch.int64).random_()
    micro = recipe.micro_batch_size or recipe.batch_size
    pipe = pipeline.pipeline(split, data_config, device, plan, train=augmentation(recipe))
    mix = None
    if recipe.mixup > 0 or recipe.cutmix > 0:  # timm's batch mixing, with label smoothing folded into the targets
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mix = Mixup(
            mixup_alpha=recipe.mixup,
            cutmix_alpha=recipe.cutmix,
            label_smoothing=recipe.label_smoothing,
            num_classes=model.num_classes,
        )
        soft_loss = SoftTargetCrossEntropy()
    model.to(device).train()
    opt = _optimizer(model, recipe, lr, device)
    sched = _schedule(opt, min(recipe.warmup_steps, recipe.steps), recipe.steps)
    params = [p for p in model.parameters() if p.requires_grad]
    start_step, images, before, backoffs = 0, 0, 0.0, 0
    curve = {"step": [], "loss": [], "lr": []}
    read: list[float] = []  # losses read before a training checkpoint since the curve's last point (its next one's)
    state = checkpoints.load(phase, model, opt, sched) if checkpoints is not None else None
    if state is not None:
        start_step, images, before = state["step"], state["extra"]["images"], state["extra"]["seconds"]
        micro, backoffs = state["extra"].get("micro", micro), state["extra"].get("backoffs", 0)
        curve, read = state["extra"].get("curve", curve), list(state["extra"].get("read", []))
        log.info("transfer-eval: resuming %s at step %d of %d", desc, start_step, recipe.steps)

    world, rank = distributed.world_size(), distributed.rank()
    if min(recipe.batch_size, len(split)) % world:
        raise UserError(f"batch_size {recipe.batch_size} does not split evenly over {world} processes")
    ddp = distributed.wrap(model, device)
    if compile:
        ddp = compiled(ddp)

    def batches_from(step):
        sampler = pipeline.EpochBatches(
            len(split), recipe.batch_size, seed, start_batch=step, micro_size=micro, rank=rank, world=world, draws=True
        )
        return sampler, pipe.batches(pipeline.batch_loader(pipe, sampler, device))

    sampler, batches = batches_from(start_step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    progress = bar(range(start_step, recipe.steps), desc, "step", more=more_steps)
    losses: list[tuple[int, torch.Tensor]] = []  # (step, loss still on the device) since the last read
    last = [start_step]  # the step after the last loss read

    def read_losses(point: bool = True):
        """Read the losses still on the device (a diverged step fails here); with `point`, the curve gains the
        point of every loss read since its last one (at its own schedule: every LOSS_EVERY steps, and the end)."""
        if losses:
            read.extend(check_losses(losses, lr))
            progress.set_postfix(loss=f"{read[-1]:.3f}")
            last[0] = losses[-1][0] + 1
            losses.clear()
        if point and read:
            curve["step"].append(last[0])
            curve["loss"].append(float(f"{sum(read) / len(read):.5g}"))
            curve["lr"].append(float(f"{sched.get_last_lr()[0]:.5g}"))
            read.clear()

    for step in progress:
        while True:
            try:
                total, seen = _accumulate(
                    ddp, batches, sampler, device, recipe, mix, soft_loss if mix is not None else None
                )
                break
            except Exception as e:  # torch.compile compiles at the first step: a machine that cannot, says so
                if compile and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise UserError(
                        f"--compile: torch.compile failed here ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:240]}); run without --compile"
                    ) from None
                if not isinstance(e, torch.OutOfMemoryError):
                    raise
                # Halve the micro-batch and redo this step: the effective batch, and so the update, stay the same.
                opt.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if micro == 1:
                    raise
                micro, backoffs = max(1, micro // 2), backoffs + 1
                log.warning(
                    "transfer-eval: out of memory; micro-batch now %d (effective batch %d kept)",
                    micro,
                    recipe.batch_size,
                )
                sampler, batches = batches_from(step)
        images += seen * world
        losses.append((step, total))
        _update(opt, sched, params, recipe)
        if (step + 1) % LOSS_EVERY == 0:  # counted from the phase's start, so a resumed phase keeps the schedule
            read_losses()
        stop = resume.requested() if checkpoints is not None else None
        if checkpoints is not None and (stop or (step + 1 < recipe.steps and checkpoints.due(step + 1))):
            read_losses(point=False)  # a training checkpoint is never written after a diverged step
            extra = {
                "images": images,
                "seconds": before + time.perf_counter() - start,
                "micro": micro,
                "backoffs": backoffs,
                "curve": curve,
                "read": list(read),
            }
            checkpoints.save(phase, step + 1, model, opt, sched, extra)
            if stop:
                raise resume.Preempted(
                    f"{stop} at step {step + 1} of {recipe.steps} ({desc}); its training checkpoint is written in "
                    f"{checkpoints.folder}: the same command resumes it"
                )
    read_losses()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = before + time.perf_counter() - start
    return {"seconds": seconds, "images": images, "micro_batch_size": micro, "oom_backoffs": backoffs, "curve": curve}


def check_losses(losses: list[tuple[int, torch.Tensor]], lr: float) -> float:
    """Read (step, loss on the device) pairs back in one transfer; a NaN or infinite loss fails the run, naming
    its step. Returns the losses."""
    values = torch.stack([v for _, v in losses]).tolist()
    for (step, _), v in zip(losses, values):
        if not math.isfinite(v):
            raise Diverged(
                f"loss became {v} at step {step} (lr {lr:g}; read at step {losses[-1][0]}, losses are "
                f"read every {LOSS_EVERY} steps)"
            )
    return values


def compiled(model):
    """torch.compile, with a clear line where this machine cannot compile (no C++ compiler, an old GPU)."""
    try:
        return torch.compile(model)
    except RuntimeError as e:
        raise UserError(f"--compile: torch.compile is not available here ({e}); run without --compile") from None


def _update(opt, sched, params, recipe: Recipe) -> None:
    if recipe.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()


def step_fn(model, recipe: Recipe, lr: float, device: torch.device, compile: bool = False):
    """The suite's training step on given tensors (for `transfer-eval bench`): the same optimiser, schedule,
    autocast, chunking, clipping and (with `compile`) torch.compile as `train`, without the data pipeline."""
    opt = _optimizer(model, recipe, lr, device)
    sched = _schedule(opt, min(recipe.warmup_steps, recipe.steps), recipe.steps)
    params = [p for p in model.parameters() if p.requires_grad]
    forward = compiled(model) if compile else model

    def step(x, y):
        micro = recipe.micro_batch_size or len(x)
        x, y = x.to(device), y.to(device)
        chunks = iter([(x[i : i + micro], y[i : i + micro]) for i in range(0, len(x), micro)])
        sizes = pipeline.EpochBatches(len(x), len(x), 0, micro_size=micro)  # one effective batch: only its sizes
        loss, _ = _accumulate(forward, chunks, sizes, device, recipe, None, None)
        _update(opt, sched, params, recipe)
        return loss

    return step


def _accumulate(model, batches, sampler, device, recipe: Recipe, mix, soft_loss) -> tuple[torch.Tensor, int]:
    """Forward and backward over one effective batch, chunk by chunk; each chunk's mean loss is weighted by its
    share of the batch, so the gradient is the batch mean whatever the chunking. Under DDP each process weights
    by world size too, as DDP averages the processes' gradients. Returns (loss, still on the device; images)."""
    n = min(sampler.batch_size, sampler.n)
    world = sampler.world
    total = torch.zeros((), device=device)
    for _ in range(sampler.chunks_per_batch()):
        x, y = next(batches)  # on the device already
        weight = x.shape[0] * world / n
        if mix is not None and x.shape[0] % 2 == 0:
            x, y_soft = mix(x, y)
            with devices.autocast(device):
                loss = soft_loss(model(x), y_soft) * weight
        else:
            with devices.autocast(device):
                loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing) * weight
        loss.backward()
        total += loss.detach().float()
    return total, n


def finetune(
    model,
    train_split,
    val_split,
    data_config: dict,
    recipe: Recipe,
    device: torch.device,
    seed: int,
    checkpoints=None,
    plan: pipeline.InputPlan | None = None,
    compile: bool = False,
    val_loader=None,
) -> dict:
    """Train one model per learning rate in the recipe, keep the best on val; with `retrain`, train again from the
    start on train+val with the chosen rate (the ViT protocol). Test is not touched here. `val_loader`: the
    (loader, pipe) val is scored through (the run's pipeline.EvalLoaders), else one made here.

    With `checkpoints`, learning rates already tried (recorded with their val accuracy) are not trained again,
    and an interrupted one resumes from its last training checkpoint.

    Each learning rate's model also fits a temperature on its val logits (scoring.val_pass); the run's is the
    chosen rate's, a model trained on train alone, also where it is then retrained on train+val."""
    initial = copy.deepcopy(model.state_dict())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    done = checkpoints.progress() if checkpoints is not None else {}
    tried = dict(done.get("tried", {}))
    temperatures = dict(done.get("temperatures", {}))  # lr -> T fitted on val (calibration)
    seconds, images = done.get("seconds", 0.0), done.get("images", 0)
    best = None  # (lr, val accuracy)
    best_tensors = None  # the best model's trainable tensors (without retraining, it is the final model)
    memory = []  # (micro-batch used, out-of-memory back-offs) of each training phase
    # made once (or the run's): its workers serve every learning rate's evaluation
    curves = dict(done.get("curves", {}))  # phase -> its curve (and val top-1 for a learning rate tried)
    phases = [f"{lr:g}" for lr in recipe.lrs() if f"{lr:g}" not in tried] + (["retrain"] if recipe.retrain else [])
    for lr in recipe.lrs():
        key = f"{lr:g}"
        if key not in tried:
            later = len(phases) - phases.index(key) - 1
            model.load_state_dict(initial)
            stats = train(
                model,
                train_split,
                data_config,
                recipe,
                lr,
                device,
                seed,
                desc=f"train lr={key}",
                checkpoints=checkpoints,
                phase=f"lr{key}",
                plan=plan,
                compile=compile,
                more_steps=later * recipe.steps,
            )
            seconds += stats["seconds"]
            images += stats["images"]
            memory.append((stats["micro_batch_size"], stats["oom_backoffs"]))
            val_loader = val_loader or inference.eval_loader(
                val_split, data_config, device, recipe.eval_batch_size, plan
            )
            val_top1, temperatures[key] = scoring.val_pass(
                model, val_split, data_config, device, recipe.eval_batch_size, loader=val_loader
            )
            tried[key] = round(float((val_top1[:, 0] == val_split.labels).mean()), 6)
            curves[f"lr {key}"] = {"base_lr": lr, "val_top1": tried[key], **stats["curve"]}
            if not recipe.retrain and (best is None or tried[key] > best[1]):
                params = dict(model.named_parameters())
                best_tensors = {n: params[n].detach().cpu().clone() for n in trainable}
                if checkpoints is not None:
                    checkpoints.save_tensors("best", best_tensors)
            if checkpoints is not None:
                checkpoints.record(
                    tried=tried, seconds=seconds, images=images, curves=curves, temperatures=temperatures
                )
        if best is None or tried[key] > best[1]:
            best = (lr, tried[key])
    lr, acc = best
    model.load_state_dict(initial)
    if recipe.retrain:
        from transfer_eval.tasks import ImageSplit

        stats = train(
            model,
            ImageSplit.concat(train_split, val_split),
            data_config,
            recipe,
            lr,
            device,
            seed,
            desc=f"retrain lr={lr:g} on train+val",
            checkpoints=checkpoints,
            phase="retrain",
            plan=plan,
            compile=compile,
        )
        curves["retrain"] = {"base_lr": lr, "val_top1": None, **stats["curve"]}
        seconds += stats["seconds"]
        images += stats["images"]
        memory.append((stats["micro_batch_size"], stats["oom_backoffs"]))
    else:
        if best_tensors is None and checkpoints is not None:
            best_tensors = checkpoints.load_tensors("best")  # chosen before an interruption
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in (best_tensors or {}).items():
                params[n].copy_(v)
    return {
        "val_top1": acc,
        "selection": {
            "searched": "lr" if len(tried) > 1 else "none (one lr)",
            "grid": tried,
            "chosen": {"lr": lr},
            "final_model": "retrained on train+val" if recipe.retrain else "trained on train",
        },
        "train_seconds": seconds,
        "train_images": images,
        "temperature": temperatures.get(f"{lr:g}"),  # None: tried before a resume that kept no temperature
        "micro_batch_size": min((m for m, _ in memory), default=recipe.micro_batch_size or recipe.batch_size),
        "oom_backoffs": sum(b for _, b in memory),
        # every LOSS_EVERY steps of each phase: the mean loss over those steps and the learning rate after them
        "curves": {"every": LOSS_EVERY, "phases": curves},
    }
