"""Visual Prompt Tuning (VPT, Jia et al. 2022): modes `vpt_shallow` and `vpt_deep` on a timm VisionTransformer.

What the paper's code does (KMnP/vpt@4410440, `src/models/vit_prompt/vit.py`, `PromptedTransformer`):
- the sequence entering the encoder becomes [CLS, p prompts, patches]: the prompts are inserted after the class
  token, after the embedding (position embedding and its dropout already applied), so they get no position
  embedding;
- shallow: one set of p learnable tokens (`prompt_embeddings`, 1 x p x D); deep: before each later layer the
  outputs at the prompt positions are replaced by that layer's own tokens (`deep_prompt_embeddings`, 11 x p x D
  on ViT-B), 12 sets in all, the first being the shallow set;
- initialisation uniform in +-sqrt(6 / (3 * P * P + D)) (P the patch size, D the width: 0.0625 on ViT-B/16);
- a dropout on the prompts (`PROMPT.DROPOUT`, before each insertion), 0.1 here as NOAH's VPT runs
  (`--drop_rate_prompt=0.1`) and the issue ask (VPT's config default is 0.0);
- the head reads the class token of the final norm's output: the prompts reach it only through attention.

Where this code follows it, or not:
- timm models carry prefix tokens other than the class token (DINOv2's registers, DeiT's distillation token):
  the prompts go after all `num_prefix_tokens` of them, so each prefix token keeps its position and the patches
  stay a contiguous run at the end, as timm's pooling expects;
- the prompts are removed from the sequence after the last block, before the final norm, so `forward_head` reads
  exactly what it reads without prompts: the class token, or for `global_pool='avg'` models the mean of the patch
  tokens (timm pools over `x[:, num_prefix_tokens:]`, which would otherwise include the prompts). With the class
  token this is VPT's arithmetic (the final LayerNorm is per token);
- the prompts are inserted after timm's `norm_pre` (an identity except in CLIP towers, whose `ln_pre` normalises
  the embeddings): they enter the first block as the learned vectors themselves, as in VPT, where nothing stands
  between the embedding and the encoder;
- VPT sets the frozen backbone to eval mode while the prompts train (no backbone dropout or drop path); the
  suite's training loop decides that for every mode alike: the model trains in train mode with the recipe's
  `drop_path` (0 in the `vit` preset, which is VPT's arithmetic, as a timm ViT has no other train-mode behaviour;
  0.1 in `deit` and `vtab`, NOAH's setting for its VPT rows: presets.VTAB_MODES);
- the prompts are drawn from a generator of their own, seeded from the run's seed, the mode and their name
  (`seeding`): seeds 0, 1 and 2 start from different prompts;
- no prompt projection (VPT's `PROJECT = -1` default) and prompts prepended, not appended after the patches as
  NOAH's re-implementation does.

Implementation: `model.blocks` (a timm `nn.Sequential` of `Block`s) becomes a `PromptedBlocks`, an `nn.Sequential`
of the same blocks under the same names (`blocks.0.attn.qkv.weight`, ...) plus the prompt parameter
`blocks.prompts` (sets x p x D). `forward_features`, `forward_head`, `get_classifier` and FLOP counting run
unchanged, so the model stays a timm model. timm's gradient-checkpointing path (`set_grad_checkpointing`) and its
`attn_mask` path iterate the blocks themselves and would skip the prompts: the suite uses neither, and prepare
refuses a model with gradient checkpointing on.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from transfer_eval.errors import UserError
from transfer_eval.methods import blocks as vit_blocks
from transfer_eval.methods import seeding
from transfer_eval.methods.fields import checked_fields

DROPOUT = 0.1  # the prompts' dropout (NOAH's --drop_rate_prompt for VPT on VTAB; VPT's DROPOUT field)


def init_bound(patch_size: tuple[int, int], width: int) -> float:
    """VPT's uniform initialisation bound: sqrt(6 / (3 * P_h * P_w + D)) ("xavier_uniform" over the patch embedding's
    fan-in 3·P·P and the width)."""
    return math.sqrt(6.0 / (3 * patch_size[0] * patch_size[1] + width))


class PromptedBlocks(nn.Sequential):
    """A VisionTransformer's blocks with VPT's prompts: inserted after the `prefix` tokens before the first block,
    replaced by each later block's own set when deep (one set per block), removed after the last block."""

    def __init__(self, blocks: nn.Sequential, prefix: int, deep: bool, prompts: torch.Tensor):
        super().__init__(*blocks)
        self.prefix, self.tokens, self.deep = prefix, prompts.shape[1], deep
        self.prompts = nn.Parameter(prompts)  # sets x tokens x width: one set, or one per block when deep

    def _set(self, i: int, batch: int) -> torch.Tensor:
        # functional: torch's module tracker (FlopCounterMode) cannot hook a module fed a parameter's view under
        # no_grad
        return F.dropout(self.prompts[i].unsqueeze(0).expand(batch, -1, -1), DROPOUT, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p = self.prefix, self.tokens
        x = torch.cat((x[:, :n], self._set(0, x.shape[0]).to(x.dtype), x[:, n:]), dim=1)
        for i, block in enumerate(self):
            if self.deep and i > 0:
                x = torch.cat((x[:, :n], self._set(i, x.shape[0]).to(x.dtype), x[:, n + p :]), dim=1)
            x = block(x)
        return torch.cat((x[:, :n], x[:, n + p :]), dim=1)


def _insert(model: nn.Module, recipe: dict, seed: int, deep: bool, mode: str) -> nn.Module:
    vit = vit_blocks.vision_transformer(model, mode)
    checked_fields({"prompt_tokens": recipe.get("prompt_tokens")})  # planned runs are checked; Python callers too
    tokens = recipe["prompt_tokens"]
    if isinstance(vit.blocks, PromptedBlocks):
        raise UserError(f"mode {mode}: this model already has VPT prompts")
    if getattr(vit, "grad_checkpointing", False):
        raise UserError(f"mode {mode}: gradient checkpointing would skip the prompts; turn it off")
    width, patch = vit.embed_dim, tuple(vit.patch_embed.patch_size)
    like = next(vit.blocks.parameters())  # the prompts live where, and in the precision, the backbone does
    shape = (len(vit.blocks) if deep else 1, tokens, width)
    prompts = seeding.drawn(shape, like, seeding.uniform(init_bound(patch, width)), seed, mode, "blocks.prompts")
    vit.blocks = PromptedBlocks(vit.blocks, vit.num_prefix_tokens, deep, prompts)
    return vit


def shallow(model: nn.Module, recipe: dict, seed: int = 0) -> nn.Module:
    """Mode vpt_shallow's prepare: one set of `prompt_tokens` prompts before the first block, drawn for `seed`."""
    return _insert(model, recipe, seed, deep=False, mode="vpt_shallow")


def deep(model: nn.Module, recipe: dict, seed: int = 0) -> nn.Module:
    """Mode vpt_deep's prepare: a set of `prompt_tokens` prompts before every block, drawn for `seed`."""
    return _insert(model, recipe, seed, deep=True, mode="vpt_deep")


def prompt_names(model: nn.Module) -> set[str]:
    """The prompt parameters of every PromptedBlocks in the model (the selector `prompts`)."""
    return {f"{name}.prompts" for name, m in model.named_modules() if isinstance(m, PromptedBlocks)}
