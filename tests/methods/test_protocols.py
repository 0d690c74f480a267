"""Protocols as the papers ran them: the few-shot solver and sampling, the feature cache, recipes, selection."""

import numpy as np
import pytest
from conftest import cli, json_lines

from transfer_eval import tasks
from transfer_eval.checkpoints import load_registry
from transfer_eval.methods import fewshot, inference, probe
from transfer_eval.methods.modes import MODES
from transfer_eval.run import runner
from transfer_eval.store.cache import features as cache


def _independent_ridge(x, y, k, l2):
    """The same formula, solved directly: (X'X + l2 I) W = X'T with X standardised and a bias column of 100."""
    mean, std = x.mean(0), x.std(0) + 1e-5
    xz = np.hstack([(x - mean) / std, 100.0 * np.ones((len(x), 1))])
    t = 2 * np.eye(k)[y] - 1
    return np.linalg.solve(xz.T @ xz + l2 * np.eye(xz.shape[1]), xz.T @ t), mean, std


@pytest.mark.parametrize("n, d", [(60, 8), (12, 40)])  # both branches: N >= D (x'x) and N < D (xx')
def test_fewshot_solver_matches_an_independent_computation(n, d):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + 2.0, np.arange(n) % 4
    mean, std, w = fewshot.solve(x, y, 4, l2=1024.0)
    w_ref, mean_ref, std_ref = _independent_ridge(x, y, 4, 1024.0)
    assert np.allclose(mean, mean_ref) and np.allclose(std, std_ref)
    assert np.allclose(w, w_ref, rtol=1e-6, atol=1e-9)
    xt = rng.normal(size=(7, d))
    ref = np.hstack([(xt - mean_ref) / std_ref, 100.0 * np.ones((7, 1))]) @ w_ref
    assert np.allclose(fewshot.scores(xt, mean, std, w), ref)


def test_fewshot_sampling_follows_big_vision():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2, 0])
    for seed in range(3):
        rng = np.random.default_rng(seed)  # one generator, classes in order, permute then take the first k
        expected = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:2] for c in (0, 1, 2)])
        assert np.array_equal(fewshot.indices(labels, 2, seed), expected)
    assert not np.array_equal(fewshot.indices(labels, 2, 0), fewshot.indices(labels, 2, 1))


def test_fewshot_plan_is_one_run_per_shots_and_seed():
    reg = load_registry()
    digits = tasks.discover()["digits"]
    runs = runner.plan([reg["vit_demo"]], [digits], [MODES["fewshot"]])
    assert sorted((r.recipe["shots"], r.seed) for r in runs) == [(k, s) for k in (1, 5, 10, 25) for s in (0, 1, 2)]
    assert len({r.key for r in runs}) == 12  # shots is part of the protocol hash
    assert all(r.recipe["l2"] == 1024.0 for r in runs)


