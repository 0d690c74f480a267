"""The checkpoint registry, name resolution, weights loading (every local format), digests and CLI input errors.

Everything runs offline on tiny ViTs (32 px, patch 4, width 64, depth 2): no test downloads weights.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import textwrap
from pathlib import Path

import conftest
import numpy as np
import pytest
import timm
import torch
import yaml

from transfer_eval import checkpoints
from transfer_eval.checkpoints import build_model, load_registry, resolve, weights_digest
from transfer_eval.errors import UserError

ARCH = "vit_small_patch16_224"
TINY = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}
D = TINY["embed_dim"]
HEAD_KEYS = {"head.weight", "head.bias"}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No registry from the caller's environment, and a cache that is not the user's."""
    monkeypatch.delenv("TRANSFER_EVAL_REGISTRY", raising=False)
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _entry(name: str, weights: str, model_args: dict = TINY, extra: str = "") -> str:
    args = ", ".join(f"{k}: {v}" for k, v in model_args.items())
    return (
        f"{name}:\n  model: {ARCH}\n  weights: {weights}\n  pretraining: test weights\n"
        f"  model_args: {{{args}}}\n{extra}"
    )


@pytest.fixture(scope="module")
def model_a():
    """The reference model A: tiny ViT, seed 1, 10 classes, every tensor made non-trivial."""
    torch.manual_seed(1)
    m = timm.create_model(ARCH, pretrained=False, num_classes=10, **TINY)
    with torch.no_grad():  # timm inits biases to 0, LayerNorm to 1, pos_embed small: perturb so loads are visible
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def sd_a(model_a):
    return {k: v.detach().clone() for k, v in model_a.state_dict().items()}


def _assert_loaded(model, sd_a, num_classes=5):
    sd = model.state_dict()
    assert set(sd) == set(sd_a)
    for k, v in sd.items():
        if k in HEAD_KEYS:
            continue
        assert v.shape == sd_a[k].shape, k
        assert torch.equal(v, sd_a[k]), f"{k} differs from the saved weights"
    assert sd["head.weight"].shape == (num_classes, D)
    assert sd["head.bias"].shape == (num_classes,)
    assert not sd["head.weight"].any() and not sd["head.bias"].any(), "head must be zero-initialised"


# ----------------------------------------------------------------------------------------------------------
# 1. The built-in registry


def test_builtin_registry_loads_with_demo_and_families():
    reg = load_registry()
    assert "vit_demo" in reg
    demo = reg["vit_demo"]
    assert demo.weights == "none" and demo.weights_kind == "none"
    assert demo.offline is True
    assert demo.source == checkpoints.BUILTIN
    for family in ("deit3", "dinov2", "clip", "mae", "eva02", "augreg"):
        assert any(family in name for name in reg), f"no built-in entry for {family}"
    timm_entries = [ck for ck in reg.values() if ck.weights_kind == "timm"]
    assert timm_entries and all(not ck.offline for ck in timm_entries)


def test_builtin_models_are_real_timm_names():
    pretrained = set(timm.list_pretrained())
    bad = []
    for ck in load_registry().values():
        if not timm.is_model(ck.architecture):
            bad.append(f"{ck.name}: {ck.architecture} is not a timm architecture")
        if ck.weights_kind == "timm" and ck.model not in pretrained:
            bad.append(f"{ck.name}: {ck.model} is not a timm pretrained tag")
        if ck.weights_kind == "timm":
            assert "." in ck.model, f"{ck.name}: timm weights need an explicit arch.tag, got {ck.model}"
    assert not bad, "\n".join(bad)


def test_vit_demo_builds_offline_deterministically():
    ck = resolve("vit_demo", load_registry())
    m1, cfg = build_model(ck, 10)
    m2, _ = build_model(ck, 10)
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1), "weights none must be seeded by ck.seed"
    assert m1.pos_embed.shape == (1, 1 + 4 * 4, 128)
    assert cfg["input_size"] == (3, 16, 16)  # follows the built model, not timm's 224 default
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)  # entry overrides, lists -> tuples
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0
    assert not m1.head.weight.any() and not m1.head.bias.any()


