"""ImageNet's other test sets (tasks/imagenet_shift.py, tasks/objectnet.py) over miniatures in the real layouts with
the real wnids and label sets (fixtures/imagenet_shift.py): each is a companion of imagenet1k whose keys stay as
they were; the labels (a wnid's ImageNet-1k index; ReaL's sets, scored as timm's RealLabelsImagenet scores them;
ObjectNet's mapped classes) and the images (ObjectNet's border cropped) are right; the 200-class and ObjectNet masks
hold through the real predict path; bad or missing data is refused in one line."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cli, stored_rows

from transfer_eval import tasks
from transfer_eval.errors import UserError
from transfer_eval.methods import companions, inference, scoring
from transfer_eval.tasks import ImageSplit, LoadContext

sys.path.insert(0, str(Path(__file__).parent.parent))
from fixtures import imagenet as F  # noqa: E402
from fixtures import imagenet_shift as S  # noqa: E402

SIZES = {
    "imagenet_real": 46_837,
    "imagenet_sketch": 50_889,
    "imagenet_a": 7_500,
    "imagenet_r": 30_000,
    "imagenet_a_clean": 10_000,
    "imagenet_r_clean": 10_000,
    "objectnet": 18_574,
}
FOLDER_SETS = {"imagenet_sketch": ("sketch", S.SKETCH), "imagenet_a": ("imagenet-a", S.A_SET)}
FOLDER_SETS["imagenet_r"] = ("imagenet-r", S.R_SET)


@pytest.fixture(scope="module")
def found():
    return tasks.discover()


@pytest.fixture(scope="module")
def data(tmp_path_factory, found) -> Path:
    """A data dir with ImageNet-1k val (torchvision's layout), Sketch, A, R and ObjectNet."""
    root = tmp_path_factory.mktemp("shift_data")
    S.write_val(root, "torchvision")
    for folder, images in FOLDER_SETS.values():
        S.write_wnid_set(root, folder, images)
    S.write_objectnet(root, S.objectnet_classes(found["objectnet"].scored_classes))
    return root


def load(found, name: str, root: Path) -> ImageSplit:
    return found[name].dataset("test", LoadContext(Path(root), verify=True))


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------------------------------------------
# The tasks: companions of imagenet1k, whose keys do not change


def test_every_set_is_a_companion_of_imagenet1k(found):
    in1k = found["imagenet1k"]
    for name, size in SIZES.items():
        t = found[name]
        assert name in in1k.companions and "imagenet1k" in t.companions, name
        assert companions.compatible(in1k, t) and companions.compatible(t, in1k), name
        assert t.num_classes == 1000 and t.classes == in1k.classes and t.version == 1
        assert t.sizes == {"train": 1_281_167, "test": size} and t.download is None
        assert t.description and t.data_help
    assert found["imagenet_a"].scored_classes == found["imagenet_a_clean"].scored_classes == tuple(S.A_INDICES)
    assert found["imagenet_r"].scored_classes == found["imagenet_r_clean"].scored_classes == tuple(S.R_INDICES)
    assert found["imagenet_real"].scored_classes is None and found["imagenet_sketch"].scored_classes is None
    scored = found["objectnet"].scored_classes
    assert list(scored) == sorted(set(scored)) and len(scored) == 125 and 0 <= scored[0] and scored[-1] < 1000
    # entries of ObjectNet 1.0's objectnet_to_imagenet_1k.json: "Alarm clock": "analog clock; digital clock",
    # "Backpack": "backpack, ...", "Banana": "banana"
    for name in ("analog clock", "digital clock", "backpack, back pack", "banana"):
        assert next(i for i, d in enumerate(S.DESCRIPTIONS) if d.startswith(name)) in scored, name


def test_imagenet1k_keys_are_unchanged_and_the_companions_share_its_protocol():
    """imagenet1k's task version and protocol hashes as the tree before these sets (lead, aebb5c1) planned them."""
    from transfer_eval.run import runner

    before = {
        "pretrained": "efc0736bbbc9c330",
        "linear": "1a10cb8efd6ed199",
        "knn": "6276b2d756ca3668",
        "attention": "e0675d3a22637520",
        "full": "9e3daece84957261",
    }
    runs = runner.plan_named(["vit_demo"], ["imagenet1k", *SIZES], list(before))
    for r in runs:
        assert r.task.version == 1 and r.protocol_hash == before[r.mode.name], (r.task.name, r.mode.name)
    assert len({r.key for r in runs}) == len(runs) == 8 * len(before)


# --------------------------------------------------------------------------------------------------------------
# ImageNet ReaL


def real_ids() -> list[str]:
    return [F.val_name(n) for n in sorted(S.VAL) if S.REAL[n - 1]]


def test_real_keeps_the_images_with_a_set_and_gives_their_sets(found, data, tmp_path):
    test = load(found, "imagenet_real", data)
    assert test.ids == real_ids() and len(test) == len(S.VAL) - 3  # numbers 1, 22 and 37: empty sets
    for i, sid in enumerate(test.ids):
        n = int(sid[15:23])
        assert [c for c in test.label_sets[i] if c >= 0] == S.REAL[n - 1], sid
        assert test.labels[i] == S.VAL[n] == F.decode_class(test.image(i))  # the val label, the file's image
    assert (test.label_sets[test.ids.index(F.val_name(26))] >= 0).sum() == 3
    S.write_val(tmp_path, "flat")  # the other layout: the same images, labels and sets
    assert load(found, "imagenet_real", tmp_path).manifest() == test.manifest()


def test_real_scores_as_timms_real_labels_imagenet(found, data):
    from timm.data import RealLabelsImagenet

    test = load(found, "imagenet_real", data)
    rng = np.random.default_rng(0)
    every = [F.val_name(n) for n in sorted(S.VAL)]  # the val images in order, the empty sets' among them
    top5 = {}
    for k, name in enumerate(every):
        right = S.REAL[int(name[15:23]) - 1]
        top5[name] = [int(p) for p in rng.permutation(1000) if p not in right][:5]  # all wrong
        if right and k % 3 != 2:  # some right at top-1, some at top-5 only, some wrong
            top5[name][0 if k % 3 == 0 else 4] = right[-1]
    scores = torch.zeros(len(every), 1000)
    for row, name in enumerate(every):
        scores[row, top5[name]] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    others = [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 50_001) if F.val_name(n) not in set(every)]
    timm_real = RealLabelsImagenet(every + others)  # its own package copy of the labels
    timm_real.add_result(scores)
    ours = inference.scores(inference.truth(test), np.array([top5[sid] for sid in test.ids]))
    assert ours["top1"] == pytest.approx(timm_real.get_accuracy(k=1) / 100)
    assert ours["top5"] == pytest.approx(timm_real.get_accuracy(k=5) / 100)
    assert 0 < ours["top1"] < ours["top5"] < 1 and ours["balanced_top1"] is None