def test_fewshot_end_to_end_with_one_extraction(tmp_path):
    env = {"TRANSFER_EVAL_CACHE": str(tmp_path / "cache")}
    proc = cli(
        "run",
        "-c",
        "vit_demo",
        "-t",
        "digits",
        "-m",
        "fewshot",
        "--set",
        "shots=[1,5]",
        "--results",
        tmp_path / "r.sqlite",
        "--json",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert sorted((r["shots"], r["seed"]) for r in rows) == [(1, 0), (1, 1), (1, 2), (5, 0), (5, 1), (5, 2)]
    assert sum(not r["selection"]["features_cached"] for r in rows) == 1  # the first run extracts; the rest reuse
    assert {r["selection"]["examples"] for r in rows} == {10, 50}
    five = [r["top1"] for r in rows if r["shots"] == 5]
    one = [r["top1"] for r in rows if r["shots"] == 1]
    assert np.mean(five) > np.mean(one) > 0.1  # more shots help; above chance


def test_feature_cache_key_covers_what_changes_features(tmp_path):
    reg = load_registry()
    ck, digits = reg["vit_demo"], tasks.discover()["digits"]
    base = dict(
        weights_sha256="a" * 64,
        checkpoint=ck,
        task=digits,
        split_name="train",
        manifest="m" * 64,
        data_config={"input_size": (3, 16, 16), "mean": (0.5,) * 3, "interpolation": "bilinear"},
    )
    key = cache.key(**base)
    assert key == cache.key(**base)
    changed = [
        {"weights_sha256": "b" * 64},
        {"manifest": "n" * 64},  # another split or another set of examples
        {"split_name": "val"},
        {"data_config": {**base["data_config"], "interpolation": "bicubic"}},  # another transform
        {"data_config": {**base["data_config"], "input_size": (3, 32, 32)}},  # another resolution
    ]
    for change in changed:
        assert cache.key(**{**base, **change}) != key, change


def test_second_probe_does_no_forward_pass(tmp_path, monkeypatch):
    from transfer_eval import checkpoints
    from transfer_eval.tasks import LoadContext

    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path))
    ck, digits = load_registry()["vit_demo"], tasks.discover()["digits"]
    model, cfg = checkpoints.build_model(ck, 10)
    split = digits.dataset("val", LoadContext(tmp_path))
    parts = dict(weights_sha256=checkpoints.weights_digest(ck), checkpoint=ck, task=digits, split_name="val")
    import torch

    first = probe.cached_features(model, split, cfg, torch.device("cpu"), 64, parts)
    assert first[2] is False and cache.entries()[0]["images"] == len(split)

    def no_forward(*a, **k):
        raise AssertionError("a cached split was extracted again")

    monkeypatch.setattr(inference, "features", no_forward)
    second = probe.cached_features(model, split, cfg, torch.device("cpu"), 64, parts)
    assert second[2] is True and np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    other = split.subset(range(10))  # a changed split misses
    with pytest.raises(AssertionError, match="extracted again"):
        probe.cached_features(model, other, cfg, torch.device("cpu"), 64, parts)
    assert cache.clear() == 1 and cache.entries() == []


def test_balanced_accuracy():
    labels = np.array([0, 0, 0, 0, 1, 1])
    preds = np.array([0, 0, 0, 0, 0, 1])
    assert inference.balanced_accuracy(labels, preds) == pytest.approx((1.0 + 0.5) / 2)


# ---------------------------------------------------------------------------------------------------------------
# Recipes, selection on val only, more modes


def test_presets_resolve_to_the_documented_values():
    digits, cifar = tasks.discover()["digits"], tasks.discover()["cifar100"]
    vit = runner.resolve_recipe(cifar, MODES["full"])
    assert (
        vit["preset"],
        vit["optimizer"],
        vit["momentum"],
        vit["weight_decay"],
        vit["batch_size"],
        vit["grad_clip"],
        vit["warmup_steps"],
        vit["steps"],
        vit["retrain"],
    ) == ("vit", "sgd", 0.9, 0.0, 512, 1.0, 500, 10000, True)
    assert vit["lr_grid"] == [0.001, 0.003, 0.01, 0.03]
    deit = runner.resolve_recipe(cifar, MODES["attention"], preset="deit")
    assert (
        deit["optimizer"],
        deit["weight_decay"],
        deit["label_smoothing"],
        deit["randaugment"],
        deit["mixup"],
        deit["cutmix"],
        deit["lr_grid"],
    ) == ("adamw", 0.05, 0.1, "rand-m9-mstd0.5-inc1", 0.8, 1.0, [])
    assert deit["steps"] == 10000 and deit["warmup_steps"] == 500  # the task's schedule carries over
    assert deit["batch_size"] == 512 and deit["lr"] == 5e-4 and deit["preset_version"] == 2
    # DeiT's linear scaling rule: lr = 5e-4 x batch / 512, unless lr itself is set
    small = runner.resolve_recipe(cifar, MODES["attention"], {"batch_size": 128}, preset="deit")
    assert small["lr"] == pytest.approx(1.25e-4)
    fixed = runner.resolve_recipe(cifar, MODES["attention"], {"batch_size": 128, "lr": 1e-3}, preset="deit")
    assert fixed["lr"] == 1e-3
    vit = runner.resolve_recipe(cifar, MODES["attention"], {"batch_size": 128})
    assert vit["lr_grid"] == [0.001, 0.003, 0.01, 0.03]  # the vit preset searches lr: no scaling rule
    over = runner.resolve_recipe(cifar, MODES["full"], {"steps": 7, "lr": 0.5}, resolution=384)
    assert (over["steps"], over["lr"], over["resolution"]) == (7, 0.5, 384)
    r1 = runner.plan([load_registry()["vit_demo"]], [digits], [MODES["full"]])[0]
    r2 = runner.plan([load_registry()["vit_demo"]], [digits], [MODES["full"]], overrides={"steps": 801})[0]
    assert r1.protocol_hash != r2.protocol_hash and r1.key != r2.key  # the recipe is part of the run key
    assert runner.resolve_recipe(digits, MODES["lora"])["lora_rank"] == 8