def test_keep_head_keeps_initialised_head():
    ck = resolve("vit_demo", load_registry())
    m, _ = build_model(ck, 10, keep_head=True)
    assert m.head.weight.any()


# ----------------------------------------------------------------------------------------------------------
# 2. User files: additions and overrides, as arguments and through TRANSFER_EVAL_REGISTRY


def test_user_file_adds_and_overrides(tmp_path):
    user = _write(
        tmp_path / "user.yaml",
        """
        vit_demo:
          model: vit_tiny_patch16_224
          weights: none
          seed: 7
          pretraining: overridden
        my_tiny:
          model: vit_small_patch16_224
          weights: none
          pretraining: none
          family: test
    """,
    )
    builtin = load_registry()
    reg = load_registry([user])
    assert set(reg) == set(builtin) | {"my_tiny"}
    assert reg["vit_demo"].model == "vit_tiny_patch16_224" and reg["vit_demo"].seed == 7
    assert reg["vit_demo"].pretraining == "overridden"
    assert reg["vit_demo"].source == str(user)
    assert reg["my_tiny"].family == "test" and reg["my_tiny"].weights == "none"
    assert reg["deit3_s16_in1k"] == builtin["deit3_s16_in1k"]  # untouched entries stay as they were


def test_later_user_files_win_and_env_comes_before_arguments(tmp_path, monkeypatch):
    def one(path, pretraining):
        return _write(path, f"shared:\n  model: {ARCH}\n  weights: none\n  pretraining: {pretraining}\n")

    e1, e2, arg = one(tmp_path / "e1.yaml", "env1"), one(tmp_path / "e2.yaml", "env2"), one(tmp_path / "a.yaml", "arg")
    _write(tmp_path / "e1_only.yaml", f"only_env:\n  model: {ARCH}\n  pretraining: x\n")
    monkeypatch.setenv("TRANSFER_EVAL_REGISTRY", os.pathsep.join([str(tmp_path / "e1_only.yaml"), str(e1), str(e2)]))
    reg = load_registry()
    assert reg["shared"].pretraining == "env2"
    assert "only_env" in reg and reg["only_env"].weights == "timm"  # the default weights kind
    assert "vit_demo" in reg  # the built-in file is still read
    assert load_registry([arg])["shared"].pretraining == "arg"
    monkeypatch.setenv("TRANSFER_EVAL_REGISTRY", str(tmp_path / "missing.yaml"))
    with pytest.raises(UserError, match="does not exist"):
        load_registry()


def test_empty_user_file_adds_nothing(tmp_path):
    empty = _write(tmp_path / "empty.yaml", "# nothing here\n")
    assert set(load_registry([empty])) == set(load_registry())


# ----------------------------------------------------------------------------------------------------------
# 3. Errors in registry files and names


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = _write(
        tmp_path / "bad.yaml",
        """
        ok_entry:
          model: vit_small_patch16_224
          pretraining: x
        broken:
          model: vit_small_patch16_224
           pretraining: x
    """,
    )
    with pytest.raises(yaml.YAMLError) as yerr:
        yaml.safe_load(bad.read_text())
    line = yerr.value.problem_mark.line + 1
    assert line == 6  # the mis-indented line, as PyYAML reports it
    with pytest.raises(UserError) as e:
        load_registry([bad])
    msg = str(e.value)
    assert f"{bad}:6" in msg
    assert "\n" not in msg


def test_unclosed_bracket_reports_yaml_line(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "a:\n  model: x\n  pretraining: [y\n")
    with pytest.raises(UserError, match=rf"{bad}:4\b"):  # PyYAML reports the stream end, line 4
        load_registry([bad])


