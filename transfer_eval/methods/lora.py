"""LoRA (Hu et al., 2021) on a timm VisionTransformer, as the LoRA paper and the VTAB-1k papers built it.

Recipe fields (mode `lora`):
- `lora_targets`: `qv` (default: separate rank-r updates of the q and v slices of each block's fused qkv, as the LoRA
  paper, V-PETL Bench and FacT; 294,912 parameters on ViT-B/16 at rank 8), `qkv` (one pair on the fused qkv,
  added to q, k and v, as NOAH; the same 294,912), `attention` (a pair on every attention Linear, qkv and proj:
  442,368 at rank 8, what transfer-eval's lora did up to version 1);
- `lora_rank` (8), `lora_alpha` (8: the update is scaled by alpha / rank, so 1 at rank 8), `lora_dropout` (0.0;
  NOAH's 0.1 is set by the vtab1k-noah preset), the dropout on the adapter's input.

peft is the implementation where it can express the target (`qkv`, `attention`: whole Linear modules). It cannot
express `qv`: timm fuses q, k and v into one Linear of 3·D outputs, and peft's LoRA adapts a module's whole output,
so an update of only the q and v rows needs the small piece of ours below (`_add_qv`). Both merge: W += scale·B·A
(rows of q and v only, for `qv`), after which the model is the backbone's arithmetic again.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from transfer_eval.errors import UserError
from transfer_eval.methods import blocks, seeding
from transfer_eval.methods.fields import FIELDS, checked_fields

TARGETS = FIELDS["lora_targets"].choices  # qv, qkv, attention: declared with every recipe field
DEFAULTS = {"lora_rank": 8, "lora_alpha": 8.0, "lora_targets": "qv", "lora_dropout": 0.0}
NEEDS = {"qkv": "peft", "attention": "peft"}  # the optional library each target needs
VERSION_1 = {"lora_targets": "attention", "lora_dropout": 0.0}  # lora 1's setting, which its deltas do not record


def check(recipe: dict, width: int | None = None) -> None:
    """The recipe's LoRA fields as declared (methods/fields.py: a known target, a rank of 1 or more, alpha > 0,
    dropout in [0, 1)), then what a declaration cannot say, one line each: a rank above the width, where known; a
    target that needs peft where peft is not installed."""
    checked_fields({k: recipe.get(k) for k in DEFAULTS})
    target, rank = recipe.get("lora_targets"), recipe.get("lora_rank")
    if width is not None and rank > width:
        raise UserError(f"lora_rank {rank} is above the model's width {width}: a low-rank update needs rank <= width")
    if target in NEEDS:
        _peft()  # said where it is used: before anything runs, and only for the targets that need it


def _peft():
    try:
        import peft
    except ImportError:
        peft = None
    if peft is None:
        raise UserError("mode lora with lora_targets qkv or attention needs the peft library: pip install peft")
    return peft


def _qv_hook(module: nn.Linear, inputs, output: torch.Tensor) -> torch.Tensor:
    x = F.dropout(inputs[0], module.lora_dropout, module.training)
    d = module.in_features
    q = F.linear(F.linear(x, module.lora_q_A), module.lora_q_B) * module.lora_scale
    v = F.linear(F.linear(x, module.lora_v_A), module.lora_v_B) * module.lora_scale
    return torch.cat([output[..., :d] + q, output[..., d : 2 * d], output[..., 2 * d :] + v], dim=-1)


def _qkv_linears(model: nn.Module) -> list[str]:
    return [f"blocks.{i}.attn.qkv" for i, _ in enumerate(model.blocks)]


def _attention_linears(model: nn.Module) -> list[str]:
    return [f"blocks.{i}.attn.{p}" for i, _ in enumerate(model.blocks) for p in ("qkv", "proj")]


def width(model: nn.Module) -> int:
    return int(model.embed_dim)


def prepare(model: nn.Module, recipe: dict, seed: int = 0) -> nn.Module:
    """The recipe's adapters on the model, in place (B zero: step 0 is the backbone); every A drawn from a generator
    of its own, seeded from `seed` and its name (`seeding`), as peft and nn.Linear initialise it."""
    blocks.vision_transformer(model, "lora")
    recipe = {**DEFAULTS, **recipe}
    check(recipe, width(model))
    rank, target = int(recipe["lora_rank"]), recipe["lora_targets"]
    scale, dropout = float(recipe["lora_alpha"]) / rank, float(recipe["lora_dropout"])
    if target != "qv":
        peft = _peft()
        config = peft.LoraConfig(
            r=rank,
            lora_alpha=float(recipe["lora_alpha"]),
            lora_dropout=dropout,
            target_modules=_qkv_linears(model) if target == "qkv" else _attention_linears(model),
            bias="none",
        )
        with torch.random.fork_rng(devices=[]):  # peft draws A from torch's generator: drawn again below
            model = peft.inject_adapter_in_model(config, model)
        for name, p in model.named_parameters():
            if ".lora_A." in name:  # peft's default: A Kaiming uniform (a = sqrt(5)), B zeros
                seeding.fill_(p, seeding.linear_default, seed, "lora", name)
        return model
    for name in _qkv_linears(model):
        _add_qv(model.get_submodule(name), name, rank, scale, dropout, seed)
    return model


def _add_qv(qkv: nn.Linear, name: str, rank: int, scale: float, dropout: float, seed: int) -> None:
    """Rank-r updates of the q and v slices of a timm fused qkv Linear (D -> 3·D): out[:, :D] += s·B_q A_q x,
    out[:, 2D:] += s·B_v A_v x, k untouched. This is ours, not peft's, because peft's LoRA adapts a Linear's whole
    output (here q, k and v together) and timm has no separate q and v Linears to target. The adapters live on
    the qkv Linear itself (`lora_q_A`, `lora_q_B`, `lora_v_A`, `lora_v_B` beside its weight) and act through a
    forward hook, so the model's own parameter names do not change. A as nn.Linear and peft initialise it
    (Kaiming uniform, a = sqrt(5)), B zeros."""
    d = qkv.in_features
    if qkv.out_features != 3 * d:
        raise UserError(f"lora_targets qv needs a fused qkv of 3 x {d} outputs; {name} has {qkv.out_features}")
    w = qkv.weight
    for part in ("q", "v"):
        a = seeding.drawn((rank, d), w, seeding.linear_default, seed, "lora", f"{name}.lora_{part}_A")
        qkv.register_parameter(f"lora_{part}_A", nn.Parameter(a))
        qkv.register_parameter(f"lora_{part}_B", nn.Parameter(torch.zeros(d, rank, device=w.device, dtype=w.dtype)))
    qkv.lora_scale, qkv.lora_dropout = scale, dropout
    qkv.register_forward_hook(_qv_hook)


def merge(model: nn.Module) -> nn.Module:
    """Every adapter folded into the weight it adapts and removed (peft's LoRA layers unwrapped to their base
    Linear); in place, returns the model."""
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if hasattr(module, "lora_q_A"):
                d = module.in_features
                module.weight[:d] += module.lora_scale * (module.lora_q_B @ module.lora_q_A)
                module.weight[2 * d :] += module.lora_scale * (module.lora_v_B @ module.lora_v_A)
                for key in [k for k, fn in module._forward_hooks.items() if fn is _qv_hook]:
                    del module._forward_hooks[key]
                for p in ("lora_q_A", "lora_q_B", "lora_v_A", "lora_v_B"):
                    del module._parameters[p]
                del module.lora_scale, module.lora_dropout
            elif hasattr(module, "base_layer") and hasattr(module, "lora_A"):  # peft's LoraLayer
                module.merge()
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, module.get_base_layer())
    return model
