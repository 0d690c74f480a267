"""SSF, scaling and shifting features (Lian et al., 2022; dongzelian/SSF `models/vision_transformer.py`): y = γ ⊙ x + β
after norm1, attn.qkv, attn.proj, norm2, mlp.fc1 and mlp.fc2 of every block, after the patch embedding and after the
final norm; γ ~ N(1, 0.02), β ~ N(0, 0.02), each drawn from a generator of its own seeded from the run's seed and
its name (`seeding`). Only γ, β and the head train: 205,824 parameters on ViT-B/16 (16,896 per block, 1,536 for
each of the two outside).

The final γ and β follow the model's `norm`, on every token, before the pooling, as SSF's `forward_features` places
them (`x = ssf_ada(self.norm(x), ...)`, then `forward_head` pools and applies `fc_norm`). On a class-token model
`norm` is the final LayerNorm. On a mean-pooled model (timm's `global_pool='avg'` with `fc_norm`) `norm` is an
identity: γ and β then scale the last block's output before the mean and `fc_norm`, not `fc_norm`'s output (which
is where version 1 of the mode put them: the logits differ).

γ and β live on the module they follow (`<module>.ssf_scale`, `<module>.ssf_shift`) and act through a forward hook,
so the model stays a timm model whose own weights keep their names: a delta is γ, β and the head, and loads onto
a model built from the shared checkpoint after `prepare`.

`merge` folds them into the weights they follow, in place, and removes the hooks, so a deployed SSF task is the
backbone's arithmetic: after a Linear (W, b), W' = diag(γ) W, b' = γ ⊙ b + β; after a LayerNorm, into its affine;
after the patch embedding, into its convolution (or its norm, where it has one). A module without a bias gets one
(β has to live somewhere). The final γ and β of a mean-pooled model follow no weights (the identity `norm`, after
the last block's residual sum; the `fc_norm` after the mean normalises what they scale): they stay as they are,
one multiply and add per token, which FLOP counting does not see.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from transfer_eval.errors import UserError
from transfer_eval.methods import blocks, seeding

SCALE, SHIFT = "ssf_scale", "ssf_shift"
BLOCK_OPS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
INIT_STD = 0.02


def _hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return output * getattr(module, SCALE) + getattr(module, SHIFT)  # tokens: the channels are the last dimension


def _width(module: nn.Module, model: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Identity):  # the final `norm` of a mean-pooled model: the tokens' width
        return int(model.embed_dim)
    return int(module.proj.out_channels)  # timm's PatchEmbed


def targets(model: nn.Module) -> list[str]:
    """Names of the modules SSF follows on a timm VisionTransformer: the patch embedding, six ops per block,
    the final `norm` (before the pooling: the final LayerNorm, or the identity of a mean-pooled model)."""
    names = ["patch_embed"]
    for i, _ in enumerate(model.blocks):
        names += [f"blocks.{i}.{op}" for op in BLOCK_OPS]
    if isinstance(getattr(model, "norm", None), (nn.LayerNorm, nn.Identity)):
        names.append("norm")
    return names


def prepare(model: nn.Module, recipe: dict, seed: int = 0) -> nn.Module:
    """γ and β after every op SSF names, initialised as SSF does, drawn for `seed`; in place."""
    blocks.vision_transformer(model, "ssf")
    ref = next(model.blocks.parameters())  # where, and in the precision, the backbone lives
    for name in targets(model):
        module = model.get_submodule(name)
        width = _width(module, model)
        scale = seeding.drawn(width, ref, seeding.normal(1.0, INIT_STD), seed, "ssf", f"{name}.{SCALE}")
        shift = seeding.drawn(width, ref, seeding.normal(0.0, INIT_STD), seed, "ssf", f"{name}.{SHIFT}")
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
    """γ and β folded into the weights they follow, hooks and parameters removed (except a mean-pooled model's
    final pair, which follows no weights); in place, returns the model."""
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if not hasattr(module, SCALE):
                continue
            if isinstance(module, nn.Identity):  # a mean-pooled model's final γ and β: no weights to fold into
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