def test_missing_field_names_file_line_and_entry(tmp_path):
    f = _write(
        tmp_path / "r.yaml",
        """
        good:
          model: vit_small_patch16_224
          pretraining: x
        no_pretraining:
          model: vit_small_patch16_224
          weights: none
    """,
    )
    with pytest.raises(UserError) as e:
        load_registry([f])
    msg = str(e.value)
    assert f"{f}:4" in msg and "'no_pretraining'" in msg and "pretraining" in msg.split("missing")[-1]


def test_missing_model_is_reported(tmp_path):
    f = _write(tmp_path / "r.yaml", "no_model:\n  pretraining: x\n")
    with pytest.raises(UserError, match=rf"{f}:1: entry 'no_model' is missing required field\(s\) model"):
        load_registry([f])


def test_unknown_field_names_file_line_entry_and_field(tmp_path):
    f = _write(
        tmp_path / "r.yaml",
        """
        first:
          model: vit_small_patch16_224
          pretraining: x
        second:
          model: vit_small_patch16_224
          pretraining: x
          weigths: none
    """,
    )
    with pytest.raises(UserError) as e:
        load_registry([f])
    msg = str(e.value)
    assert f"{f}:4" in msg and "'second'" in msg and "weigths" in msg and "allowed" in msg


def test_non_mapping_entry(tmp_path):
    f = _write(tmp_path / "r.yaml", "a:\n  model: x\n  pretraining: y\nb: just a string\n")
    with pytest.raises(UserError, match=rf"{f}:4: entry 'b' must be a mapping"):
        load_registry([f])


def test_top_level_not_a_mapping(tmp_path):
    f = _write(tmp_path / "r.yaml", "- a\n- b\n")
    with pytest.raises(UserError, match="must map checkpoint names"):
        load_registry([f])


def test_url_without_sha256(tmp_path):
    f = _write(
        tmp_path / "r.yaml",
        """
        remote:
          model: vit_small_patch16_224
          weights: https://example.com/w.safetensors
          pretraining: x
    """,
    )
    with pytest.raises(UserError) as e:
        load_registry([f])
    assert f"{f}:1" in str(e.value) and "'remote'" in str(e.value) and "sha256" in str(e.value)
    # with the sha256 it is accepted (and needs no network to register)
    f.write_text(f.read_text() + "  sha256: " + "A" * 64 + "\n")
    ck = load_registry([f])["remote"]
    assert ck.weights_kind == "url" and ck.sha256 == "a" * 64 and not ck.offline
    assert weights_digest(ck) == "a" * 64


def test_bad_weights_suffix_and_data_config_key(tmp_path):
    f = _write(tmp_path / "r.yaml", f"x:\n  model: {ARCH}\n  weights: model.ckpt\n  pretraining: y\n")
    with pytest.raises(UserError, match=r"r\.yaml:1: entry 'x': weights 'model\.ckpt' is not"):
        load_registry([f])
    f = _write(tmp_path / "r.yaml", f"x:\n  model: {ARCH}\n  pretraining: y\n  data_config: {{meen: [0, 0, 0]}}\n")
    with pytest.raises(UserError, match="unknown data_config key.*meen"):
        load_registry([f])
    f = _write(tmp_path / "r.yaml", f"x:\n  model: {ARCH}\n  pretraining: y\n  model_args: [1, 2]\n")
    with pytest.raises(UserError, match="model_args must be a mapping"):
        load_registry([f])


@pytest.mark.parametrize("seed", ["abc", "null"])
def test_bad_seed_is_a_user_error(seed, tmp_path):
    f = _write(tmp_path / "r.yaml", f"x:\n  model: {ARCH}\n  weights: none\n  pretraining: y\n  seed: {seed}\n")
    with pytest.raises(UserError, match=rf"{f}:1"):
        load_registry([f])


def test_unknown_name_suggests_close_names():
    reg = load_registry()
    with pytest.raises(UserError) as e:
        resolve("vit_dem", reg)
    assert "did you mean 'vit_demo'" in str(e.value)
    with pytest.raises(UserError, match="did you mean.*'deit3_s16_in1k'"):
        resolve("deit3_s16_in1", reg)


