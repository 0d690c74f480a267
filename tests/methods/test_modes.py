"""Which parameters each mode trains, checked by name and against independent arithmetic."""

import pytest
import timm
import torch

from transfer_eval.methods import modes


def _vit_attention_count(dim, depth, tokens, classes, branches=1):
    """MHSA (qkv + proj, with biases) of every block and branch, plus pos_embed and head."""
    mhsa = (dim * 3 * dim + 3 * dim) + (dim * dim + dim)
    return depth * branches * mhsa + tokens * dim + (dim * classes + classes)


@pytest.mark.parametrize(
    "arch, dim, depth, tokens, branches, total",
    [
        ("vit_small_patch16_224", 384, 12, 197, 1, 22_050_664),
        ("deit3_base_patch16_224", 768, 12, 196, 1, None),  # DeiT III: no position embedding for the class token
        ("vit_small_patch16_18x2_224", 384, 18, 197, 2, None),
    ],
)
def test_attention_set_by_name_and_count(arch, dim, depth, tokens, branches, total):
    model = timm.create_model(arch, pretrained=False, num_classes=1000)
    names = modes.trainable_names(modes.MODES["attention"], model)
    params = dict(model.named_parameters())
    assert sum(params[n].numel() for n in names) == _vit_attention_count(dim, depth, tokens, 1000, branches)
    if total is not None:
        assert sum(p.numel() for p in model.parameters()) == total

    expected = {"pos_embed", "head.weight", "head.bias"}
    for b in range(depth):
        prefixes = [f"blocks.{b}.attn."] if branches == 1 else [f"blocks.{b}.attns.{k}.attn." for k in range(branches)]
        for p in prefixes:
            expected |= {p + "qkv.weight", p + "qkv.bias", p + "proj.weight", p + "proj.bias"}
    assert names == expected
    frozen = set(params) - names
    assert "cls_token" in frozen and "patch_embed.proj.weight" in frozen and "norm.weight" in frozen
    assert not any(".mlp." in n for n in names)
    assert not any(".ls" in n or "gamma" in n or "norm" in n for n in names)


def test_parallel_blocks_train_every_branch():
    model = timm.create_model("vit_small_patch16_18x2_224", pretrained=False, num_classes=10)
    names = modes.trainable_names(modes.MODES["attention"], model)
    assert "blocks.0.attns.1.attn.qkv.weight" in names  # the branch DeiT's '.attn.' match would miss: 'attn1'
    assert "blocks.17.attns.1.attn.proj.bias" in names


def test_published_attention_only_counts():
    # DeiT's --attn-only set at 1000 classes, as pinned by the issue.
    for arch, count in [("vit_small_patch16_224", 7_556_968), ("vit_base_patch16_224", 29_268_712)]:
        model = timm.create_model(arch, pretrained=False, num_classes=1000)
        names = modes.trainable_names(modes.MODES["attention"], model)
        assert sum(p.numel() for n, p in model.named_parameters() if n in names) == count


def test_apply_sets_requires_grad_and_gradients_follow():
    model = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        num_classes=3,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
    )
    names = modes.apply(modes.MODES["attention"], model)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for n, p in model.named_parameters():
        assert p.requires_grad == (n in names)
        assert (p.grad is not None) == (n in names), n


def test_full_and_linear():
    model = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        num_classes=5,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
    )
    assert modes.trainable_names(modes.MODES["full"], model) == {n for n, _ in model.named_parameters()}
    assert modes.trainable_names(modes.MODES["linear"], model) == {"head.weight", "head.bias"}


def test_eva_attention_keeps_its_own_biases_and_skips_norms():
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=10)
    names = modes.trainable_names(modes.MODES["attention"], model)
    assert "blocks.0.attn.q_bias" in names and "blocks.0.attn.proj.weight" in names
    assert not any("norm" in n for n in names)
    assert not any(".mlp." in n for n in names)


def test_unknown_mode_suggests():
    from transfer_eval.errors import UserError

    with pytest.raises(UserError, match="did you mean 'attention'"):
        modes.resolve("atention")
