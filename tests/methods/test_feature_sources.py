"""Feature sources and normalisation for the probes (issue 33): each source against an independent computation on a
small timm ViT with registers, one forward pass for every source, the cache keyed per source, the choice of source
on val only, the registry's paper probe, and a source a checkpoint cannot give refused in one line."""

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from conftest import cli

from transfer_eval import checkpoints, protocol, tasks
from transfer_eval.errors import UserError
from transfer_eval.methods import inference, knn, modes, probe, sources
from transfer_eval.run import runner, stages
from transfer_eval.store.cache import features as cache
from transfer_eval.store.results import Store

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vit():
    """A 3-block ViT with a class token and 4 registers (DINOv2's layout), random weights, and a batch."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch14_reg4_dinov2", img_size=28, patch_size=14, embed_dim=32, depth=3, num_heads=2, num_classes=5
    ).eval()
    return model, torch.randn(6, 3, 28, 28)


def _blocks_by_hand(model, x):
    """Every block's output, computed step by step (not through forward_features nor the hooks)."""
    t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    outs = []
    for blk in model.blocks:
        t = blk(t)
        outs.append(t)
    return outs


@torch.no_grad()
def test_each_source_equals_an_independent_computation(vit):
    model, x = vit
    assert model.num_prefix_tokens == 5  # the class token and 4 registers
    names = ["pooled", "cls", "avg", "cls+avg", "last2", "last3+avg", "last1"]
    got = sources.forward(model, names)(x)
    outs = _blocks_by_hand(model, x)
    normed = [model.norm(o) for o in outs]
    cls = normed[-1][:, 0]
    patches = normed[-1][:, 5:]  # registers (tokens 1-4) excluded
    avg = patches.mean(1)
    assert not torch.allclose(avg, normed[-1][:, 1:].mean(1), atol=1e-4)  # registers would change the mean
    close = dict(rtol=1e-5, atol=1e-5)
    assert torch.allclose(got["pooled"], model.forward_head(model.forward_features(x), pre_logits=True), **close)
    assert torch.allclose(got["cls"], cls, **close) and torch.allclose(got["last1"], cls, **close)
    assert torch.allclose(got["avg"], avg, **close)
    assert torch.allclose(got["cls+avg"], torch.cat([cls, avg], 1), **close)  # in that order
    # the last n blocks' class tokens, each through the final norm, earliest block first
    assert torch.allclose(got["last2"], torch.cat([normed[1][:, 0], normed[2][:, 0]], 1), **close)
    assert torch.allclose(got["last3+avg"], torch.cat([normed[0][:, 0], normed[1][:, 0], cls, avg], 1), **close)
    # and as timm's own forward_intermediates gives them (norm=True, prefix tokens returned)
    _, inter = model.forward_intermediates(x, indices=3, norm=True, return_prefix_tokens=True, output_fmt="NLC")
    assert torch.allclose(got["last3+avg"][:, :96], torch.cat([p[:, 0] for _, p in inter], 1), **close)
    assert torch.allclose(got["avg"], inter[-1][0].mean(1), **close)


def test_a_source_the_checkpoint_cannot_give_is_refused(vit):
    model, _ = vit
    sources.check(model, ["pooled", "cls+avg", "last3+avg"], "tiny")
    with pytest.raises(UserError, match="has 3 blocks, not 4"):
        sources.check(model, ["last4"], "tiny")
    with pytest.raises(UserError, match="no projection"):
        sources.check(model, ["proj"], "tiny")
    sources.check(model, ["proj"], "tiny", projection=8)
    with pytest.raises(UserError, match="unknown feature source 'last0'"):
        sources.parse("last0")
    with pytest.raises(UserError, match="unknown feature normalisation"):
        sources.normalisation("batchnorm")


def test_proj_is_the_pretrained_head_applied_to_pooled():
    ck = checkpoints.from_entry(
        "tiny_clip",
        {
            "model": "vit_base_patch16_clip_224",
            "weights": "none",
            "pretraining": "none",
            "model_args": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
            "probe": {"projection": 8},
        },
        "test",
        "test",
    )
    whole, _ = checkpoints.build_model(ck, 8, keep_head=True)  # the tower with its projection (seeded weights)
    model = copy.deepcopy(whole)
    model.reset_classifier(3)  # a task's model: the same backbone, the task's head in place of the projection
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = sources.forward(model.eval(), ["proj", "pooled"], stages.projection(ck))(x)
        assert torch.allclose(got["proj"], whole.eval()(x), atol=1e-5)
        assert got["proj"].shape == (2, 8) and got["pooled"].shape == (2, 32)


