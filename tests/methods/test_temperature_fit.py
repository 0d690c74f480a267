"""Probabilities beside the top-5 and temperature scaling (methods/scoring.py): the mask and the label sets in the
per-batch reduction, the bounded val sample, and each probe stage's T fitted on val alone (the linear probe's with
its train-only fit, k-NN's on its log-votes), never moved by test."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from transfer_eval.methods import calibration, knn, probe, scoring, sources
from transfer_eval.run import stages


def test_collect_masks_pads_and_scales():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    split = SimpleNamespace(labels=np.array([6, 3]), label_sets=None)
    got = scoring.Collect(split, classes=(0, 1, 2, 3, 4, 5), temperature=2.0)
    got.add(logits)
    out = got.result(0.0)
    assert out.top5.tolist() == [[0, 1, 2, 3, 4], [5, 4, 3, 2, 1]]  # class 6, each row's best, is masked
    p = torch.softmax(logits[:, :6], 1)  # the softmax over the scored classes only
    assert np.allclose(out.probs[:, :5], p.gather(1, torch.as_tensor(out.top5)).numpy(), atol=1e-6)
    assert out.probs[0, 5] == 0.0 and np.isclose(out.probs[1, 5], p[1, 3])  # a true class outside the mask: 0
    q = torch.softmax(logits[:, :6] / 2.0, 1)
    assert np.allclose(out.scaled, [[q[0, 0], 0.0], [q[1, 5], q[1, 3]]], atol=1e-6)
    sets = SimpleNamespace(labels=np.array([0]), label_sets=np.array([[0, 2]]))
    few = scoring.Collect(sets)
    few.add(torch.tensor([[1.0, 3.0, 2.0]]))  # three classes: two -1 paddings, probability 0
    out = few.result(0.0)
    assert out.top5.tolist() == [[1, 2, 0, -1, -1]] and out.probs[0, 3:5].tolist() == [0.0, 0.0]
    assert np.isnan(out.probs[0, 5]) and out.scaled is None
    fields = scoring.fields(out, sets.label_sets, None)  # ECE from hits against the set; no NLL for a set
    assert fields["nll"] is None and fields["ece"] == pytest.approx(abs(0.0 - out.probs[0, 0]), rel=1e-6)


def test_val_sample_is_bounded_and_evenly_spaced():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(100, 4, generator=g) * 3, np.arange(100) % 4
    sample = scoring.ValLogits(100, elements=40)  # 10 rows of 4 classes
    for a in range(0, 100, 7):  # batches that do not line up with the rows kept
        sample.add(logits[a : a + 7])
    assert sample.keep.tolist() == np.linspace(0, 99, 10).round().astype(int).tolist()
    assert sample.fit(labels) == calibration.fit_temperature(logits[sample.keep], labels[sample.keep])


class _Stage:
    """What a probe stage reads, features made up: test only through its scorer (as the run reads it)."""

    def __init__(self, recipe, data):
        self.run = SimpleNamespace(recipe=recipe, task=SimpleNamespace(num_classes=3, scored_classes=None, name="t"))
        self.device, self.fwd_gflops, self.data = torch.device("cpu"), 0.0, data

    def sources(self, name, names=None, split=None, **_):
        assert (name == "test") == (split is not None), "test read by a stage"
        return {"pooled": self.data[name][0]}, self.data[name][1], 0.0


def _data(test_labels_seed=None):
    rng = np.random.default_rng(0)

    def blobs(n):
        y = np.arange(n) % 3
        return (np.eye(3, 8)[y] * 1.5 + rng.normal(0, 1.0, (n, 8))).astype(np.float32), y

    data = {s: blobs(n) for s, n in (("train", 90), ("val", 60), ("test", 60))}
    if test_labels_seed is not None:  # other test labels: T must not move
        data["test"] = (data["test"][0], np.random.default_rng(test_labels_seed).permutation(data["test"][1]))
    return data


def _scored(trained, data):
    split = SimpleNamespace(labels=data["test"][1], label_sets=None)
    return trained.scorer(split, SimpleNamespace(scored_classes=None, name="t"))


def _nll(logits, y, t):
    return calibration._nll_at(torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(y), t)


@pytest.mark.parametrize("stage", ["probe", "knn"])
def test_temperature_is_fitted_on_val_alone(stage):
    recipe = {"normalise": "l2"}  # read through features (no model head), l2-normalised
    data = _data()
    norm = sources.Normaliser("l2", data["train"][0])
    (xtr, ytr), (xva, yva) = ((norm(x), y) for x, y in (data["train"], data["val"]))
    if stage == "probe":
        recipe.update(c_grid=[1.0], tol=1e-4, max_iter=100)
        run = stages.probe_stage
        # the chosen C's fit on train alone (the refit has seen val), on val's features
        w, b, _ = probe.linear_probe((xtr, ytr), (xva, yva), 3, [1.0], "cpu", 1e-4, 100)["train_head"]
        logits = xva @ w.T + b
    else:
        recipe.update(k=[10], temperature=0.07)
        run = stages.knn_stage
        logits = torch.cat([scoring.log_votes(v) for v in knn.blocks(*knn.search([(xtr, ytr)], xva, 10, "cpu"), 10, 3)])
        voted = logits[np.arange(len(yva)), yva] > scoring.NO_VOTE  # a true class without a vote: not moved by T
        logits, yva = logits[voted].numpy(), yva[voted.numpy()]
    trained = run(_Stage(recipe, data))
    t = trained.temperature
    assert t == pytest.approx(calibration.fit_temperature(torch.as_tensor(logits), yva), rel=1e-3)
    assert abs(np.log(t)) > 0.05 and _nll(logits, yva, t) < _nll(logits, yva, 1.0)  # T lowers val NLL
    scored = _scored(trained, data)
    other = run(_Stage(recipe, _data(test_labels_seed=1)))  # test's labels changed: the same T
    assert other.temperature == t
    fields = scoring.fields(scored, data["test"][1], t)
    assert fields["temperature"] == t and fields["ece_scaled"] is not None and fields["nll_scaled"] is not None
    assert np.all(scored.top5[:, 0] == _scored(other, data).top5[:, 0])
