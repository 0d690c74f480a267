"""A result depends on its key alone (issue 41): every mode of the registry stores the same predictions and trained
tensors whatever ran before it in the process; a method's new tensors are drawn for the run's seed (seeds 0 and 1
start apart, the same seed starts at the same tensors whatever torch's generator holds); a resumed phase draws what
an uninterrupted one does; SSF on a mean-pooled ViT is SSF's own placement; the `vtab` preset's per-mode settings
are in the vtab1k-noah paper preset's choices."""

import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from transfer_eval import api, checkpoints, papers
from transfer_eval.methods import finetune, modes, presets, resume, ssf
from transfer_eval.methods.modes import MODES
from transfer_eval.methods.resume import RunCheckpoints
from transfer_eval.store.results import Store
from transfer_eval.tasks import LoadContext, discover

# The smallest settings that still train, per field (each mode takes the fields it has).
SMALL = {
    "steps": 2,
    "warmup_steps": 0,
    "lr_grid": [],
    "batch_size": 8,
    "drop_path": 0.1,  # drop path draws during training, as the vtab preset's runs do
    "prompt_tokens": 2,
    "c_grid": [1.0],
    "shots": [2],
    "k": [3],
}
# pretrained scores the checkpoint's own head (vit_demo_shapes has none for digits): nothing of it is drawn
RUNNABLE = [m.name for m in MODES.values() if m.stage != "eval"]


def _pass(order: list[str], folder: Path) -> dict:
    """Every mode of `order` run one after another in this process: mode -> (top-1, test top-5, delta tensors)."""
    results = api.evaluate(
        "vit_demo_shapes",
        "digits",
        order,
        seeds=[0],
        results=folder / "r.sqlite",
        data_dir=folder,
        device="cpu",
        settings=SMALL,
        limit=30,
        save_delta=folder / "deltas",
    )
    store = Store(folder / "r.sqlite")
    out = {}
    for r in results:
        assert r.status == "ok", (r.mode, r.error)
        (path,) = (folder / "deltas").glob(f"*__{r.mode}__*.safetensors")
        out[r.mode] = (r.top1, store.predictions(r.run_id)[1], load_file(str(path)))
    store.close()
    return out


def test_every_mode_stores_one_result_whatever_ran_before_it(tmp_path):
    """Each mode of MODES on the demo: in registry order (each after another mode), then in reverse order after
    other draws from torch's, numpy's and Python's generators, the same top-1, stored predictions and delta."""
    assert {"ssf", "lora", "vpt_deep", "adaptformer"} <= set(RUNNABLE)
    assert all(m.prepare is None for m in MODES.values() if m.stage == "eval")  # what is left out draws nothing
    forward = _pass(RUNNABLE, tmp_path / "forward")
    torch.rand(1001), np.random.rand(7), random.random()  # whatever ran before in the process
    backward = _pass(RUNNABLE[::-1], tmp_path / "backward")
    assert set(forward) == set(backward) == set(RUNNABLE)
    for mode in RUNNABLE:
        (top1_a, top5_a, delta_a), (top1_b, top5_b, delta_b) = forward[mode], backward[mode]
        assert top1_a == top1_b and np.array_equal(top5_a, top5_b), mode
        assert delta_a.keys() == delta_b.keys(), mode
        assert all(torch.equal(delta_a[k], delta_b[k]) for k in delta_a), mode


# ---------------------------------------------------------------------------------------- starting tensors


def _tiny(**kwargs):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    return timm.create_model("vit_small_patch16_224", pretrained=False, **{**args, **kwargs}).eval()


def _new_tensors(mode: str, seed: int) -> dict[str, torch.Tensor]:
    """The tensors mode's prepare adds to a tiny ViT for `seed`, after a different number of global draws."""
    backbone = set(_tiny().state_dict())
    torch.rand(seed * 13 + 5)  # torch's generator elsewhere each time: it must not matter
    model = modes.prepare(MODES[mode], _tiny(), {}, seed)
    return {n: p.detach().clone() for n, p in model.state_dict().items() if n not in backbone}


@pytest.mark.parametrize("mode", [m.name for m in MODES.values() if m.prepare is not None])
def test_seeds_start_apart_and_a_seed_starts_at_one_place(mode):
    """Seeds 0, 1 and 2 start every drawn tensor apart; seed 0 twice, after other draws, starts at the same one."""
    seed0, seed1, seed2, again = (_new_tensors(mode, s) for s in (0, 1, 2, 0))
    assert seed0 and seed0.keys() == seed1.keys() == seed2.keys() == again.keys()
    assert all(torch.equal(seed0[n], again[n]) for n in seed0)  # the same seed: the same start
    drawn = [n for n, t in seed0.items() if t.std() > 0]  # zero-initialised tensors (LoRA's B, AdaptFormer's up) aside
    assert drawn, mode
    for a, b in ((seed0, seed1), (seed0, seed2), (seed1, seed2)):
        assert all(not torch.equal(a[n], b[n]) for n in drawn), mode
    # each tensor its own generator: no two tensors of one run start as the same draw
    assert len({tuple(seed0[n].flatten()[:4].tolist()) for n in drawn}) == len(drawn)


