"""Adaptation modes: which parameters train, and whether the mode probes frozen features or fine-tunes.

Attention-only follows the reference code of "Three things everyone should know about Vision Transformers"
(DeiT's `--attn-only`): every parameter of the attention layers (qkv and proj of each MHSA, plus any bias
or position table they own), the classifier head and the position embedding train; the patch embedding, class
token, norms, layer scales and MLPs stay frozen. Unlike the reference code, which matches the name '.attn.' and
so trains only the first branch of a parallel block (whose second attention is named 'attn1'), attention
modules are found by type, so every branch of a parallel block trains, as the paper describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from transfer_eval.errors import unknown_name


@dataclass(frozen=True)
class Mode:
    name: str
    kind: str  # "probe": a classifier on frozen pre-logits features; "finetune": gradient training
    description: str
    stores: str  # what one more task costs in storage when the backbone is shared


MODES = {
    "linear": Mode("linear", "probe",
                   "frozen backbone; multinomial logistic regression on pre-logits features, L2 strength chosen on val",
                   "the head"),
    "attention": Mode("attention", "finetune",
                      "fine-tune only the attention layers (qkv, proj), the position embedding and the head",
                      "MHSA + position embedding + head"),
    "full": Mode("full", "finetune", "fine-tune every parameter", "every parameter"),
}


def resolve(name: str) -> Mode:
    if name not in MODES:
        raise unknown_name("mode", name, MODES, hint="(see `transfer-eval list modes`)")
    return MODES[name]


def _is_attention(module: nn.Module) -> bool:
    cls = type(module).__name__
    return "Attention" in cls and "Pool" not in cls  # timm's Attention, EvaAttention, RelPosAttention, ...


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)) or \
        "Norm" in type(module).__name__


def head_names(model: nn.Module) -> set[str]:
    head = model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def attention_names(model: nn.Module) -> set[str]:
    """Parameters of every attention module, excluding norms inside them (q/k norm, sub-LN)."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        if not _is_attention(module):
            continue
        frozen = {id(p) for sub in module.modules() if _is_norm(sub) for p in sub.parameters()}
        for p_name, p in module.named_parameters():
            if id(p) not in frozen:
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def trainable_names(mode: Mode, model: nn.Module) -> set[str]:
    """Parameter names that train in `mode`; for a probe, the head that the classifier stands for."""
    all_names = {n for n, _ in model.named_parameters()}
    if mode.name == "full":
        return all_names
    if mode.name == "linear":
        return head_names(model)
    if mode.name == "attention":
        attn = attention_names(model)
        if not attn:
            raise ValueError(f"{type(model).__name__} has no attention modules; attention-only does not apply")
        pos = {n for n in all_names if n.split(".")[-1] == "pos_embed"}
        return attn | pos | head_names(model)
    raise ValueError(mode.name)


def apply(mode: Mode, model: nn.Module) -> set[str]:
    """Freeze everything outside the mode's trainable set; returns that set."""
    names = trainable_names(mode, model)
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return names