@pytest.mark.parametrize("bad", [{"optimizer": "adam"}, {"stepz": 3}, {"lora_rank": 4}])
def test_bad_recipe_fields_are_user_errors(bad):
    from transfer_eval.errors import UserError

    with pytest.raises(UserError):
        runner.resolve_recipe(tasks.discover()["cifar10"], MODES["full"], bad)


def test_probe_choice_comes_from_val():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] > 0).astype(int)
    xv = rng.normal(size=(80, 5))
    yv_true = (xv[:, 0] > 0).astype(int)
    out = probe.linear_probe((x, y), (xv, yv_true), 2, c_grid=(1e-4, 1e-2, 1.0))
    grid = out["selection"]["grid"]
    best = max(grid.values())
    assert out["val_top1"] == best
    assert grid[f"{out['selection']['chosen']['C']:.4g}"] == best
    # val decides, not train: the same train set with val's labels flipped must move the chosen C. Any fit that
    # learns train's rule scores below chance on the flipped labels, so the strongest regularisation (the smallest
    # C, nearest to a constant guess) is best there, while the true labels reward a weaker one
    flipped = probe.linear_probe((x, y), (xv, 1 - yv_true), 2, c_grid=(1e-4, 1e-2, 1.0))
    chosen, chosen_flipped = out["selection"]["chosen"]["C"], flipped["selection"]["chosen"]["C"]
    assert chosen_flipped != chosen
    assert chosen_flipped == 1e-4 < 1e-2 < chosen
    flipped_grid = flipped["selection"]["grid"]
    assert flipped_grid[f"{chosen_flipped:.4g}"] == max(flipped_grid.values()) == flipped["val_top1"]


def test_test_split_is_sealed_during_selection(tmp_path, monkeypatch):
    """A selection step that reads test fails loudly; a correct run reads test only after selection."""
    import torch

    from transfer_eval.methods import finetune
    from transfer_eval.store.results import Store
    from transfer_eval.tasks import ImageSplit, LoadContext, SealedSplitRead, Task

    reads = []
    digits = tasks.discover()["digits"]

    def load(split, ctx):
        base = digits.load(split, ctx)
        if split != "test":
            return base
        return ImageSplit(lambda i: (reads.append(i), base._image(i))[1], base.labels, base.ids)

    spy = Task(name="spy", num_classes=10, load=load, recipes=digits.recipes)
    ck = load_registry()["vit_demo"]
    store = Store(tmp_path / "r.sqlite")
    ctx = LoadContext(tmp_path)
    (run,) = runner.plan([ck], [spy], [MODES["attention"]], overrides={"steps": 3, "warmup_steps": 1})

    real = finetune.finetune

    def cheating(model, train_split, val_split, *args, **kwargs):
        cheating.test_split.image(0)  # a selection step peeking at test
        return real(model, train_split, val_split, *args, **kwargs)

    original_dataset = Task.dataset

    def capture(self, split, ctx):
        ds = original_dataset(self, split, ctx)
        if split == "test":
            cheating.test_split = ds
        return ds

    monkeypatch.setattr(Task, "dataset", capture)
    monkeypatch.setattr(finetune, "finetune", cheating)
    with pytest.raises(SealedSplitRead, match="never test"):
        runner.execute(run, ctx, torch.device("cpu"), store)
    assert reads == [] and store.query(status=None) == []

    monkeypatch.setattr(finetune, "finetune", real)
    result = runner.execute(run, ctx, torch.device("cpu"), store)
    assert result.status == "ok" and len(reads) == len(digits.dataset("test", ctx))