def test_real_refuses_a_val_image_it_does_not_know(found, tmp_path):
    val = S.write_val(tmp_path, "torchvision")
    stray = val / S.WNIDS[6] / "ILSVRC2012_val_00050001.JPEG"
    stray.write_bytes(F.encode(6, "RGB"))
    with pytest.raises(UserError) as e:
        load(found, "imagenet_real", tmp_path)
    assert str(stray) in one_line(e) and "ILSVRC2012_val_00050000.JPEG" in str(e.value)


# --------------------------------------------------------------------------------------------------------------
# The -clean sets: val restricted to A's / R's 200 classes


@pytest.mark.parametrize("name, indices", [("imagenet_a_clean", S.A_INDICES), ("imagenet_r_clean", S.R_INDICES)])
def test_clean_sets_are_the_val_images_of_the_200_classes(found, data, name, indices):
    test = load(found, name, data)
    kept = [n for n in sorted(S.VAL) if S.VAL[n] in indices]
    assert 0 < len(kept) < len(S.VAL)  # the miniature has images on both sides
    assert test.ids == [F.val_name(n) for n in kept] and test.labels.tolist() == [S.VAL[n] for n in kept]
    assert test.label_sets is None


# --------------------------------------------------------------------------------------------------------------
# Sketch, A and R: a wnid's ImageNet-1k index


