"""The shipped offline pretrained checkpoint vit_demo_shapes, and the synthetic data it was pretrained on.

Fast and offline: nothing is pretrained here (scripts/pretrain_demo.py takes minutes); the shipped file is checked
against its registered sha256, built, and compared with vit_demo's random initialisation.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import REPO

from transfer_eval import checkpoints
from transfer_eval.checkpoints import build_model, load_registry, weights_digest

SCRIPT = REPO / "scripts" / "pretrain_demo.py"


@pytest.fixture(autouse=True)
def _builtin_registry_only(monkeypatch):
    monkeypatch.delenv("TRANSFER_EVAL_REGISTRY", raising=False)


@pytest.fixture(scope="module")
def pretrain_demo():
    spec = importlib.util.spec_from_file_location("pretrain_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the training itself runs only under __main__
    return module


def test_registry_entry_and_shipped_weights():
    reg = load_registry()
    ck, demo = reg["vit_demo_shapes"], reg["vit_demo"]
    assert ck.source == checkpoints.BUILTIN
    assert ck.weights_kind == "file" and ck.offline
    assert (ck.model, ck.model_args, ck.data_config) == (demo.model, demo.model_args, demo.data_config)
    path = ck.weights_path()
    assert path.is_file() and path.parent.name == "weights" and path.parent.parent.name == "transfer_eval"
    assert ck.sha256 and len(ck.sha256) == 64
    assert weights_digest(ck) == ck.sha256  # the file is the one registered (weights_digest raises otherwise)


def test_builds_offline_and_differs_from_random_init():
    reg = load_registry()
    model, cfg = build_model(reg["vit_demo_shapes"], 10)
    base, _ = build_model(reg["vit_demo"], 10)
    assert cfg["input_size"] == (3, 16, 16) and tuple(cfg["mean"]) == (0.5, 0.5, 0.5)
    sd, ref = model.state_dict(), base.state_dict()
    assert set(sd) == set(ref)
    assert not model.head.weight.any() and not model.head.bias.any()  # a fresh zero head for the task
    backbone = [k for k in sd if not k.startswith("head.")]
    differ = [k for k in backbone if not torch.equal(sd[k], ref[k])]
    assert len(differ) == len(backbone), sorted(set(backbone) - set(differ))
    model.eval()
    with torch.no_grad():
        out = model.forward_head(model.forward_features(torch.zeros(2, 3, 16, 16)), pre_logits=True)
    assert out.shape == (2, 128) and torch.isfinite(out).all()


def test_synthetic_generator_is_deterministic(pretrain_demo):
    a, la = pretrain_demo.synth_images(24, seed=0)
    b, lb = pretrain_demo.synth_images(24, seed=0)
    assert a.shape == (24, 16, 16) and a.dtype == np.float32 and la.dtype == np.int64
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.05
    c, lc = pretrain_demo.synth_images(24, seed=1)
    assert not np.array_equal(a, c)
    # image i depends on (seed, i) alone, not on the batch it is drawn in
    tail, ltail = pretrain_demo.synth_images(8, seed=0, start=16)
    assert np.array_equal(tail, a[16:]) and np.array_equal(ltail, la[16:])
    assert 0 <= la.min() and la.max() < len(pretrain_demo.class_names())
