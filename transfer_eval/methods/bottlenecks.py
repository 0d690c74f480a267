"""Bottleneck adapters beside or after each block's MLP: modes `adapter` (as NOAH ran it) and `adaptformer`.

**Adapter**, as NOAH's VTAB baseline (ZhangYuanhan-AI/NOAH@e9c55f3, `model/supernet_vision_transformer_timm.py`
`Block.forward`, `model/module/adapter_super.py` `AdapterSuper`): serial, on the MLP branch's output before the
residual add, outside the branch's drop-path:

    x = x + adapter(drop_path(mlp(norm2(x))))        adapter(y) = y + up(dropout(QuickGELU(down(y))))

down D->h and up h->D Linear layers with biases (h = 8 on VTAB, `adapter_bottleneck`), QuickGELU (x * sigmoid(1.702
x)), dropout 0.1 after the activation (`--drop_rate_adapter`'s default, which NOAH's VTAB adapter script keeps),
both weights Xavier-uniform and both biases N(0, 1e-6): the adapter is *not* the identity at step 0 (V-PETL
Bench's copy zero-initialises the up projection; that is not followed). In a block with layer scale (DINOv2,
DeiT III), which NOAH's ViT has not, the adapter reads what the branch adds to the residual:
adapter(drop_path(ls2(mlp(norm2(x))))).

**AdaptFormer** (ShoufaChen/AdaptFormer@6967d67, `models/custom_modules.py` `Block.forward`, `models/adapter.py`
with `main_image.py`'s settings: `ffn_option="parallel"`, `ffn_adapter_layernorm_option="none"`,
`ffn_adapter_init_option="lora"`, `ffn_adapter_scalar="0.1"`, dropout 0.1): parallel to the MLP, fed the MLP
branch's input before norm2, added outside the branch's drop-path:

    x = x + drop_path(mlp(norm2(x))) + s * up(dropout(relu(down(x))))

down D->h initialised as torch initialises a Linear's weight (Kaiming uniform, a = sqrt(5)), up's weight and both
biases zero, so the model is the backbone at step 0; h (`adaptformer_bottleneck`) 8 as the VTAB tables run it
(AdaptFormer's own default is 64), s (`adaptformer_scale`) 0.1. With layer scale the MLP branch keeps its ls2; the
parallel branch has its own scale s.

Left out on purpose: AdaptFormer's `main_image.py` puts a BatchNorm1d(affine=False, eps=1e-6) before the head (a line
its comment calls a hack "for linear prob only", from MAE's linear probing, which AdaptFormer's scripts start from)
and draws the head from trunc_normal(0.01). The VTAB-1k AdaptFormer runs the tables report (V-PETL Bench's
`vision_transformer_adaptformer.py`) have no such norm; here the head is every mode's zero-initialised Linear, and a
BatchNorm's running statistics would be task state outside the trained tensors a delta keeps. On the demo
(`run -c vit_demo_shapes -t digits -m adaptformer`, the task's recipe, 2026-12-07, CPU) the norm lowered test top-1:
84.97% and 88.50% with it against 90.35% and 90.91% without (seeds 0 and 1; val 94.0% and 94.8% against 91.6%).

Every tensor of a bottleneck is drawn from a generator of its own, seeded from the run's seed, the mode and its name
(`seeding`; NOAH_INIT and ADAPTFORMER_INIT say how each starts): seeds 0, 1 and 2 start from different bottlenecks.

Implementation: each timm `Block` of the model becomes, in place, a subclass of `Block` (`AdapterBlock`,
`AdaptFormerBlock`) holding one more child, `adapter` or `adaptformer` (`blocks.3.adapter.down.weight`, ...);
every existing parameter keeps its name, and the model stays a timm VisionTransformer (forward_features,
forward_head, get_classifier, FLOP counting unchanged). The subclass's forward is timm's `Block.forward` with the
bottleneck added where the paper adds it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from transfer_eval.errors import UserError
from transfer_eval.methods import blocks as vit_blocks
from transfer_eval.methods import seeding
from transfer_eval.methods.fields import checked_fields

DROPOUT = 0.1  # both papers' dropout inside the bottleneck, after the activation


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation NOAH's adapter uses (CLIP's approximation of GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(nn.Module):
    """up(dropout(act(down(x)))) * scale: the bottleneck both methods share; the residual is the caller's."""

    def __init__(self, width: int, hidden: int, act: nn.Module, scale: float = 1.0):
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.act = act
        self.dropout = nn.Dropout(DROPOUT)
        self.up = nn.Linear(hidden, width)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.dropout(self.act(self.down(x))))
        return out * self.scale if self.scale != 1.0 else out