def test_a_resumed_phase_with_dropout_is_the_uninterrupted_one(monkeypatch):
    """VPT's prompt dropout and drop path draw in every step: stopped after 2 of 4 steps and resumed (after other
    draws in the process), the trained prompts are the uninterrupted run's, bit for bit."""
    split = discover()["digits"].dataset("train", LoadContext(Path(tempfile.gettempdir()))).limited(24)
    ck = checkpoints.resolve("vit_demo_shapes", checkpoints.load_registry())
    recipe = finetune.make_recipe(
        {"optimizer": "adamw", "batch_size": 8, "steps": 4, "warmup_steps": 0, "augment": False, "drop_path": 0.1}
    )
    cpu, mode = torch.device("cpu"), MODES["vpt_shallow"]

    def trained(checkpoints_=None):
        model, cfg = checkpoints.build_model(ck, 10, model_kwargs={"drop_path_rate": 0.1})
        model = modes.prepare(mode, model, {"prompt_tokens": 2}, 0)
        modes.apply(mode, model)
        finetune.train(model, split, cfg, recipe, 1e-3, cpu, 0, checkpoints=checkpoints_)
        return model.blocks.prompts.detach().clone()

    expected = trained()
    folder = RunCheckpoints(Path(tempfile.mkdtemp()), every_steps=100)
    asked = iter([None, "SIGTERM"])  # stop at the end of step 2
    monkeypatch.setattr(resume, "requested", lambda: next(asked, None))
    with pytest.raises(resume.Preempted):
        trained(folder)
    monkeypatch.undo()
    torch.rand(3)
    assert torch.equal(trained(folder), expected)


# ------------------------------------------------------------------------------------------------------- SSF


def _ssf_reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SSF's `models/vision_transformer.py` written out on a timm ViT's weights and the prepared γ, β: every op
    followed by its affine, the final one on the tokens after `norm` (an identity when mean-pooled), then the mean
    over the patch tokens, `fc_norm`, the head."""

    def affine(module, t):
        return t * getattr(module, ssf.SCALE) + getattr(module, ssf.SHIFT)

    def ln(norm, t):
        return torch.nn.functional.layer_norm(t, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def linear(layer, t):
        return affine(layer, t @ layer.weight.T + layer.bias)

    pe = model.patch_embed
    t = torch.nn.functional.conv2d(x, pe.proj.weight, pe.proj.bias, stride=pe.proj.stride)
    t = affine(pe, t.flatten(2).transpose(1, 2))
    prefix = model.num_prefix_tokens
    if model.cls_token is not None:
        t = torch.cat([model.cls_token.expand(len(t), -1, -1), t], dim=1)
    t = t + model.pos_embed
    for b in model.blocks:
        h = affine(b.norm1, ln(b.norm1, t))
        n, tokens, d = h.shape
        heads = b.attn.num_heads
        qkv = linear(b.attn.qkv, h).reshape(n, tokens, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        weights = (qkv[0] @ qkv[1].transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
        t = t + linear(b.attn.proj, (weights @ qkv[2]).transpose(1, 2).reshape(n, tokens, d))
        h = affine(b.norm2, ln(b.norm2, t))
        t = t + linear(b.mlp.fc2, torch.nn.functional.gelu(linear(b.mlp.fc1, h)))
    t = affine(model.norm, t if isinstance(model.norm, torch.nn.Identity) else ln(model.norm, t))
    pooled = ln(model.fc_norm, t[:, prefix:].mean(dim=1))
    return pooled @ model.head.weight.T + model.head.bias


@pytest.mark.parametrize("class_token", [False, True])
def test_ssf_on_a_mean_pooled_vit_is_ssfs_placement(class_token):
    """γ and β far from their init (so a misplaced pair shows): the prepared model's logits, and the merged
    model's, are the reference's; the final pair sits before the pooling, not after fc_norm."""
    model = modes.prepare(MODES["ssf"], _tiny(global_pool="avg", fc_norm=True, class_token=class_token), {}, 0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith((ssf.SCALE, ssf.SHIFT)) or n.startswith("head."):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.5)
    assert hasattr(model.norm, ssf.SCALE) and not hasattr(model.fc_norm, ssf.SCALE)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = _ssf_reference(model, x)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(modes.merge(MODES["ssf"], model)(x), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ the vtab preset


def test_the_vtab_presets_per_mode_settings_are_in_the_paper_presets_choices():
    """Every fine-tuning mode has its sentence (drop path, the backbone's train or eval mode, whose setting) in the
    `vtab` preset, and each sentence is in vtab1k-noah's choices, word for word."""
    per_mode = presets.PRESETS["vtab"]["modes"]
    assert set(per_mode) == {m.name for m in MODES.values() if m.stage == "finetune"}
    choices = " ".join(yaml.safe_load(papers.discover()["vtab1k-noah"].read_text())["choices"])
    for mode, sentence in per_mode.items():
        assert "drop path" in sentence and "mode" in sentence, mode
        assert sentence in choices, mode
