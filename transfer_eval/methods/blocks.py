"""The structure the parameter-efficient methods change: a timm VisionTransformer and its blocks.

VPT, the adapters, SSF and LoRA each insert their modules at a place of timm's `Block` (norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2) or around its sequence of tokens, so each refuses, in one line naming the mode and the
architecture, a model that is not a timm VisionTransformer made of such blocks (ViT, DeiT, DeiT III, AugReg,
DINOv2 with or without registers and CLIP image towers all are).
"""

from __future__ import annotations

import torch.nn as nn

from transfer_eval.errors import UserError


def vision_transformer(model: nn.Module, mode: str) -> nn.Module:
    """`model` itself where it is a timm VisionTransformer of timm Blocks; otherwise a UserError naming both."""
    from timm.models.vision_transformer import Block, VisionTransformer

    blocks = getattr(model, "blocks", None)
    if not isinstance(model, VisionTransformer) or blocks is None or not all(isinstance(b, Block) for b in blocks):
        kind = type(model).__name__
        inner = {type(b).__name__ for b in blocks} if blocks is not None else set()
        what = f"{kind} ({', '.join(sorted(inner))} blocks)" if inner and kind == "VisionTransformer" else kind
        raise UserError(
            f"mode {mode} adapts timm VisionTransformer models of timm Blocks (ViT, DeiT, DINOv2, CLIP image "
            f"towers); this checkpoint's architecture is {what}"
        )
    return model