def test_one_pass_extracts_every_source_and_the_cache_keys_each_apart(tmp_path, monkeypatch, vit):
    from transfer_eval.tasks import LoadContext

    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path))
    model, _ = vit
    ck, digits = checkpoints.load_registry()["vit_demo"], tasks.discover()["digits"]
    split = digits.dataset("val", LoadContext(tmp_path)).limited(40)
    cfg = {"input_size": (3, 28, 28), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
           "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    parts = dict(weights_sha256="a" * 64, checkpoint=ck, task=digits, split_name="val")
    calls = []
    hook = model.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    try:
        names = ["pooled", "cls+avg", "last3+avg"]
        feats, labels, hit = probe.cached_sources(model, split, cfg, CPU, 16, parts, names)
        assert not hit and len(calls) == 3  # 40 images in batches of 16: one pass, every source
        assert [feats[n].shape[1] for n in names] == [32, 64, 128]
        again, _, hit = probe.cached_sources(model, split, cfg, CPU, 16, parts, ["cls+avg", "pooled"])
        assert hit and len(calls) == 3  # reused: no pass
        assert np.array_equal(again["cls+avg"], feats["cls+avg"])
        more, _, hit = probe.cached_sources(model, split, cfg, CPU, 16, parts, ["pooled", "avg"])
        assert not hit and len(calls) == 6  # one pass more, for the one missing source
        assert np.allclose(more["avg"], feats["cls+avg"][:, 32:], atol=1e-6)
    finally:
        hook.remove()
    entries = {e.get("source", "pooled"): e for e in cache.entries()}
    assert sorted(entries) == ["avg", "cls+avg", "last3+avg", "pooled"]
    # pooled keeps the key it had before sources existed; every other source has its own
    base = dict(manifest=split.manifest(), data_config=cfg, files=split.files_signature(), **parts)
    assert cache.key(**base) == cache.key(**base, source="pooled")
    assert len({cache.key(**base, source=n) for n in ["pooled", "cls", "avg", "cls+avg", "last4"]}) == 5


def test_normalisation_uses_train_statistics_for_every_split():
    rng = np.random.default_rng(0)
    train, other = rng.normal(3, 2, (50, 4)), rng.normal(-1, 5, (20, 4))
    norm = sources.Normaliser("standard", train)
    z = norm(train)
    assert np.allclose(z.mean(0), 0, atol=1e-5) and np.allclose(z.std(0), 1, atol=1e-4)
    assert np.allclose(norm(other), (other - train.mean(0)) / (train.std(0) + 1e-6), atol=1e-5)  # train's, not its own
    unit = sources.Normaliser("l2", train)(other)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-6)
    assert sources.Normaliser("none", train)(other) is other  # no copy at the default
    assert set(norm.tensors()) == {"features.mean", "features.std"}


class _Stage:
    """What a probe stage reads, with features made up per source; reading test before it is unsealed fails."""

    def __init__(self, recipe, data, classes=3):
        self.run = SimpleNamespace(recipe=recipe, task=SimpleNamespace(num_classes=classes))
        self.device, self.fwd_gflops, self.sealed = torch.device("cpu"), 0.0, True
        self.splits = {"test": SimpleNamespace(unseal=lambda: setattr(self, "sealed", False))}
        self.data = data

    def sources(self, name, names=None, **split):
        if name == "test":
            assert not self.sealed, "test read before every choice was made"
        feats, labels = self.data[name]
        return {n: feats[n] for n in names or sources.of(self.run.recipe)}, labels, 0.0