def test_bare_architecture_and_pretrained_tag():
    reg = load_registry()
    bare = resolve(ARCH, reg)
    assert bare.weights == "none" and bare.source == "timm" and bare.offline
    tagged = resolve(f"{ARCH}.augreg_in21k", reg)
    assert tagged.weights == "timm" and tagged.model == f"{ARCH}.augreg_in21k" and not tagged.offline
    with pytest.raises(UserError, match="no pretrained tag"):
        resolve(f"{ARCH}.no_such_tag", reg)


# ----------------------------------------------------------------------------------------------------------
# 4. Local weights round-trip, relative paths


def _save(fmt: str, sd: dict, path: Path) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "pth":
        torch.save(sd, path)
    elif fmt == "pt-wrapped":  # a training checkpoint: state dict under "model" beside other fields
        torch.save({"model": sd, "epoch": 3, "optimizer_lr": 0.1}, path)
    elif fmt == "bin-ddp":  # saved from a DistributedDataParallel model
        torch.save({"module." + k: v for k, v in sd.items()}, path)


SUFFIX = {"safetensors": ".safetensors", "pth": ".pth", "pt-wrapped": ".pt", "bin-ddp": ".bin"}


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_local_weights_round_trip(fmt, tmp_path, monkeypatch, sd_a):
    wdir = tmp_path / "reg"
    wdir.mkdir()
    fname = "a" + SUFFIX[fmt]
    _save(fmt, sd_a, wdir / fname)
    reg_file = _write(wdir / "user.yaml", _entry("from_file", fname))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative path must resolve against the registry file, not the cwd
    ck = resolve("from_file", load_registry([reg_file]))
    assert ck.weights_kind == "file" and ck.weights_path() == wdir / fname and ck.offline
    model, cfg = build_model(ck, 5)
    _assert_loaded(model, sd_a)
    assert cfg["input_size"] == (3, 32, 32)
    assert weights_digest(ck) == hashlib.sha256((wdir / fname).read_bytes()).hexdigest()


def test_missing_weights_file(tmp_path):
    reg_file = _write(tmp_path / "user.yaml", _entry("gone", "nothing_here.safetensors"))
    ck = load_registry([reg_file])["gone"]
    assert not ck.offline
    with pytest.raises(UserError, match="does not exist"):
        build_model(ck, 5)
    with pytest.raises(UserError, match="does not exist"):
        weights_digest(ck)


def test_registry_file_named_checkpoints_yaml_resolves_its_own_folder(tmp_path, monkeypatch, sd_a):
    """A user registry that happens to be called checkpoints.yaml, given by a relative path (the natural
    `--registry checkpoints.yaml` in a project folder), must still resolve weights against its own folder."""
    torch.save(sd_a, tmp_path / "a.pth")
    _write(tmp_path / "checkpoints.yaml", _entry("mine", "a.pth"))
    monkeypatch.chdir(tmp_path)
    ck = load_registry(["checkpoints.yaml"])["mine"]
    assert ck.weights_path().resolve() == (tmp_path / "a.pth").resolve()


# ----------------------------------------------------------------------------------------------------------
# 5. JAX/Flax .npz (the original ViT release format), through timm's load_pretrained


