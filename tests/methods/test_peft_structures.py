"""VPT-shallow, VPT-deep, NOAH's Adapter and AdaptFormer (modes vpt_shallow, vpt_deep, adapter, adaptformer): the
trainable counts of peft.md's formulas on real architectures (built on the meta device), each method's arithmetic
written out independently on tiny real ViTs, VPT's prompts kept from the head, and each mode through the CLI on
the demo task and the VTAB-1k miniature data, with its bad inputs refused in one line."""

import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import assert_one_line_error, cli, json_lines

from transfer_eval import checkpoints, tasks
from transfer_eval.methods import bottlenecks, inference, modes, prompts
from transfer_eval.methods.modes import MODES
from transfer_eval.store.results import Store
from transfer_eval.tasks import LoadContext

PEFT = ("vpt_shallow", "vpt_deep", "adapter", "adaptformer")

# ----------------------------------------------------------------------------------- counts (peft.md's formulas)


def _backbone_count(arch: str, mode: str, recipe: dict) -> int:
    """Trainable parameters outside the head, through the suite's own path (modes.prepare, modes.trainable_names)."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=100)
    model = modes.prepare(MODES[mode], model, recipe)
    names = modes.trainable_names(MODES[mode], model) - modes.head_names(model)
    return sum(p.numel() for n, p in model.named_parameters() if n in names)


@pytest.mark.parametrize(
    "mode, recipe, expected",
    [
        ("vpt_shallow", {"prompt_tokens": 1}, 768),
        ("vpt_shallow", {"prompt_tokens": 100}, 76_800),  # 768·p
        ("vpt_deep", {"prompt_tokens": 1}, 9_216),
        ("vpt_deep", {"prompt_tokens": 50}, 460_800),  # 9,216·p at 12 layers
        ("adapter", {"adapter_bottleneck": 8}, 156_768),
        ("adaptformer", {"adaptformer_bottleneck": 8}, 156_768),
        ("adaptformer", {"adaptformer_bottleneck": 64}, 1_189_632),
    ],
)
def test_vit_b16_counts_are_the_papers(mode, recipe, expected):
    assert _backbone_count("vit_base_patch16_224", mode, recipe) == expected


@pytest.mark.parametrize("mode", PEFT)
def test_the_defaults_are_the_vtab_settings(mode):
    expected = {"vpt_shallow": 768 * 10, "vpt_deep": 9_216 * 10, "adapter": 156_768, "adaptformer": 156_768}
    assert _backbone_count("vit_base_patch16_224", mode, {}) == expected[mode]


@pytest.mark.parametrize(
    "arch, width, depth", [("vit_small_patch16_224", 384, 12), ("vit_small_patch14_reg4_dinov2", 384, 12)]
)
@pytest.mark.parametrize("p, h", [(5, 8), (20, 16)])
def test_other_architectures_by_their_own_width_and_depth(arch, width, depth, p, h):
    bottleneck = depth * (2 * width * h + h + width)  # down D·h + h, up h·D + D, per block
    assert _backbone_count(arch, "vpt_shallow", {"prompt_tokens": p}) == width * p
    assert _backbone_count(arch, "vpt_deep", {"prompt_tokens": p}) == depth * width * p
    assert _backbone_count(arch, "adapter", {"adapter_bottleneck": h}) == bottleneck
    assert _backbone_count(arch, "adaptformer", {"adaptformer_bottleneck": h}) == bottleneck


# ------------------------------------------------------------------------------------------- tiny real ViTs


def _tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)
    return timm.create_model("vit_small_patch16_224", pretrained=False, **{**args, **kwargs}).eval()


def _images(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _prepared(mode, recipe=None, **kwargs):
    model = modes.prepare(MODES[mode], _tiny(**kwargs), recipe or {})
    return model.eval()


# --------------------------------------------------------------------------------------------------- VPT

VARIANTS = {  # (timm kwargs, what the head reads)
    "cls+registers": (dict(reg_tokens=2), "token"),
    "avg+cls+register": (dict(reg_tokens=1, global_pool="avg"), "avg"),
    "avg, no class token": (dict(class_token=False, global_pool="avg"), "avg"),
}


def _capture(module, store, key, pre=False):
    if pre:
        return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0].detach().clone()))
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, out.detach().clone()))


def _overwrite(positions):
    """A forward hook putting other values (random, large, not a constant a norm would remove) at `positions`."""

    def hook(module, args, out):
        out = out.clone()
        index = list(positions)
        out[:, index] = 10 * torch.randn(out.shape[0], len(index), out.shape[2])
        return out

    return hook


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("mode", ["vpt_shallow", "vpt_deep"])
def test_the_head_reads_exactly_what_it_reads_without_prompts(mode, variant):
    kwargs, pool = VARIANTS[variant]
    p = 4
    model = _prepared(mode, {"prompt_tokens": p}, **kwargs)
    n = model.num_prefix_tokens
    seen = {}
    hooks = [_capture(model.blocks[-1], seen, "last"), _capture(model.head, seen, "head_in", pre=True)]
    x = _images()
    with torch.no_grad():
        model(x)
    last = seen["last"]
    assert last.shape[1] == n + p + (32 // 8) ** 2  # [prefix, prompts, patches] through the blocks
    kept = model.norm(torch.cat((last[:, :n], last[:, n + p :]), dim=1))  # the prompts removed, then the final norm
    pooled = kept[:, 0] if pool == "token" else kept[:, n:].mean(dim=1)  # the class token, or the patches' mean
    assert torch.allclose(seen["head_in"], model.fc_norm(pooled), atol=1e-6)

    # The prompts' own outputs never reach the head: overwrite them after the last block and nothing changes ...
    baseline = seen["head_in"]
    fill = model.blocks[-1].register_forward_hook(_overwrite(range(n, n + p)))
    with torch.no_grad():
        model(x)
    fill.remove()
    assert torch.equal(seen["head_in"], baseline)
    # ... while a position the head reads does change it (the check can fail) ...
    read = 0 if pool == "token" else n + p  # the class token, or the first patch (the prompts still in the sequence)
    h = model.blocks[-1].register_forward_hook(_overwrite([read]))
    with torch.no_grad():
        model(x)
    h.remove()
    assert not torch.allclose(seen["head_in"], baseline, atol=1e-3)
    # ... and the prompts act through attention: other prompts, another head input.
    with torch.no_grad():
        model.blocks.prompts.add_(torch.randn(model.blocks.prompts.shape))  # not a constant: norm1 removes those
        model(x)
    assert not torch.allclose(seen["head_in"], baseline, atol=1e-4)
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("mode", ["vpt_shallow", "vpt_deep"])
def test_prompts_sit_after_the_prefix_tokens_and_deep_replaces_them_before_every_block(mode):
    p = 3
    plain = _tiny(reg_tokens=2)
    model = _prepared(mode, {"prompt_tokens": p}, reg_tokens=2)
    n = model.num_prefix_tokens
    assert n == 3
    seen, before = {}, {}
    hooks = [_capture(b, seen, i, pre=True) for i, b in enumerate(model.blocks)]
    hooks.append(_capture(plain.blocks[0], before, 0, pre=True))
    x = _images()
    with torch.no_grad():
        model(x)
        plain(x)
    first = seen[0]  # the embedding as the unprompted model builds it, with the prompts after its prefix tokens
    assert torch.equal(first[:, :n], before[0][:, :n]) and torch.equal(first[:, n + p :], before[0][:, n:])
    prompts_param = model.blocks.prompts
    assert prompts_param.shape == ((len(model.blocks) if mode == "vpt_deep" else 1), p, 32)
    assert torch.equal(first[:, n : n + p], prompts_param[0].expand(len(x), -1, -1))  # no position embedding
    for i in range(1, len(model.blocks)):
        at_prompts = seen[i][:, n : n + p]
        if mode == "vpt_deep":  # that block's own prompts, not what the block before made of the previous ones
            assert torch.equal(at_prompts, prompts_param[i].expand(len(x), -1, -1))
        else:  # shallow: the previous block's outputs at the prompt positions go on
            assert not torch.allclose(at_prompts, prompts_param[0].expand(len(x), -1, -1), atol=1e-3)
    for h in hooks:
        h.remove()


def test_vpt_initialisation_and_dropout():
    assert prompts.init_bound((16, 16), 768) == pytest.approx(0.0625)  # sqrt(6 / (3·16·16 + 768))
    model = _prepared("vpt_deep", {"prompt_tokens": 50})
    bound = prompts.init_bound((8, 8), 32)
    values = model.blocks.prompts.detach()
    assert values.abs().max() <= bound and values.abs().max() > 0.95 * bound  # uniform in ±bound
    assert abs(values.mean().item()) < 0.1 * bound
    again = _prepared("vpt_deep", {"prompt_tokens": 50}, seed=5)  # another global seed: the same prompts
    assert torch.equal(again.blocks.prompts, model.blocks.prompts)
    model.train()
    x = _images()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # the prompts' dropout, active in training only
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


# ------------------------------------------------------------------------------------------- bottlenecks


def _quick_gelu(t):
    return t * torch.sigmoid(1.702 * t)


@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_adapter_is_noahs_serial_bottleneck(layer_scale):
    model = _prepared("adapter", {"adapter_bottleneck": 4}, init_values=layer_scale)
    block = model.blocks[1]
    assert isinstance(block, bottlenecks.AdapterBlock) and isinstance(block, timm.models.vision_transformer.Block)
    ad = block.adapter
    x = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = x + block.ls1(block.attn(block.norm1(x)))
        y = block.ls2(block.mlp(block.norm2(a)))
        down = _quick_gelu(y @ ad.down.weight.T + ad.down.bias)
        expected = a + y + (down @ ad.up.weight.T + ad.up.bias)  # x + adapter(mlp branch), adapter(y) = y + up(...)
        assert torch.allclose(block(x), expected, atol=1e-6)
    for linear in (ad.down, ad.up):  # Xavier-uniform weights, biases N(0, 1e-6): not the identity at step 0
        fan_in, fan_out = linear.in_features, linear.out_features
        assert linear.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5
        assert linear.weight.abs().max() > 0.5 * (6 / (fan_in + fan_out)) ** 0.5
        assert 0 < linear.bias.abs().max() < 1e-4
    with torch.no_grad():
        assert not torch.allclose(model(_images()), _tiny(init_values=layer_scale)(_images()), atol=1e-4)


@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_adaptformer_is_the_parallel_scaled_bottleneck_and_the_backbone_at_step_0(layer_scale):
    backbone = _tiny(init_values=layer_scale)
    model = _prepared("adaptformer", {"adaptformer_bottleneck": 4, "adaptformer_scale": 0.25}, init_values=layer_scale)
    x = _images()
    with torch.no_grad():
        assert torch.allclose(model(x), backbone(x), atol=1e-6, rtol=0)  # zero up projection: step 0 is the backbone
        assert torch.allclose(model.forward_features(x), backbone.forward_features(x), atol=1e-6, rtol=0)
    block = model.blocks[2]
    af = block.adaptformer
    assert torch.count_nonzero(af.up.weight) == 0 and torch.count_nonzero(af.up.bias) == 0
    assert torch.count_nonzero(af.down.bias) == 0 and af.down.weight.abs().max() <= (1 / 32) ** 0.5  # kaiming a=√5
    with torch.no_grad():
        torch.nn.init.normal_(af.up.weight)
        torch.nn.init.normal_(af.up.bias)
        h = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(3))
        a = h + block.ls1(block.attn(block.norm1(h)))
        side = torch.relu(a @ af.down.weight.T + af.down.bias) @ af.up.weight.T + af.up.bias  # fed a, before norm2
        expected = a + block.ls2(block.mlp(block.norm2(a))) + 0.25 * side
        assert torch.allclose(block(h), expected, atol=1e-5)


def test_every_mode_keeps_the_model_a_timm_model_with_its_parameter_names():
    plain = set(dict(_tiny().named_parameters()))
    for mode in PEFT:
        model = _prepared(mode)
        names = set(dict(model.named_parameters()))
        assert plain < names  # every backbone parameter keeps its name; the method's are added
        new = names - plain
        assert new == modes.trainable_names(MODES[mode], model) - modes.head_names(model)
        assert model.get_classifier() is model.head
        with torch.no_grad():
            assert model.forward_head(model.forward_features(_images()), pre_logits=True).shape == (3, 32)


# ------------------------------------------------------------------------------------------------- the CLI

FAST = ("--set", "steps=2", "--set", "warmup_steps=0", "--set", "lr_grid=[]", "--set", "batch_size=16")


def test_each_mode_runs_end_to_end_on_the_demo_task_stored_and_in_the_leaderboard(tmp_path):
    db, deltas = tmp_path / "r.sqlite", tmp_path / "deltas"
    proc = cli(
        "run", "-c", "vit_demo_shapes", "-t", "digits", "-m", ",".join(PEFT), *FAST, "--set", "prompt_tokens=3",
        "--save-delta", deltas, "--results", db, "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["mode"]: r for r in json_lines(proc.stdout)}
    assert set(rows) == set(PEFT) and all(r["status"] == "ok" for r in rows.values())
    width, depth, head = 128, 4, 128 * 10 + 10  # vit_demo_shapes: D 128, 4 blocks; digits: 10 classes
    expected = {
        "vpt_shallow": width * 3,
        "vpt_deep": depth * width * 3,
        "adapter": depth * (2 * width * 8 + 8 + width),
        "adaptformer": depth * (2 * width * 8 + 8 + width),
    }
    for mode, r in rows.items():
        assert r["params_trainable"] == expected[mode] + head, mode
        assert r["recipe"].get("prompt_tokens") == (3 if mode.startswith("vpt") else None)
        assert r["top1"] > 0.15, (mode, r["top1"])  # chance is 0.1
        assert r["bytes_per_task"] and r["fwd_gflops_per_image"] > 0
    # the prompts cost compute at inference: 3 more tokens through every block; the bottlenecks a little
    assert rows["vpt_shallow"]["fwd_gflops_per_image"] > rows["adapter"]["fwd_gflops_per_image"]
    board = cli("leaderboard", "--results", db, "--format", "json")
    assert board.returncode == 0, board.stderr
    assert {r["mode"] for r in json_lines(board.stdout)} == set(PEFT)
    # a delta rebuilds the structure it was trained with (prompt_tokens=3, not the default) on the shared checkpoint,
    # and gives the stored test predictions exactly
    ck = checkpoints.resolve("vit_demo_shapes", checkpoints.load_registry())
    test = tasks.discover()["digits"].dataset("test", LoadContext(tmp_path))
    for mode in PEFT:
        (path,) = deltas.glob(f"*__{mode}__*.safetensors")
        model, cfg = checkpoints.build_model(ck, 10)
        checkpoints.apply_delta(model, path)
        names = modes.trainable_names(MODES[mode], model)
        assert sum(p.numel() for n, p in model.named_parameters() if n in names) == expected[mode] + head
        model.eval()
        logits = torch.cat(list(inference.outputs(model, test, cfg, torch.device("cpu"), batch_size=256))).numpy()
        labels, top5 = Store(db).predictions(rows[mode]["run_id"])
        assert np.array_equal(labels, test.labels)
        assert np.array_equal(np.argsort(-logits, axis=1, kind="stable")[:, :5], top5), mode


def test_each_mode_runs_on_the_vtab_miniature(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tasks"))
    from test_vtab import make_vtab

    data = make_vtab(tmp_path / "data", folders=["dtd"])
    db = tmp_path / "r.sqlite"
    proc = cli(
        "run", "-c", "vit_demo", "-t", "vtab1k_dtd", "-m", ",".join(PEFT), "--data-dir", data, "--skip-verify",
        "--set", "steps=1", "--set", "warmup_steps=0", "--set", "lr_grid=[]", "--set", "batch_size=4",
        "--results", db, "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json_lines(proc.stdout)
    assert sorted(r["mode"] for r in rows) == sorted(PEFT) and all(r["status"] == "ok" for r in rows)
    assert {r["recipe"]["preset"] for r in rows} == {"vtab"} and all(r["n_test"] == 3 for r in rows)
    board = cli("leaderboard", "--results", db, "--format", "json")
    assert {r["mode"] for r in json_lines(board.stdout)} == set(PEFT)


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]


@pytest.mark.parametrize(
    "checkpoint, mode, sets, fragments",
    [
        ("vit_demo", "vpt_shallow", ["prompt_tokens=0"], ["prompt_tokens", "got 0"]),
        ("vit_demo", "vpt_deep", ["prompt_tokens=-2"], ["prompt_tokens", "got -2"]),
        ("vit_demo", "vpt_deep", ["prompt_tokens=2.5"], ["prompt_tokens", "2.5"]),
        ("vit_demo", "adapter", ["adapter_bottleneck=0"], ["adapter_bottleneck", "got 0"]),
        ("vit_demo", "adaptformer", ["adaptformer_bottleneck=0"], ["adaptformer_bottleneck", "got 0"]),
        ("vit_demo", "adaptformer", ["adaptformer_bottleneck=129"], ["adaptformer", "129", "width 128"]),
        ("vit_demo", "adapter", ["adapter_bottleneck=1000"], ["adapter", "1000", "width 128"]),
        ("vit_demo", "adaptformer", ["adaptformer_scale=abc"], ["adaptformer_scale", "abc"]),
        ("vit_demo", "full", ["prompt_tokens=4"], ["prompt_tokens"]),  # a field of another mode
        ("eva02_t14_mim_in21k", "vpt_deep", [], ["vpt_deep", "Eva"]),  # not a timm VisionTransformer
        ("eva02_t14_mim_in21k", "adaptformer", [], ["adaptformer", "Eva"]),
    ],
)
def test_bad_fields_and_other_architectures_are_one_line_and_nothing_runs(tmp_path, checkpoint, mode, sets, fragments):
    db = tmp_path / "r.sqlite"
    args = [a for s in sets for a in ("--set", s)]
    proc = cli("run", "-c", checkpoint, "-t", "digits", "-m", f"linear,{mode}", *args, "--results", db)
    assert_one_line_error(proc, *fragments)
    assert _stored(db) == 0  # refused before the first run (the linear probe before it included)


@pytest.mark.parametrize(
    "mode, recipe, fragment",
    [
        ("vpt_deep", {"prompt_tokens": 0}, "prompt_tokens"),
        ("adapter", {"adapter_bottleneck": 33}, "width 32"),  # the tiny ViT is 32 wide
        ("adaptformer", {"adaptformer_bottleneck": -1}, "adaptformer_bottleneck"),
    ],
)
def test_prepare_itself_refuses_what_does_not_fit(mode, recipe, fragment):
    from transfer_eval.errors import UserError

    with pytest.raises(UserError, match=fragment):
        modes.prepare(MODES[mode], _tiny(), recipe)
    with torch.device("meta"):
        eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False)
    with pytest.raises(UserError, match=f"mode {mode} .* architecture is Eva"):
        modes.prepare(MODES[mode], eva, {})
    with pytest.raises(UserError, match="already"):
        modes.prepare(MODES[mode], modes.prepare(MODES[mode], _tiny(), {}), {})


def test_the_new_fields_stay_out_of_other_modes_recipes():
    """Other fine-tuning modes' recipes, and so their stored protocol hashes, are what they were before these modes
    (tests/store/test_store_before_wings.py runs bitfit from a store written then)."""
    from transfer_eval.run import runner

    digits = tasks.discover()["digits"]
    new = ("prompt_tokens", "adapter_bottleneck", "adaptformer_bottleneck", "adaptformer_scale")
    for name in ("full", "bitfit", "lora", "attention"):
        assert not set(runner.resolve_recipe(digits, MODES[name])) & set(new), name
    assert runner.resolve_recipe(digits, MODES["vpt_deep"])["prompt_tokens"] == 10
    adaptformer = runner.resolve_recipe(digits, MODES["adaptformer"], {"adaptformer_scale": 1.0})
    assert (adaptformer["adaptformer_bottleneck"], adaptformer["adaptformer_scale"]) == (8, 1.0)
    assert "prompt_tokens" not in adaptformer and "adapter_bottleneck" not in adaptformer