def _data():
    """Source `good_val` separates the classes on train and val but not on test; `good_test` the other way round."""
    rng = np.random.default_rng(1)
    y = np.arange(60) % 3

    def informative():
        return (np.eye(3)[y] * 6 + rng.normal(0, 0.3, (60, 3))).astype(np.float32)

    def noise():
        return rng.normal(0, 1, (60, 3)).astype(np.float32)

    return {
        "train": ({"good_val": informative(), "good_test": informative()}, y),
        "val": ({"good_val": informative(), "good_test": noise()}, y),
        "test": ({"good_val": noise(), "good_test": informative()}, y),
    }


@pytest.mark.parametrize("stage", ["knn", "probe"])
def test_the_source_is_chosen_on_val_never_on_test(stage, monkeypatch):
    data = _data()
    monkeypatch.setattr(sources, "parse", lambda v: list(v) if isinstance(v, list) else [v])  # made-up names
    (xtr, ytr), (test_feats, yte) = data["train"], data["test"]
    on_test = {  # each source's test accuracy: test would choose the other source
        n: float((knn.classify([(xtr[n], ytr)], test_feats[n], [5], 3)[5][:, 0] == yte).mean())
        for n in ("good_val", "good_test")
    }
    assert on_test["good_test"] > on_test["good_val"] + 0.3
    if stage == "knn":
        s = _Stage({"k": [5], "temperature": 0.07, "features": ["good_test", "good_val"]}, data)
        trained = stages.knn_stage(s)
    else:
        recipe = {"c_grid": [1.0], "tol": 1e-6, "max_iter": 200, "features": ["good_test", "good_val"]}
        s = _Stage(recipe, data)
        trained = stages.probe_stage(s)
    assert trained.selection["chosen"]["features"] == "good_val"
    assert trained.selection["features_grid"]["good_val"] > trained.selection["features_grid"]["good_test"]
    s.splits["test"].unseal()  # the run scores test once every choice is made, with the stage's scorer
    scored = trained.scorer(SimpleNamespace(labels=yte), SimpleNamespace(scored_classes=None, name="t"))
    assert (scored.top5[:, 0] == yte).mean() < on_test["good_test"]  # scored with val's choice


def test_defaults_keep_the_recipe_and_its_hash():
    digits = tasks.discover()["digits"]
    for name in ("linear", "knn", "fewshot"):
        mode = modes.MODES[name]
        plain = runner.resolve_recipe(digits, mode)
        assert "features" not in plain and "normalise" not in plain  # the recipe of every earlier run
        same = runner.resolve_recipe(digits, mode, {"features": "pooled", "normalise": "none"})
        assert same == plain
        other = runner.resolve_recipe(digits, mode, {"features": "cls+avg"})
        assert other["features"] == "cls+avg"
        hashes = {protocol.protocol_hash(name, mode.version, r) for r in (plain, other)}
        assert len(hashes) == 2
    with pytest.raises(UserError, match="features must be pooled, cls, .* or proj, or a list of them; got 'cls.mean'"):
        runner.resolve_recipe(digits, modes.MODES["linear"], {"features": "cls+mean"})


def test_fewshot_runs_each_source_apart_and_recipe_paper_reads_the_registry(tmp_path, caplog):
    reg = tmp_path / "reg.yaml"
    reg.write_text(
        "paper_demo:\n  model: vit_small_patch16_224\n  weights: none\n  pretraining: none\n"
        "  model_args: {img_size: 16, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2}\n"
        "  probe: {about: a test paper, linear: {features: [cls, cls+avg]}, knn: {features: avg, normalise: l2}}\n"
    )
    runs = runner.plan_named(["vit_demo"], ["digits"], ["fewshot"], seeds=[0], overrides={"features": ["pooled", "avg"],
                             "shots": [5]})  # fmt: skip
    assert [r.recipe.get("features", "-") for r in runs] == ["-", "avg"]  # pooled: the default recipe, its own key
    with caplog.at_level(logging.INFO, logger="transfer_eval"):
        runs = runner.plan_named(
            ["paper_demo"], ["digits"], ["linear", "knn", "full"], preset="paper", registries=[reg]
        )
        assert not [r for r in caplog.records if "paper probe" in r.getMessage()]  # its paper's, said nowhere
        runner.plan_named(["vit_demo"], ["digits"], ["linear", "knn", "full"], preset="paper")  # no paper probe
    (said,) = [r.getMessage() for r in caplog.records if "paper probe" in r.getMessage()]  # one line, saying so
    assert said.startswith("--recipe paper: vit_demo has no paper probe for linear, knn") and "pooled" in said
    by = {r.mode.name: r.recipe for r in runs}
    assert by["linear"]["features"] == ["cls", "cls+avg"]
    assert by["knn"]["features"] == "avg" and by["knn"]["normalise"] == "l2"
    assert by["full"]["preset"] == "vit"  # fine-tuning keeps the task's preset
    runs = runner.plan_named(["paper_demo"], ["digits"], ["linear"], preset="paper", registries=[reg],
                             overrides={"features": "avg"})  # fmt: skip
    assert runs[0].recipe["features"] == "avg"  # --set wins over the paper's
    bad = tmp_path / "bad.yaml"
    bad.write_text("x:\n  model: vit_small_patch16_224\n  pretraining: none\n  probe: {linear: {features: mean}}\n")
    with pytest.raises(UserError, match=r"bad.yaml:1: entry 'x': probe.linear: unknown feature source 'mean'"):
        checkpoints.load_registry([bad])


