"""What test is scored against: one label per image, or a set of right answers (ImageNet ReaL, ObjectNet), and the
class mask of the sets that cover part of a model's classes (ImageNet-A and -R); stored probabilities."""

import numpy as np
import torch

from transfer_eval.methods import inference
from transfer_eval.store.results import PROBS, Result, Store
from transfer_eval.tasks import ImageSplit


def test_hits_with_labels_and_with_label_sets():
    top = np.array([[3, 1, 2, -1, -1], [0, 4, 1, 2, 3], [2, 0, 1, 3, 4]])
    labels = np.array([3, 1, 9])
    assert inference.hits(labels, top).tolist() == [True, False, False]
    assert inference.hits(labels, top, 5).tolist() == [True, True, False]
    # sets padded with -1: a -1 in the predictions (fewer than 5 classes) never meets the padding
    sets = np.array([[1, 3, -1], [4, -1, -1], [-1, -1, -1]])
    assert inference.hits(sets, top).tolist() == [True, False, False]
    assert inference.hits(sets, top, 2).tolist() == [True, True, False]
    s = inference.scores(sets, top)
    assert (s["top1"], s["top5"], s["balanced_top1"]) == (1 / 3, 2 / 3, None)
    s = inference.scores(labels, top)
    assert (s["top1"], s["top5"]) == (1 / 3, 2 / 3) and s["balanced_top1"] == (1 + 0 + 0) / 3


def test_restrict_predicts_inside_the_classes_only():
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 2.0, 0.5, 7.0], [0.0, 8.0, 1.0, 2.0, 3.0, 4.0, 6.0]])
    keep = (2, 3, 4, 5, 6)  # class 0 (row 0's best) and 1 (row 1's best) are outside the set
    top = inference.topk(inference.restrict(scores, keep))
    assert top.tolist() == [[6, 2, 3, 4, 5], [6, 5, 4, 3, 2]]
    assert inference.topk(inference.restrict(scores, None)).tolist()[0][:2] == [0, 6]


def test_label_sets_follow_subsets_and_change_the_manifest():
    sets = np.array([[1, 2], [0, -1], [2, -1], [1, -1]])
    split = ImageSplit(lambda i: None, [1, 0, 2, 1], ids=list("abcd"), label_sets=sets)
    plain = ImageSplit(lambda i: None, [1, 0, 2, 1], ids=list("abcd"))
    assert split.manifest() != plain.manifest()
    sub = split.subset([3, 0])
    assert sub.label_sets.tolist() == [[1, -1], [1, 2]] and inference.truth(sub) is sub.label_sets
    assert inference.truth(plain) is plain.labels
    both = ImageSplit.concat(sub, ImageSplit(lambda i: None, [0], ids=["e"], label_sets=np.array([[0, 1, 2]])))
    assert both.label_sets.tolist() == [[1, -1, -1], [1, 2, -1], [0, 1, 2]]


def test_probabilities_are_stored_beside_the_predictions(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    r = Result("c", "w", "t", 1, "linear", "p", 0, top1=0.5)
    probs = np.array([[0.5, 0.2, 0.1, 0.1, 0.05, 0.5], [0.6, 0.3, 0.05, 0.03, 0.02, 0.3]])
    rid = store.put(r, np.array([0, 1]), np.array([[0, 1, 2, 3, 4], [2, 1, 0, 3, 4]]), probs)
    got = store.probabilities(rid)
    assert got.dtype == np.float16 and got.shape == (2, len(PROBS))
    assert np.allclose(got, probs, atol=1e-3)
    other = Store(tmp_path / "o.sqlite")
    store.copy_to(other)
    assert np.array_equal(other.probabilities(other.query()[0].run_id), got)
    r2 = Result("c", "w", "t", 1, "fewshot", "p", 0, top1=0.5)  # a mode without probabilities
    assert store.probabilities(store.put(r2, np.array([0]), np.array([[0, 1, 2, 3, 4]]))) is None


def test_ece_by_hand():
    from transfer_eval.methods import calibration

    # bins of width 1/15: 0.05 -> bin 0, 0.5 -> bin 7 ((7/15, 8/15]), 0.9 -> 13, 0.95 and 1.0 -> 14
    conf = np.array([0.05, 0.5, 0.5, 0.9, 0.95, 1.0])
    right = np.array([0, 1, 0, 1, 1, 1])
    by_hand = (1 * abs(0 - 0.05) + 2 * abs(0.5 - 0.5) + 1 * abs(1 - 0.9) + 2 * abs(1 - 0.975)) / 6
    assert abs(calibration.ece(conf, right) - by_hand) < 1e-12
    r = calibration.reliability(conf, right)
    assert r["count"].tolist() == [1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 2]
    assert calibration.bin_index(np.array([0.0, 1 / 15, 1 / 15 + 1e-9])).tolist() == [0, 0, 1]


def test_temperature_lowers_val_nll():
    from transfer_eval.methods import calibration

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (400,), generator=g)
    logits = torch.randn(400, 10, generator=g)
    logits[torch.arange(400), labels] += 2.0
    sharp = logits * 5  # over-confident: the fitted T softens it
    t = calibration.fit_temperature(sharp, labels)
    before = calibration.nll(torch.softmax(sharp, 1)[torch.arange(400), labels].numpy())
    after = calibration.nll(torch.softmax(sharp / t, 1)[torch.arange(400), labels].numpy())
    assert t > 2 and after < before
    grid = [calibration._nll_at(sharp, labels, x) for x in (t * 0.9, t, t * 1.1)]
    assert grid[1] <= min(grid[0], grid[2])
