"""SSF, scaling and shifting features (Lian et al., 2022; dongzelian/SSF `models/vision_transformer.py`): y = γ ⊙ x + β
after norm1, attn.qkv, attn.proj, norm2, mlp.fc1 and mlp.fc2 of every block, after the patch embedding and after the
final norm; γ ~ N(1, 0.02), β ~ N(0, 0.02). Only γ, β and the head train: 205,824 parameters on ViT-B/16
(16,896 per block, 1,536 for each of the two outside).

γ and β live on the module they follow (`<module>.ssf_scale`, `<module>.ssf_shift`) and act through a forward hook,
so the model stays a timm model whose own weights keep their names: a delta is γ, β and the head, and loads onto
a model built from the shared checkpoint after `prepare`.

`merge` folds them into the weights they follow, in place, and removes the hooks, so a deployed SSF task is the
backbone's arithmetic: after a Linear (W, b), W' = diag(γ) W, b' = γ ⊙ b + β; after a LayerNorm, into its affine;
after the patch embedding, into its convolution (or its norm, where it has one). A module without a bias gets one
(β has to live somewhere).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from transfer_eval.errors import UserError
from transfer_eval.methods import blocks

SCALE, SHIFT = "ssf_scale", "ssf_shift"
BLOCK_OPS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
INIT_STD = 0.02


def _hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return output * getattr(module, SCALE) + getattr(module, SHIFT)  # tokens: the channels are the last dimension


def _width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return int(module.proj.out_channels)  # timm's PatchEmbed


def targets(model: nn.Module) -> list[str]:
    """Names of the modules SSF follows on a timm VisionTransformer: the patch embedding, six ops per block,
    the final norm (the `fc_norm` of a mean-pooled model, whose `norm` is an identity)."""
    names = ["patch_embed"]
    for i, _ in enumerate(model.blocks):
        names += [f"blocks.{i}.{op}" for op in BLOCK_OPS]
    final = "norm" if isinstance(getattr(model, "norm", None), nn.LayerNorm) else "fc_norm"
    if isinstance(getattr(model, final, None), nn.LayerNorm):
        names.append(final)
    return names


def prepare(model: nn.Module, recipe: dict) -> nn.Module:
    """γ and β after every op SSF names, initialised as SSF does; in place."""
    blocks.vision_transformer(model, "ssf")
    for name in targets(model):
        module = model.get_submodule(name)
        ref = next(module.parameters())
        width = _width(module)
        scale = torch.empty(width, device=ref.device, dtype=ref.dtype)
        shift = torch.empty(width, device=ref.device, dtype=ref.dtype)
        if ref.device.type != "meta":
            nn.init.normal_(scale, mean=1.0, std=INIT_STD)
            nn.init.normal_(shift, mean=0.0, std=INIT_STD)
        module.register_parameter(SCALE, nn.Parameter(scale))
        module.register_parameter(SHIFT, nn.Parameter(shift))
        module.register_forward_hook(_hook)
    return model


def _fold_affine(weight: torch.Tensor, bias: torch.Tensor | None, scale, shift, owner: nn.Module) -> None:
    """weight rows (the output dimension first) scaled by γ; bias γ ⊙ b + β (created where there was none)."""
    weight.mul_(scale.view(-1, *([1] * (weight.ndim - 1))))
    if bias is None:
        owner.bias = nn.Parameter(shift.clone(), requires_grad=weight.requires_grad)
    else:
        bias.mul_(scale).add_(shift)


def merge(model: nn.Module) -> nn.Module:
    """γ and β folded into the weights they follow, hooks and parameters removed; in place, returns the model."""
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if not hasattr(module, SCALE):
                continue
            scale, shift = getattr(module, SCALE).detach(), getattr(module, SHIFT).detach()
            owner = module
            if not isinstance(module, (nn.Linear, nn.LayerNorm)):  # the patch embedding: its norm, else its conv
                norm = getattr(module, "norm", None)
                owner = norm if isinstance(norm, nn.LayerNorm) else module.proj
            if isinstance(owner, nn.LayerNorm) and owner.weight is None:
                raise UserError(f"ssf cannot merge into {name}: a LayerNorm without an affine")
            _fold_affine(owner.weight, owner.bias, scale, shift, owner)
            for key in [k for k, fn in module._forward_hooks.items() if fn is _hook]:
                del module._forward_hooks[key]
            del module._parameters[SCALE], module._parameters[SHIFT]
    return model


def names(model: nn.Module) -> set[str]:
    """SSF's γ and β (the selector `ssf`)."""
    return {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in (SCALE, SHIFT)}