def _to_jax_npz(sd: dict, depth: int, num_heads: int, path: Path) -> None:
    """Inverse of timm.models.vision_transformer._load_weights for a plain ViT (class token, no big_vision)."""

    def n(t):
        return t.detach().cpu().numpy().astype(np.float32)

    dim = sd["cls_token"].shape[-1]
    hd = dim // num_heads
    w = {
        "embedding/kernel": n(sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)),  # OIHW -> HWIO
        "embedding/bias": n(sd["patch_embed.proj.bias"]),
        "cls": n(sd["cls_token"]),
        "Transformer/posembed_input/pos_embedding": n(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": n(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": n(sd["norm.bias"]),
        "head/kernel": n(sd["head.weight"].T),
        "head/bias": n(sd["head.bias"]),
    }
    for i in range(depth):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = n(sd[b + "norm1.weight"]), n(sd[b + "norm1.bias"])
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = n(sd[b + "norm2.weight"]), n(sd[b + "norm2.bias"])
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            w[mha + f"{name}/kernel"] = n(qkv_w[j * dim : (j + 1) * dim].T.reshape(dim, num_heads, hd))
            w[mha + f"{name}/bias"] = n(qkv_b[j * dim : (j + 1) * dim].reshape(num_heads, hd))
        w[mha + "out/kernel"] = n(sd[b + "attn.proj.weight"].reshape(dim, num_heads, hd).permute(1, 2, 0))
        w[mha + "out/bias"] = n(sd[b + "attn.proj.bias"])
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = n(sd[b + f"mlp.fc{r + 1}.weight"].T)
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = n(sd[b + f"mlp.fc{r + 1}.bias"])
    np.savez(path, **w)


def test_jax_npz_round_trip(tmp_path, monkeypatch, sd_a):
    _to_jax_npz(sd_a, TINY["depth"], TINY["num_heads"], tmp_path / "vit.npz")
    reg_file = _write(tmp_path / "user.yaml", _entry("jax", "vit.npz"))
    monkeypatch.chdir(Path(__file__).parent)
    ck = resolve("jax", load_registry([reg_file]))
    model, _ = build_model(ck, 5)
    sd = model.state_dict()
    for k in sd_a:  # the converter's float32 round trip is exact
        if k not in HEAD_KEYS:
            assert torch.equal(sd[k], sd_a[k]), f"{k} differs after loading the .npz"
    assert not sd["head.weight"].any() and not sd["head.bias"].any() and sd["head.weight"].shape == (5, D)


def test_jax_npz_keeps_task_head_even_when_sizes_match(tmp_path, sd_a):
    """With 10 classes the .npz head fits; the task still gets a zero head (keep_head=False)."""
    _to_jax_npz(sd_a, TINY["depth"], TINY["num_heads"], tmp_path / "vit.npz")
    ck = load_registry([_write(tmp_path / "user.yaml", _entry("jax", "vit.npz"))])["jax"]
    model, _ = build_model(ck, 10)
    assert not model.head.weight.any() and not model.head.bias.any()
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd_a["blocks.1.mlp.fc2.weight"])


def test_jax_npz_that_does_not_fit(tmp_path, sd_a):
    _to_jax_npz(sd_a, TINY["depth"], TINY["num_heads"], tmp_path / "vit.npz")
    wide = dict(TINY, embed_dim=96)
    ck = load_registry([_write(tmp_path / "user.yaml", _entry("jax_wide", "vit.npz", wide))])["jax_wide"]
    with pytest.raises(UserError, match="does not fit"):
        build_model(ck, 5)


# ----------------------------------------------------------------------------------------------------------
# 6. A pickle that would run code is refused without running it


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)  # harmless, but leaves a trace if it ever runs


def test_malicious_pickle_is_refused_and_not_executed(tmp_path, sd_a):
    live_marker, marker = tmp_path / "control_ran", tmp_path / "pwned"
    control = tmp_path / "control.pth"
    torch.save({"w": _Payload(live_marker)}, control)
    torch.load(control, weights_only=False)  # control: the payload is live under a full unpickler
    assert live_marker.is_dir()

    evil = tmp_path / "evil.pth"
    torch.save({**sd_a, "x": _Payload(marker)}, evil)
    ck = load_registry([_write(tmp_path / "user.yaml", _entry("evil", "evil.pth"))])["evil"]
    with pytest.raises(UserError) as e:
        build_model(ck, 5)
    assert "weights-only" in str(e.value) and "refusing to load" in str(e.value)
    assert not marker.exists(), "the pickle's payload ran"