@pytest.mark.parametrize("name", list(FOLDER_SETS))
def test_folder_sets_label_each_image_with_its_wnids_imagenet_index(found, data, name):
    folder, images = FOLDER_SETS[name]
    test = load(found, name, data)
    assert Counter(test.labels.tolist()) == {S.WNIDS.index(w): n for w, n in images.items()}
    for i, path in enumerate(test.paths):
        wnid = Path(path).parent.name
        assert test.labels[i] == S.WNIDS.index(wnid) == F.decode_class(test.image(i)), path
        assert test.ids[i] == f"{wnid}/{Path(path).name}"
    assert not any(Path(p).name in ("README.txt", ".DS_Store") for p in test.paths)


@pytest.mark.parametrize(
    "name, folder, said",
    [
        ("imagenet_a", S.WNIDS[0], "not one of ImageNet-A's 200 classes"),  # tench: ImageNet-1k's, not A's
        ("imagenet_r", "n99999999", "not an ImageNet-1k class"),
        ("imagenet_sketch", "n00000001", "not an ImageNet-1k class"),
    ],
)
def test_a_folder_that_is_not_one_of_the_sets_classes_is_refused(found, tmp_path, name, folder, said):
    top = S.write_wnid_set(tmp_path, FOLDER_SETS[name][0], dict(list(FOLDER_SETS[name][1].items())[:1]))
    (top / folder).mkdir()
    with pytest.raises(UserError) as e:
        load(found, name, tmp_path)
    assert said in one_line(e) and str(top / folder) in str(e.value)


# --------------------------------------------------------------------------------------------------------------
# Masking: a model whose best classes lie outside the set still predicts inside it


class Constant(torch.nn.Module):
    """The same scores for every image: the five classes `outside` first, then the set's classes `inside` in their
    order."""

    def __init__(self, inside, outside):
        super().__init__()
        logits = torch.zeros(1000)
        logits[list(inside)[::-1]] = torch.arange(1, len(inside) + 1, dtype=torch.float32)
        logits[list(outside)] = torch.tensor([1000.0, 999, 998, 997, 996])
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.mean()


CFG = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}
CFG |= {"crop_pct": 1.0, "crop_mode": "center"}


@pytest.mark.parametrize("name", ["imagenet_a", "imagenet_r", "objectnet"])
def test_predictions_are_masked_to_the_sets_classes(found, data, name):
    task = found[name]
    inside = task.scored_classes
    outside = [c for c in range(1000) if c not in inside][:5]
    test = load(found, name, data)
    model = Constant(inside, outside)
    score = scoring.model_scorer(model, CFG, torch.device("cpu"), 256)  # how a run scores its test and companions
    top5 = score(test, task).top5
    assert top5.tolist() == [list(inside[:5])] * len(test)  # the set's five best, none of the model's
    plain = score(test, SimpleNamespace(name=name, scored_classes=None)).top5  # no mask: the model's own five
    assert plain.tolist() == [outside] * len(test)


# --------------------------------------------------------------------------------------------------------------
# ObjectNet: the border crop and the mapping


def test_objectnet_crops_the_border_and_keeps_the_mapped_classes(found, data):
    classes = S.objectnet_classes(found["objectnet"].scored_classes)
    test = load(found, "objectnet", data)
    assert Counter(sid.split("/")[0] for sid in test.ids) == {"thing_0": 2, "thing_112": 1}  # "battery" unmapped
    for i, sid in enumerate(test.ids):
        mapped = classes["Thing " + sid.split("/")[0][6:]]
        assert [c for c in test.label_sets[i] if c >= 0] == mapped and test.labels[i] == min(mapped)
        assert test.label_sets.shape[1] == 3
        img = test.image(i)
        assert np.array_equal(np.asarray(img), np.asarray(F.encode_rgb(mapped[0])))  # exactly the inside
        with ImageSplit.from_files([test.paths[i]], [0]).image(0) as whole:
            assert whole.size == (img.width + 4, img.height + 4) and whole.getpixel((0, 0)) == (255, 0, 0)
    # the crop keys the caches: the same files uncropped are other images
    from transfer_eval.input import image_cache

    plain = ImageSplit.from_files(test.paths, test.labels, test.ids, test.label_sets)
    assert test.edit and plain.edit is None and test.subset([0]).edit == test.edit
    assert test.files_signature() != plain.files_signature()
    assert image_cache.key(test, CFG) != image_cache.key(plain, CFG)