@pytest.mark.parametrize("source, says", [("proj", "has no projection"), ("last9", "has 4 blocks, not 9")])
def test_cli_refuses_a_source_the_checkpoint_cannot_give(tmp_path, source, says):
    proc = cli("run", "-c", "vit_demo", "-t", "digits", "-m", "linear", "--set", f"features={source}",
               "--results", tmp_path / "r.sqlite")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("transfer-eval: error:") and says in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    db = tmp_path / "r.sqlite"
    assert not db.exists() or Store(str(db)).query(status=None) == []  # nothing run, nothing stored


def test_cli_grid_of_sources_stores_the_choice_extracting_once_per_split(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))
    passes = []
    original = inference.features
    monkeypatch.setattr(inference, "features", lambda *a, **k: passes.append(a[1]) or original(*a, **k))
    db = tmp_path / "r.sqlite"
    grid = "features=[pooled,cls+avg,last4+avg]"
    args = ("run", "-c", "vit_demo_shapes", "-t", "digits", "-m", "linear,knn", "--set", grid, "--limit", "60",
            "--set", "c_grid=[0.1,10]", "--results", db)  # fmt: skip
    proc = cli(*args, env={"TRANSFER_EVAL_CACHE": tmp_path / "cache"})
    assert proc.returncode == 0, proc.stderr
    assert len(passes) == 3  # train, val, test: once each, every source in the pass, for both probes
    results = Store(str(db)).query()
    assert len(results) == 2
    for r in results:
        chosen = r.selection["chosen"]["features"]
        assert chosen in ("pooled", "cls+avg", "last4+avg")
        assert set(r.selection["features_grid"]) == {"pooled", "cls+avg", "last4+avg"}
        assert r.selection["features_grid"][chosen] == max(r.selection["features_grid"].values())
    assert len(cache.entries()) == 9  # 3 sources x 3 splits
    board = cli("leaderboard", "--results", db, "--include-limited").stdout
    assert "linear features=pooled|cls+avg|last4+avg" in board and "knn features=pooled|cls+avg|last4+avg" in board
    for r in results:
        assert f"features {r.selection['chosen']['features']} chosen on val" in board


def test_list_checkpoints_shows_the_paper_probe_and_features_exports_a_source(tmp_path):
    listed = cli("list", "checkpoints").stdout
    assert "paper probe" in listed.splitlines()[0]
    row = next(line for line in listed.splitlines() if line.startswith("dinov2_s14_reg4_lvd142m "))
    assert row.rstrip().endswith("linear cls|last4|cls+avg|last4+avg, knn cls")
    out = tmp_path / "f.npz"
    env = {"TRANSFER_EVAL_CACHE": tmp_path / "cache"}
    proc = cli("features", "-c", "vit_demo", "-t", "digits", "--split", "val", "--features", "last2+avg",
               "--output", out, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert np.load(out)["features"].shape == (250, 3 * 128)  # two class tokens and the patch mean, width 128
    proc = cli("features", "-c", "vit_demo", "-t", "digits", "--split", "val", "--features", "proj",
               "--output", out, env=env)  # fmt: skip
    assert proc.returncode == 2 and "has no projection" in proc.stderr
