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
    kind: str  # "probe": a classifier on frozen pre-logits features; "finetune": gradient training; "eval": none
    description: str
    stores: str  # what one more task costs in storage when the backbone is shared

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits a run in this mode reads."""
        return {"eval": ("test",), "fewshot": ("train", "test")}.get(self.kind, ("train", "val", "test"))


MODES = {
    "linear": Mode("linear", "probe",
                   "frozen backbone; multinomial logistic regression on pre-logits features, L2 strength chosen on val",
                   "the head"),
    "attention": Mode("attention", "finetune",
                      "fine-tune only the attention layers (qkv, proj), the position embedding and the head",
                      "MHSA + position embedding + head"),
    "fewshot": Mode("fewshot", "fewshot",
                    "frozen backbone; closed-form ridge regression on k examples per class (Scaling ViT, big_vision): "
                    "k in 1, 5, 10, 25, three sampling seeds", "the regression weights"),
    "full": Mode("full", "finetune", "fine-tune every parameter", "every parameter"),
    "ffn": Mode("ffn", "finetune", "fine-tune only the MLP (FFN) layers, the position embedding and the head "
                "(the control of 'Three things')", "MLPs + position embedding + head"),
    "bitfit": Mode("bitfit", "finetune", "fine-tune only the biases and the head (BitFit)", "biases + head"),
    "lora": Mode("lora", "finetune", "low-rank adapters (peft's LoRA) on every attention qkv and proj, and the head; "
                 "rank from the recipe (lora_rank)", "the adapters + head"),
    "pretrained": Mode("pretrained", "eval",
                       "no training: the checkpoint's own classifier as it is (an ImageNet-1k head on ImageNet-v2)",
                       "nothing"),
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


def _is_mlp(module: nn.Module) -> bool:
    cls = type(module).__name__
    return "Mlp" in cls or "GLU" in cls.upper()  # timm's Mlp, GluMlp, SwiGLU, SwiGLUPacked


def _module_params(model: nn.Module, select) -> set[str]:
    """Parameters of the modules `select` picks (outermost match), excluding norms inside them."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        if not select(module):
            continue
        frozen = {id(p) for sub in module.modules() if _is_norm(sub) for p in sub.parameters()}
        for p_name, p in module.named_parameters():
            if id(p) not in frozen:
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def mlp_names(model: nn.Module) -> set[str]:
    return _module_params(model, _is_mlp)


def attention_names(model: nn.Module) -> set[str]:
    """Parameters of every attention module, excluding norms inside them (q/k norm, sub-LN)."""
    return _module_params(model, _is_attention)


def trainable_names(mode: Mode, model: nn.Module) -> set[str]:
    """Parameter names that train in `mode`; for a probe, the head that the classifier stands for."""
    all_names = {n for n, _ in model.named_parameters()}
    if mode.name == "full":
        return all_names
    if mode.name in ("linear", "fewshot"):
        return head_names(model)
    if mode.name == "pretrained":
        return set()
    pos = {n for n in all_names if n.split(".")[-1] == "pos_embed"}
    if mode.name == "attention":
        attn = attention_names(model)
        if not attn:
            raise ValueError(f"{type(model).__name__} has no attention modules; attention-only does not apply")
        return attn | pos | head_names(model)
    if mode.name == "ffn":
        mlp = mlp_names(model)
        if not mlp:
            raise ValueError(f"{type(model).__name__} has no MLP modules; ffn does not apply")
        return mlp | pos | head_names(model)
    if mode.name == "bitfit":
        return {n for n in all_names if n.endswith("bias")} | head_names(model)
    if mode.name == "lora":
        lora = {n for n in all_names if ".lora_" in n}
        if not lora:
            raise ValueError("call modes.prepare first: the model has no LoRA adapters")
        return lora | head_names(model)
    raise ValueError(mode.name)


def attention_linears(model: nn.Module) -> list[str]:
    """Module names of the Linear layers inside attention modules (qkv, proj, or q/k/v projections)."""
    out = []
    for mod_name, module in model.named_modules():
        if _is_attention(module):
            out += [f"{mod_name}.{n}" for n, sub in module.named_modules() if isinstance(sub, nn.Linear)]
    return out


LORA_DEFAULTS = {"lora_rank": 8, "lora_alpha": 16.0}  # mode lora's recipe fields, unless a run sets them


def prepare(mode: Mode, model: nn.Module, recipe: dict | None = None) -> nn.Module:
    """Change the model's structure where the mode needs it: LoRA adapters are injected in place (peft), so the
    model stays a timm model (forward_head, get_classifier) and only gains lora_A / lora_B parameters."""
    if mode.name != "lora":
        return model
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        from transfer_eval.errors import UserError

        raise UserError("mode lora needs the peft library: pip install peft") from None
    recipe = {**LORA_DEFAULTS, **(recipe or {})}
    config = LoraConfig(r=int(recipe["lora_rank"]), lora_alpha=float(recipe["lora_alpha"]), lora_dropout=0.0,
                        target_modules=attention_linears(model), bias="none")
    return inject_adapter_in_model(config, model)


def apply(mode: Mode, model: nn.Module) -> set[str]:
    """Freeze everything outside the mode's trainable set; returns that set."""
    names = trainable_names(mode, model)
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return names