def test_objectnet_is_right_when_the_prediction_maps_to_the_images_class(found, data):
    classes = S.objectnet_classes(found["objectnet"].scored_classes)
    test = load(found, "objectnet", data)
    three, one = classes["Thing 0"], classes["Thing 112"]
    top5 = []
    for sid in test.ids:  # thing_0 (three ImageNet classes) twice, then thing_112
        top5.append([three[2], one[0], 0, 1, 2] if sid.startswith("thing_0/") else [three[1], 5, 6, 7, one[0]])
    right = [sid.startswith("thing_0/") for sid in test.ids]  # the testbed's rule: pred in folder_to_ids[folder]
    assert inference.hits(inference.truth(test), np.array(top5)).tolist() == right
    assert inference.hits(inference.truth(test), np.array(top5), 5).all()


@pytest.mark.parametrize("damage", ["stray folder", "unknown name", "one class less", "missing file"])
def test_objectnet_refuses_what_is_not_objectnet_1_0(found, tmp_path, damage):
    classes = S.objectnet_classes(found["objectnet"].scored_classes)
    mappings = tmp_path / "objectnet-1.0" / "mappings"
    if damage == "one class less":
        del classes["Thing 5"]
    images = S.write_objectnet(tmp_path, classes)
    said = {"stray folder": "not an ObjectNet class", "unknown name": "not one line of"}
    said |= {"one class less": "not ObjectNet 1.0's 113", "missing file": "imagenet_to_label_2012_v2 is missing"}
    if damage == "stray folder":
        (images / "not_a_class").mkdir()
    elif damage == "unknown name":  # an ImageNet name that imagenet_to_label_2012_v2 does not hold
        names = mappings / "objectnet_to_imagenet_1k.json"
        to_imagenet = json.loads(names.read_text())
        to_imagenet["Thing 112"] += " of sorts"
        names.write_text(json.dumps(to_imagenet, indent=2))
    elif damage == "missing file":
        (mappings / "imagenet_to_label_2012_v2").unlink()
    with pytest.raises(UserError) as e:
        load(found, "objectnet", tmp_path)
    assert said[damage] in one_line(e), str(e.value)


# --------------------------------------------------------------------------------------------------------------
# Missing data


@pytest.mark.parametrize(
    "name, said",
    [
        ("imagenet_real", "ILSVRC2012_devkit_t12.tar.gz"),
        ("imagenet_a_clean", "val/<wnid>/"),
        ("imagenet_sketch", "HaohanWang/ImageNet-Sketch"),
        ("imagenet_a", "imagenet-a.tar"),
        ("imagenet_r", "hendrycks/imagenet-r"),
        ("objectnet", "objectnet.dev"),
    ],
)
def test_missing_data_is_one_line_naming_layout_and_source(found, tmp_path, name, said):
    with pytest.raises(UserError) as e:
        load(found, name, tmp_path)
    assert said in one_line(e) and name in str(e.value) and str(tmp_path) in str(e.value)


@pytest.mark.slow
def test_cli_refuses_a_folder_that_is_not_an_imagenet_a_class(tmp_path):
    top = S.write_wnid_set(tmp_path / "data", "imagenet-a", S.A_SET)
    (top / "n99999999").mkdir()
    proc = cli(
        *("run", "-c", "vit_demo_shapes", "-t", "imagenet_a", "-m", "linear", "--device", "cpu"),
        *("--data-dir", tmp_path / "data", "--results", tmp_path / "r.sqlite"),
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "n99999999", "not an ImageNet-1k class")
    assert not (tmp_path / "r.sqlite").exists() or stored_rows(tmp_path / "r.sqlite") == 0