def test_unreadable_files_are_user_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    reg = load_registry(
        [
            _write(
                tmp_path / "user.yaml",
                _entry("a", "junk.pth") + _entry("b", "junk.safetensors") + _entry("c", "list.pth"),
            )
        ]
    )
    for name in ("a", "b"):
        with pytest.raises(UserError):
            build_model(reg[name], 5)
    with pytest.raises(UserError, match="not a state dict"):
        build_model(reg["c"], 5)


# ----------------------------------------------------------------------------------------------------------
# 7. Weights that do not fit name the tensors


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_wrong_width_names_tensors(suffix, tmp_path, sd_a):
    _save("safetensors" if suffix == ".safetensors" else "pth", sd_a, tmp_path / f"a{suffix}")
    wide = dict(TINY, embed_dim=96)
    ck = load_registry([_write(tmp_path / "user.yaml", _entry("wide", f"a{suffix}", wide))])["wide"]
    with pytest.raises(UserError) as e:
        build_model(ck, 5)
    msg = str(e.value)
    assert "'wide'" in msg and "does not fit" in msg and "wrong shape" in msg
    assert "blocks.0" in msg or "pos_embed" in msg
    assert "(64" in msg and "96" in msg  # both shapes shown


def test_missing_and_unexpected_tensors_are_listed(tmp_path, sd_a):
    sd = {k: v for k, v in sd_a.items() if k != "norm.weight"}
    sd["extra.thing"] = torch.zeros(3)
    torch.save(sd, tmp_path / "a.pth")
    ck = load_registry([_write(tmp_path / "user.yaml", _entry("holes", "a.pth"))])["holes"]
    with pytest.raises(UserError) as e:
        build_model(ck, 5)
    msg = str(e.value)
    assert "missing: norm.weight" in msg and "unexpected: extra.thing" in msg


def test_deeper_model_reports_missing_blocks(tmp_path, sd_a):
    torch.save(sd_a, tmp_path / "a.pth")
    deep = dict(TINY, depth=3)
    ck = load_registry([_write(tmp_path / "user.yaml", _entry("deep", "a.pth", deep))])["deep"]
    with pytest.raises(UserError, match=r"missing: blocks\.2\."):
        build_model(ck, 5)


# ----------------------------------------------------------------------------------------------------------
# 8. sha256 in the registry


def test_registry_sha256_checked_by_weights_digest(tmp_path, sd_a):
    torch.save(sd_a, tmp_path / "a.pth")
    real = hashlib.sha256((tmp_path / "a.pth").read_bytes()).hexdigest()
    wrong = "deadbeef" * 8
    reg = load_registry(
        [
            _write(
                tmp_path / "user.yaml",
                _entry("bad_sum", "a.pth", extra=f"  sha256: {wrong}\n")
                + _entry("good_sum", "a.pth", extra=f"  sha256: {real.upper()}\n"),
            )
        ]
    )
    with pytest.raises(UserError) as e:
        weights_digest(reg["bad_sum"])
    assert real in str(e.value) and wrong in str(e.value)
    assert weights_digest(reg["good_sum"]) == real
    assert checkpoints.file_sha256(tmp_path / "a.pth") == real


def test_unquoted_numeric_sha256_is_not_silently_dropped(tmp_path, sd_a):
    torch.save(sd_a, tmp_path / "a.pth")
    f = _write(tmp_path / "user.yaml", _entry("zero_sum", "a.pth", extra=f"  sha256: {'0' * 64}\n"))
    with pytest.raises(UserError):  # either rejected as malformed, or checked (and found wrong)
        weights_digest(load_registry([f])["zero_sum"])