def test_ffn_bitfit_lora_train_what_they_say():
    import timm

    from transfer_eval.methods import modes

    model = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        num_classes=10,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
    )
    ffn = modes.trainable_names(MODES["ffn"], model)
    assert ffn == {
        f"blocks.{b}.mlp.{fc}.{p}" for b in range(2) for fc in ("fc1", "fc2") for p in ("weight", "bias")
    } | {"pos_embed", "head.weight", "head.bias"}
    bitfit = modes.trainable_names(MODES["bitfit"], model)
    assert bitfit == {n for n, _ in model.named_parameters() if n.endswith("bias")} | {"head.weight"}
    pytest.importorskip("peft")
    lora_model = modes.prepare(MODES["lora"], model, {"lora_rank": 4, "lora_alpha": 8, "lora_targets": "attention"})
    names = modes.apply(MODES["lora"], lora_model)
    counted = sum(p.numel() for n, p in lora_model.named_parameters() if n in names)
    # rank 4 on qkv (32 -> 96) and proj (32 -> 32) of 2 blocks, plus the head
    assert counted == 2 * (4 * (32 + 96) + 4 * (32 + 32)) + (32 * 10 + 10)
    assert all(".lora_" in n or n.startswith("head.") for n in names)
    assert not any("mlp" in n for n in names)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path, monkeypatch):
    """A simulated GPU that fits 16 images: the run backs off 64 -> 32 -> 16 and trains exactly as a run that
    used micro-batches of 16 from the start."""
    import timm
    import torch

    from transfer_eval.store.results import Store
    from transfer_eval.tasks import LoadContext

    digits = tasks.discover()["digits"]
    ck = load_registry()["vit_demo"]
    overrides = {"steps": 6, "warmup_steps": 1, "batch_size": 64}

    def execute(extra, db):
        (run,) = runner.plan([ck], [digits], [MODES["full"]], overrides={**overrides, **extra})
        return runner.execute(run, LoadContext(tmp_path), torch.device("cpu"), Store(db))

    reference = execute({"micro_batch_size": 16}, tmp_path / "ref.sqlite")
    assert (reference.micro_batch_size, reference.oom_backoffs) == (16, 0)

    real_forward = timm.models.vision_transformer.VisionTransformer.forward

    def small_gpu(self, x):
        if self.training and x.shape[0] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(self, x)

    monkeypatch.setattr(timm.models.vision_transformer.VisionTransformer, "forward", small_gpu)
    backed_off = execute({}, tmp_path / "oom.sqlite")
    assert backed_off.status == "ok"
    assert (backed_off.micro_batch_size, backed_off.oom_backoffs) == (16, 2)
    assert backed_off.recipe["batch_size"] == 64  # the protocol is unchanged
    a = Store(tmp_path / "ref.sqlite").predictions(reference.run_id)
    b = Store(tmp_path / "oom.sqlite").predictions(backed_off.run_id)
    assert np.array_equal(a[1], b[1])
