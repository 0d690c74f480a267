"""The fine-tuning recipe and training loop, with the learning rate chosen on val (never test)."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from transfer_eval import data
from transfer_eval.progress import bar
from transfer_eval.errors import UserError


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning recipe. Defaults follow the ViT paper (Table 4, App. B.1.1): SGD momentum 0.9, batch 512,
    no weight decay, gradient clipping at norm 1, 500 warmup steps then cosine decay to zero."""

    optimizer: str = "sgd"  # sgd (heavy-ball momentum) | adamw
    lr: float = 0.01
    lr_grid: tuple = ()  # when given, each is trained and the best on val is kept
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 512
    micro_batch_size: int | None = None  # gradient accumulation: batch_size / micro_batch_size steps per update
    steps: int = 10000
    warmup_steps: int = 500
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    augment: bool = True  # random-resized crop + flip; False uses the eval transform for training
    hflip: float = 0.5
    crop_scale: tuple = (0.05, 1.0)  # big_vision's inception crop area range
    eval_batch_size: int = 256
    resolution: int | None = None  # None: the checkpoint's own input size

    def lrs(self) -> list[float]:
        return [float(x) for x in (self.lr_grid or (self.lr,))]


def make_recipe(fields: dict) -> Recipe:
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    r = Recipe(**fields)
    if r.optimizer not in ("sgd", "adamw"):
        raise UserError(f"recipe optimizer {r.optimizer!r}: use sgd or adamw")
    if r.steps <= 0 or r.batch_size <= 0:
        raise UserError("recipe steps and batch_size must be positive")
    if r.micro_batch_size and r.batch_size % r.micro_batch_size:
        raise UserError(f"recipe batch_size {r.batch_size} is not a multiple of micro_batch_size "
                        f"{r.micro_batch_size}")
    return r


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


def _optimizer(model, recipe: Recipe, lr: float, device: torch.device):
    from timm.optim import create_optimizer_v2

    # timm groups parameters (no weight decay on biases, norms, position embeddings) and skips frozen ones.
    if recipe.optimizer == "sgd":
        return create_optimizer_v2(model, opt="momentum", lr=lr, momentum=recipe.momentum,
                                   weight_decay=recipe.weight_decay)
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=recipe.weight_decay, **kwargs)


def _schedule(optimizer, warmup: int, total: int):
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batches(dl):
    while True:
        yield from dl


def train(model, split, data_config: dict, recipe: Recipe, lr: float, device: torch.device, seed: int,
          desc: str = "train") -> dict:
    """Train the parameters that require grad for `recipe.steps` optimizer steps. Returns timing figures."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    micro = recipe.micro_batch_size or recipe.batch_size
    accum = recipe.batch_size // micro
    transform = data.train_transform(data_config, recipe.augment, recipe.hflip, recipe.crop_scale)
    dl = data.loader(split, transform, micro, device, shuffle=True, generator=gen, drop_last=len(split) >= micro)
    model.to(device).train()
    opt = _optimizer(model, recipe, lr, device)
    sched = _schedule(opt, min(recipe.warmup_steps, recipe.steps), recipe.steps)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = _batches(dl)
    images = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    progress = bar(range(recipe.steps), desc, "step")
    for step in progress:
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with data.autocast(device):
                loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing) / accum
            loss.backward()
            total += float(loss.detach())
            images += x.shape[0]
        if not math.isfinite(total):
            raise Diverged(f"loss became {total} at step {step} (lr {lr:g})")
        if recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if step % 10 == 0:
            progress.set_postfix(loss=f"{total:.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": images}


@torch.no_grad()
def predict(model, split, data_config: dict, device: torch.device, batch_size: int = 256,
            desc: str = "eval") -> tuple[np.ndarray, float]:
    """Logits (N x K float32) in the split's order, and the seconds it took."""
    model.to(device).eval()
    dl = data.loader(split, data.eval_transform(data_config), batch_size, device)
    out = []
    start = time.perf_counter()
    for x, _ in bar(dl, desc, "batch"):
        with data.autocast(device):
            out.append(model(x.to(device, non_blocking=True)).float().cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return torch.cat(out).numpy(), time.perf_counter() - start


def finetune(model, train_split, val_split, data_config: dict, recipe: Recipe, device: torch.device,
             seed: int) -> dict:
    """Train one model per learning rate in the recipe, keep the best on val. Test is not touched here."""
    initial = copy.deepcopy(model.state_dict()) if len(recipe.lrs()) > 1 else None
    tried, best = {}, None
    seconds = images = 0.0
    for lr in recipe.lrs():
        if initial is not None:
            model.load_state_dict(initial)
        stats = train(model, train_split, data_config, recipe, lr, device, seed, desc=f"train lr={lr:g}")
        seconds += stats["seconds"]
        images += stats["images"]
        val_logits, _ = predict(model, val_split, data_config, device, recipe.eval_batch_size, desc="val")
        acc = float((val_logits.argmax(1) == val_split.labels).mean())
        tried[f"{lr:g}"] = round(acc, 6)
        if best is None or acc > best[1]:
            best = (lr, acc, copy.deepcopy(model.state_dict()) if initial is not None else None)
    lr, acc, state = best
    if state is not None:
        model.load_state_dict(state)
    return {
        "val_top1": acc,
        "selection": {"searched": "lr" if len(tried) > 1 else "none (one lr)", "grid": tried,
                      "chosen": {"lr": lr}},
        "train_seconds": seconds,
        "train_images": images,
    }