def test_digest_of_random_init_depends_on_what_determines_it():
    reg = load_registry()
    demo = reg["vit_demo"]
    import dataclasses

    d = weights_digest(demo)
    assert len(d) == 64 and d == weights_digest(demo)
    assert weights_digest(dataclasses.replace(demo, seed=1)) != d
    assert weights_digest(dataclasses.replace(demo, model_args={**demo.model_args, "depth": 2})) != d
    assert weights_digest(dataclasses.replace(demo, name="renamed", description="x")) == d
    # timm tags: a digest of the immutable name, no download
    assert weights_digest(reg["deit3_s16_in1k"]) != weights_digest(reg["deit3_b16_in1k"])


# ----------------------------------------------------------------------------------------------------------
# 9. resolution: timm resamples the position embedding


def test_resolution_resamples_pos_embed(tmp_path, sd_a):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd_a.items()}, str(tmp_path / "a.safetensors"))
    ck = load_registry([_write(tmp_path / "user.yaml", _entry("tiny", "a.safetensors"))])["tiny"]
    model, cfg = build_model(ck, 5, resolution=48)
    assert model.pos_embed.shape == (1, 1 + 12 * 12, D)
    assert cfg["input_size"] == (3, 48, 48)
    assert torch.equal(model.pos_embed[:, :1], sd_a["pos_embed"][:, :1])  # the class-token position is kept
    assert torch.equal(model.patch_embed.proj.weight, sd_a["patch_embed.proj.weight"])
    assert torch.equal(model.blocks[0].attn.qkv.weight, sd_a["blocks.0.attn.qkv.weight"])
    # resampled, not re-initialised: the 12x12 grid is the checkpoint's own 8x8 grid put through timm's resampler
    # (bicubic, antialiased: checkpoint_filter_fn's defaults), computed here apart from the load
    from timm.layers import resample_abs_pos_embed

    expected = resample_abs_pos_embed(sd_a["pos_embed"], new_size=[12, 12], old_size=[8, 8], num_prefix_tokens=1)
    assert torch.equal(model.pos_embed.detach(), expected)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, 5)
    assert not out.any()  # zero head


def test_resolution_with_random_init_and_data_config_override(tmp_path):
    f = _write(tmp_path / "user.yaml", _entry("sized", "none", extra="  data_config: {input_size: [3, 40, 40]}\n"))
    ck = load_registry([f])["sized"]
    _, cfg = build_model(ck, 3)
    assert cfg["input_size"] == (3, 40, 40)  # the entry's override wins over the built size
    model, cfg = build_model(ck, 3, resolution=48)
    assert cfg["input_size"] == (3, 48, 48) and model.pos_embed.shape == (1, 145, D)


# ----------------------------------------------------------------------------------------------------------
# 10. The CLI: bad input exits 2 with one line on stderr and stores nothing


def _cli(args, cwd):
    return conftest.cli(*args, cwd=cwd, env={"TRANSFER_EVAL_CACHE": cwd / "cache"})


@pytest.mark.parametrize("case", ["checkpoint", "registry", "task", "mode"])
def test_cli_bad_input_exits_2_with_one_line(case, tmp_path):
    db = tmp_path / "results.sqlite"
    bad_reg = _write(tmp_path / "bad.yaml", "x:\n  model: y\n   pretraining: z\n")
    args = {
        "checkpoint": ["-c", "nonexistent_ckpt", "-t", "digits", "-m", "linear"],
        "registry": ["-c", "vit_demo", "-t", "digits", "-m", "linear", "--registry", str(bad_reg)],
        "task": ["-c", "vit_demo", "-t", "no_such_task", "-m", "linear"],
        "mode": ["-c", "vit_demo", "-t", "digits", "-m", "no_such_mode"],
    }[case]
    p = _cli(["run", *args, "--results", str(db)], tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("transfer-eval: error: ")
    expected = {
        "checkpoint": "unknown checkpoint 'nonexistent_ckpt'",
        "registry": f"{bad_reg}:3",
        "task": "unknown task 'no_such_task'",
        "mode": "unknown mode 'no_such_mode'",
    }[case]
    assert expected in lines[0]
    assert "Traceback" not in p.stdout + p.stderr
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