# How each bottleneck's parameters start, by name within the bottleneck (drawn by `seeding`, a generator per tensor)
NOAH_INIT = {  # AdapterSuper.init_weights
    "down.weight": seeding.xavier_uniform,
    "down.bias": seeding.normal(0.0, 1e-6),
    "up.weight": seeding.xavier_uniform,
    "up.bias": seeding.normal(0.0, 1e-6),
}
ADAPTFORMER_INIT = {  # init_option "lora"
    "down.weight": seeding.linear_default,
    "down.bias": seeding.zeros,
    "up.weight": seeding.zeros,
    "up.bias": seeding.zeros,
}


def noah_adapter(width: int, hidden: int) -> Bottleneck:
    return Bottleneck(width, hidden, QuickGELU())


def adaptformer_adapter(width: int, hidden: int, scale: float) -> Bottleneck:
    return Bottleneck(width, hidden, nn.ReLU(), scale)


class AdapterBlock(Block):
    """A timm Block with NOAH's serial adapter on its MLP branch (`self.adapter`)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        y = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x + y + self.adapter(y)


class AdaptFormerBlock(Block):
    """A timm Block with AdaptFormer's parallel scaled bottleneck beside its MLP (`self.adaptformer`)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))) + self.adaptformer(x)


def _insert(model: nn.Module, mode: str, seed: int, hidden, cls: type, attr: str, make, init: dict) -> nn.Module:
    vit = vit_blocks.vision_transformer(model, mode)
    checked_fields({f"{attr}_bottleneck": hidden})  # planned runs are checked; Python callers (cost, deltas) too
    if any(isinstance(b, (AdapterBlock, AdaptFormerBlock)) for b in vit.blocks):
        raise UserError(f"mode {mode}: this model already has bottleneck adapters ({type(vit.blocks[0]).__name__})")
    if any(type(b) is not Block for b in vit.blocks):
        kinds = ", ".join(sorted({type(b).__name__ for b in vit.blocks if type(b) is not Block}))
        raise UserError(f"mode {mode} adapts timm's own Block; this model's blocks are {kinds}")
    width = vit.embed_dim
    if hidden > width:  # a bottleneck no wider than the model: checked here, where the width is known
        raise UserError(
            f"mode {mode}: {attr}_bottleneck {hidden} is wider than the model (width {width}); use 1 to {width}"
        )
    for i, block in enumerate(vit.blocks):
        like = next(block.parameters())  # the bottleneck lives where, and in the precision, the block does
        with torch.device("meta"):  # built without drawing; every tensor is drawn below from its own generator
            module = make(width, hidden)
        module = module.to_empty(device=like.device).to(dtype=like.dtype)
        for name, p in module.named_parameters():
            seeding.fill_(p, init[name], seed, mode, f"blocks.{i}.{attr}.{name}")
        block.__class__ = cls  # the same Block, its forward with the bottleneck; parameters keep their names
        block.add_module(attr, module)
    return vit


def adapter(model: nn.Module, recipe: dict, seed: int = 0) -> nn.Module:
    """Mode adapter's prepare: NOAH's serial bottleneck (adapter_bottleneck) after every block's MLP, drawn for
    `seed`."""
    hidden = recipe["adapter_bottleneck"]
    return _insert(model, "adapter", seed, hidden, AdapterBlock, "adapter", noah_adapter, NOAH_INIT)


def adaptformer(model: nn.Module, recipe: dict, seed: int = 0) -> nn.Module:
    """Mode adaptformer's prepare: AdaptFormer's parallel bottleneck (adaptformer_bottleneck, scaled by
    adaptformer_scale) beside every block's MLP, drawn for `seed`."""
    scale = float(recipe["adaptformer_scale"])
    return _insert(
        model,
        "adaptformer",
        seed,
        recipe["adaptformer_bottleneck"],
        AdaptFormerBlock,
        "adaptformer",
        lambda width, hidden: adaptformer_adapter(width, hidden, scale),
        ADAPTFORMER_INIT,
    )


def names(model: nn.Module, cls: type, attr: str) -> set[str]:
    """The parameters of the bottlenecks the blocks of type `cls` hold under `attr` (the selectors)."""
    out = set()
    for block_name, block in model.named_modules():
        if isinstance(block, cls):
            out |= {f"{block_name}.{attr}.{n}" for n, _ in getattr(block, attr).named_parameters()}
    return out


def adapter_names(model: nn.Module) -> set[str]:
    return names(model, AdapterBlock, "adapter")


def adaptformer_names(model: nn.Module) -> set[str]:
    return names(model, AdaptFormerBlock, "adaptformer")
