"""ImageNet-1k and ImageNet-V2 tasks over miniature copies of the real folders (see fixtures/imagenet.py).

imagenet1k: its test split is the official val set in both layouts (torchvision's val/<wnid>/, checked against
torchvision's own ImageNet class; the flat folder with the devkit's meta.mat and ground truth, extracted or read
from the tarball, whose md5 is checked), labelled by the wnid's sorted rank and never by the ILSVRC2012_ID.

Covers the label rule (int(folder), never a rank: ImageFolder's string order and a rank among the folders
present are both shown to be wrong on the fixture), image decoding (every image encodes its class), both
layouts and all three variants, the errors for bad or missing folders, the ImageNet-1k train set behind train
and val (sorted-wnid indices, empty folders, the 1% hold-out, exactly 1000 folders), the listing cache, and the
CLI: pretrained evaluation of a local 1000-class checkpoint, the refusals of pretrained, linear with and
without ImageNet-1k train, and `data check`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import conftest
import numpy as np
import pytest
from conftest import assert_vit_recipe

from transfer_eval import tasks
from transfer_eval.errors import UserError
from transfer_eval.tasks import LoadContext

sys.path.insert(0, str(Path(__file__).parent.parent))
from fixtures import imagenet as F  # noqa: E402

MF = "imagenetv2_matched_frequency"
TASKS = {MF: "matched-frequency", "imagenetv2_threshold07": "threshold0.7", "imagenetv2_top_images": "top-images"}


@pytest.fixture(scope="session")
def found():
    return tasks.discover()


@pytest.fixture(scope="session")
def v2_root(tmp_path_factory) -> Path:
    """A data dir holding the matched-frequency fixture only (no ImageNet-1k train)."""
    root = tmp_path_factory.mktemp("v2_data")
    F.write_v2(root)
    return root


@pytest.fixture(scope="session")
def full_root(tmp_path_factory) -> Path:
    """A data dir holding the matched-frequency fixture and ImageNet-1k train."""
    root = tmp_path_factory.mktemp("v2_in1k_data")
    F.write_v2(root)
    F.write_in1k_train(root)
    return root


def load(found, split: str, root: Path, name: str = MF):
    return found[name].dataset(split, LoadContext(Path(root), verify=True))


def expected_holdout(labels: list[int], fraction: float = 0.01, seed: int = 0) -> list[int]:
    return conftest.expected_holdout(labels, fraction, seed)


# --------------------------------------------------------------------------------------------------------------
# The fixture itself is in the real format


def test_fixture_is_in_the_real_format(v2_root):
    top = v2_root / "imagenetv2-matched-frequency-format-val"
    folders = sorted(int(p.name) for p in top.iterdir() if p.is_dir())
    assert len(folders) >= 11 and folders != list(range(len(folders)))  # sparse, non-contiguous
    formats = Counter()
    for p in top.iterdir():
        if not p.is_dir():
            continue
        files = [f for f in p.iterdir() if not f.name.startswith(".")]
        assert 1 <= len(files) <= 3
        for f in files:
            assert re.fullmatch(r"[0-9a-f]{40}\.jpeg", f.name), f.name
            formats[F.image_format(f.read_bytes())] += 1
    assert formats[("JPEG", "L")] >= 1 and formats[("JPEG", "CMYK")] >= 1 and formats[("PNG", "RGB")] >= 1
    assert formats[("JPEG", "RGB")] >= 10
    assert sum(formats.values()) == F.V2_COUNT


# --------------------------------------------------------------------------------------------------------------
# Labels: int(folder name), never a rank


def test_every_label_is_its_folder_integer_and_every_image_decodes_to_it(found, v2_root):
    test = load(found, "test", v2_root)
    assert len(test) == F.V2_COUNT and test.labels.dtype == np.int64
    for i, path in enumerate(test.paths):
        folder = Path(path).parent.name
        assert int(test.labels[i]) == int(folder), path
        assert test.ids[i] == f"{folder}/{Path(path).name}"
        img = test.image(i)
        assert F.decode_class(img) == int(folder), path  # the file read is the one written in that folder
    assert Counter(test.labels.tolist()) == {c: len(v) for c, v in F.V2_IMAGES.items()}
    assert not any(Path(p).name.startswith(".") for p in test.paths)  # .DS_Store and ._* forks left out


def test_imagefolder_and_rank_labels_would_be_wrong_on_this_fixture(found, v2_root):
    """The fixture catches both pitfalls: ImageFolder's string order, and a rank among the folders present."""
    from torchvision.datasets import ImageFolder

    top = v2_root / "imagenetv2-matched-frequency-format-val"
    test = load(found, "test", v2_root)
    ours = dict(zip(map(os.path.normpath, test.paths), test.labels.tolist()))
    imagefolder = ImageFolder(str(top))  # the official README's loader (lists, decodes nothing)
    by_imagefolder = {
        os.path.normpath(p): t for p, t in imagefolder.samples if p in ours or os.path.normpath(p) in ours
    }
    assert set(by_imagefolder) == set(ours)
    wrong = [p for p in ours if by_imagefolder[p] != ours[p]]
    assert len(wrong) >= 10, wrong  # e.g. folder 10 -> 2, 100 -> 3, 2 -> 6, 998 -> 10
    assert imagefolder.class_to_idx["10"] == 2 and imagefolder.class_to_idx["2"] == 6
    present = sorted(F.V2_IMAGES)  # numeric rank among the folders present (timm's natural sort)
    rank = {c: present.index(c) for c in present}
    assert sum(rank[y] != y for y in test.labels.tolist()) >= 10


def test_removing_folders_does_not_change_other_labels(found, v2_root, tmp_path):
    full = load(found, "test", v2_root)
    shutil.copytree(
        v2_root / "imagenetv2-matched-frequency-format-val", tmp_path / "imagenetv2-matched-frequency-format-val"
    )
    removed = {0, 3, 100, 998}
    for c in removed:
        shutil.rmtree(tmp_path / "imagenetv2-matched-frequency-format-val" / str(c))
    part = load(found, "test", tmp_path)
    before = dict(zip(full.ids, full.labels.tolist()))
    assert set(part.ids) == {i for i, y in before.items() if y not in removed}
    assert all(before[i] == y for i, y in zip(part.ids, part.labels.tolist()))


@pytest.mark.parametrize("name", ["imagenetv2_threshold07", "imagenetv2_top_images"])
def test_other_variants_are_found(found, tmp_path, name):
    variant = TASKS[name]
    images = F.OTHER_VARIANTS[variant]
    F.write_v2(tmp_path, variant, images, old_names=True)  # the older 0.jpeg..9.jpeg names
    test = load(found, "test", tmp_path, name)
    assert Counter(test.labels.tolist()) == {c: len(v) for c, v in images.items()}
    for i, path in enumerate(test.paths):
        assert Path(path).parent.parent.name == f"imagenetv2-{variant}-format-val"
        assert re.fullmatch(r"\d\.jpeg", Path(path).name)
        assert int(test.labels[i]) == int(Path(path).parent.name) == F.decode_class(test.image(i))
    with pytest.raises(UserError):  # only that variant is there
        load(found, "test", tmp_path, MF)


def test_any_image_extension_is_read(found, tmp_path):
    top = F.write_v2(tmp_path, images={4: ["RGB"], 40: ["PNG"]}, old_names=True)
    (top / "4" / "0.jpeg").rename(top / "4" / "0.JPG")
    (top / "40" / "0.jpeg").rename(top / "40" / "0.png")
    (top / "40" / "notes.txt").write_text("not an image")
    test = load(found, "test", tmp_path)
    assert test.ids == ["4/0.JPG", "40/0.png"] and test.labels.tolist() == [4, 40]


def test_imagenetv2_subfolder_layout_is_accepted(found, v2_root, tmp_path):
    shutil.copytree(
        v2_root / "imagenetv2-matched-frequency-format-val",
        tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val",
    )
    a, b = load(found, "test", v2_root), load(found, "test", tmp_path)
    assert a.ids == b.ids and a.labels.tolist() == b.labels.tolist() and a.manifest() == b.manifest()
    assert all(str(tmp_path / "imagenetv2") in p for p in b.paths)


@pytest.mark.parametrize("bad", ["n01440764", "1000", "class_3", "-1"])
def test_a_folder_that_is_not_a_class_index_is_a_user_error(found, tmp_path, bad):
    top = F.write_v2(tmp_path, images={0: ["RGB"], 7: ["RGB"]})
    (top / bad).mkdir()
    with pytest.raises(UserError) as e:
        load(found, "test", tmp_path)
    assert str(top / bad) in str(e.value) and MF in str(e.value) and "0..999" in str(e.value)


def test_two_folders_of_one_class_are_a_user_error(found, tmp_path):
    top = F.write_v2(tmp_path, images={7: ["RGB"], 8: ["RGB"]})
    (top / "007").mkdir()
    with pytest.raises(UserError) as e:
        load(found, "test", tmp_path)
    assert str(top / "007") in str(e.value) and "class 7" in str(e.value)


@pytest.mark.parametrize("name", list(TASKS))
def test_missing_folder_names_task_path_and_source(found, tmp_path, name):
    with pytest.raises(UserError) as e:
        load(found, "test", tmp_path, name)
    msg = str(e.value)
    assert "\n" not in msg
    assert name in msg and str(tmp_path) in msg and "vaishaal/ImageNetV2" in msg
    assert f"imagenetv2-{TASKS[name]}-format-val" in msg and f"imagenetv2-{TASKS[name]}.tar.gz" in msg


def test_task_definitions(found):
    for name, variant in TASKS.items():
        t = found[name]
        assert t.num_classes == 1000 and t.splits == ("train", "val", "test") and t.version == 1
        assert t.val_holdout == {"fraction": 0.01, "seed": 0}
        assert t.download is None
        assert f"imagenetv2-{variant}.tar.gz" in t.data_help and "vaishaal/ImageNetV2" in t.data_help
        assert "DATA/imagenet/train" in t.data_help
        assert t.recipes["pretrained"] == {}
        assert_vit_recipe(t, steps=20000, warmup=500, lr_grid=(0.003, 0.01, 0.03, 0.06))
        with pytest.raises(UserError, match="vaishaal/ImageNetV2"):
            t.fetch(LoadContext(Path("unused")))
    classes = found[MF].classes  # ImageNet-1k names from timm's bundled ImageNetInfo files
    assert classes is not None and len(classes) == 1000
    assert classes[0].startswith("tench") and classes[1].startswith("goldfish")
    from timm.data import ImageNetInfo

    assert list(classes) == ImageNetInfo("imagenet-1k").label_descriptions()
    t = found["imagenet1k"]  # the same training set and minival; its own test
    assert t.num_classes == 1000 and t.splits == ("train", "val", "test") and t.classes == classes
    assert t.val_holdout == {"fraction": 0.01, "seed": 0} and t.download is None
    assert "ILSVRC2012_devkit_t12.tar.gz" in t.data_help and "DATA/imagenet" in t.data_help
    assert_vit_recipe(t, steps=20000, warmup=500, lr_grid=(0.003, 0.01, 0.03, 0.06))


# --------------------------------------------------------------------------------------------------------------
# ImageNet-1k train behind train and val


def test_in1k_fixture_is_in_torchvision_layout(full_root):
    train = full_root / "imagenet" / "train"
    folders = sorted(p.name for p in train.iterdir())
    assert folders == F.FAKE_WNIDS and all(re.fullmatch(r"n\d{8}", w) for w in folders)
    for idx in (0, 999):
        assert len(list((train / F.FAKE_WNIDS[idx]).iterdir())) == F.IN1K_COUNTS[idx]
    assert sum(1 for p in train.iterdir() if any(p.iterdir())) == len(F.IN1K_COUNTS)


def test_in1k_labels_are_sorted_wnid_ranks_and_empty_folders_keep_theirs(found, full_root):
    train, val = load(found, "train", full_root), load(found, "val", full_root)
    assert not set(train.ids) & set(val.ids)
    assert len(train) + len(val) == sum(F.IN1K_COUNTS.values())
    for split in (train, val):
        for i, path in enumerate(split.paths):
            wnid = Path(path).parent.name
            assert int(split.labels[i]) == F.FAKE_WNIDS.index(wnid), path
            assert split.ids[i] == f"{wnid}/{Path(path).name}"
    # ~988 folders are empty; ranking only the non-empty ones would give 0..11
    assert Counter(train.labels.tolist()) + Counter(val.labels.tolist()) == F.IN1K_COUNTS
    # the images themselves (CMYK, grayscale and a PNG behind .JPEG among them) decode to their class
    for split in (val, train.subset([i for i in range(len(train)) if train.labels[i] != 321])):
        for i in range(len(split)):
            assert F.decode_class(split.image(i)) == int(split.labels[i])


def test_in1k_val_is_the_one_percent_holdout(found, full_root):
    train, val = load(found, "train", full_root), load(found, "val", full_root)
    assert Counter(val.labels.tolist()) == {c: n for c, n in F.IN1K_VAL_COUNTS.items() if n}
    # every file in listing order (class index, then file name), then the documented rule over it
    listing = [
        (idx, f"{F.FAKE_WNIDS[idx]}/{F.FAKE_WNIDS[idx]}_{1000 + 37 * n}.JPEG")
        for idx in sorted(F.IN1K_COUNTS)
        for n in range(F.IN1K_COUNTS[idx])
    ]
    held = expected_holdout([y for y, _ in listing])
    assert val.ids == [listing[i][1] for i in held]
    assert train.ids == [sid for i, (_, sid) in enumerate(listing) if i not in set(held)]
    assert load(found, "val", full_root).manifest() == val.manifest()  # deterministic


def test_in1k_needs_exactly_1000_wnid_folders(found, tmp_path):
    counts = {0: 2, 998: 2}
    F.write_in1k_train(tmp_path, counts, F.FAKE_WNIDS[:999])
    with pytest.raises(UserError) as e:
        load(found, "train", tmp_path)
    msg = str(e.value)
    assert "999" in msg and "1000" in msg and "shift" in msg and str(tmp_path / "imagenet" / "train") in msg
    (tmp_path / "imagenet" / "train" / F.FAKE_WNIDS[999]).mkdir()  # the 1000th, empty: fine
    assert load(found, "train", tmp_path).labels.tolist() == [0, 998]
    (tmp_path / "imagenet" / "train" / "extra").mkdir()
    with pytest.raises(UserError) as e:
        load(found, "val", tmp_path)
    assert str(tmp_path / "imagenet" / "train" / "extra") in str(e.value)


def test_missing_in1k_train_is_a_user_error_test_still_loads(found, v2_root):
    for split in ("train", "val"):
        with pytest.raises(UserError) as e:
            load(found, split, v2_root)
        msg = str(e.value)
        assert str(v2_root / "imagenet" / "train") in msg and "-m pretrained" in msg and MF in msg
        assert "linear/attention/full" in msg
    assert len(load(found, "test", v2_root)) == F.V2_COUNT


def test_listing_is_cached_and_refreshed_when_a_folder_changes(found, full_root, v2_root, tmp_path, monkeypatch):
    from transfer_eval.tasks import imagenet_shared as g  # the listing every ImageNet plugin shares

    listed = []
    real = g.images_in
    monkeypatch.setattr(g, "images_in", lambda folder: listed.append(folder) or real(folder))
    g.walk.cache_clear()
    g._split_in1k.cache_clear()
    for split in ("train", "val", "train", "val"):
        load(found, split, full_root)
    assert len(listed) == 1000  # each class folder listed once, for both splits and repeated loads
    shutil.copytree(
        v2_root / "imagenetv2-matched-frequency-format-val", tmp_path / "imagenetv2-matched-frequency-format-val"
    )
    before = load(found, "test", tmp_path)
    extra = tmp_path / "imagenetv2-matched-frequency-format-val" / "101" / ("f" * 40 + ".jpeg")
    extra.write_bytes(F.encode(101, "RGB"))
    after = load(found, "test", tmp_path)
    assert len(after) == len(before) + 1 and f"101/{extra.name}" in after.ids


# --------------------------------------------------------------------------------------------------------------
# imagenet1k: ImageNet-1k train (less its minival) and the official val set as test

IN1K = "imagenet1k"


def in1k_test(found, root: Path, verify: bool = False):
    return found[IN1K].dataset("test", LoadContext(Path(root), verify=verify))


@pytest.mark.parametrize("layout, devkit", [("flat", "folder"), ("flat", "tar"), ("torchvision", None)])
def test_in1k_val_labels_are_sorted_wnid_ranks_in_every_layout(found, tmp_path, layout, devkit):
    F.write_in1k_val(tmp_path, layout, devkit)
    split = in1k_test(found, tmp_path)
    assert split.ids == [F.val_name(n) for n in range(1, len(F.IN1K_VAL) + 1)]  # file names, in val order
    assert list(split.labels) == F.IN1K_VAL
    assert [F.decode_class(split.image(i)) for i in range(len(split))] == F.IN1K_VAL  # every image is its label
    # the ILSVRC2012_ID - 1 (the devkit's own numbering) would be wrong on every image here
    assert all(F.ILSVRC_ID[c] - 1 != c for c in F.IN1K_VAL)


def test_in1k_val_layouts_give_one_manifest(found, tmp_path):
    manifests = set()
    for i, (layout, devkit) in enumerate([("flat", "folder"), ("flat", "tar"), ("torchvision", None)]):
        F.write_in1k_val(tmp_path / str(i), layout, devkit)
        manifests.add(in1k_test(found, tmp_path / str(i)).manifest())
    assert len(manifests) == 1  # results measured on either layout compare


def test_in1k_torchvision_layout_agrees_with_torchvision(found, tmp_path):
    """torchvision's ImageNet(split="val") over the same folders (with the meta.bin it writes from the devkit)
    gives the same label for every image."""
    import torch
    from torchvision.datasets import ImageNet

    val = F.write_in1k_val(tmp_path, "torchvision")
    wnid_to_classes = {w: (f"class {r}",) for r, w in enumerate(F.FAKE_WNIDS)}
    torch.save((wnid_to_classes, [F.FAKE_WNIDS[c] for c in F.IN1K_VAL]), val.parent / "meta.bin")
    theirs = {Path(p).name: y for p, y in ImageNet(str(val.parent), split="val", allow_empty=True).samples}
    ours = in1k_test(found, tmp_path)
    assert dict(zip(ours.ids, ours.labels)) == theirs


def test_in1k_devkit_tarball_md5_is_checked(found, tmp_path):
    F.write_in1k_val(tmp_path, "flat", "tar")
    with pytest.raises(UserError, match="md5 of the official devkit.*--skip-verify"):
        in1k_test(found, tmp_path, verify=True)
    assert len(in1k_test(found, tmp_path, verify=False)) == len(F.IN1K_VAL)


def test_in1k_train_and_val_are_the_training_set_and_its_minival(found, tmp_path):
    F.write_in1k_train(tmp_path)
    F.write_in1k_val(tmp_path)
    ctx = LoadContext(tmp_path, verify=False)
    train, val = found[IN1K].dataset("train", ctx), found[IN1K].dataset("val", ctx)
    assert len(train) + len(val) == sum(F.IN1K_COUNTS.values())
    assert Counter(val.labels.tolist()) == Counter({c: n for c, n in F.IN1K_VAL_COUNTS.items() if n})
    assert not set(val.ids) & set(in1k_test(found, tmp_path).ids)


@pytest.mark.parametrize(
    "damage, said",
    [
        ("nothing", "needs the ImageNet-1k val images"),
        ("no devkit", "needs the ImageNet-1k val images"),
        ("both layouts", "both wnid folders and loose images"),
        ("stray name", "is not an official val image name"),
        ("bad id", "outside 1..1000"),
        ("few folders", "exactly the 1000 wnid folders"),
    ],
)
def test_in1k_val_errors_say_what_is_wrong(found, tmp_path, damage, said):
    if damage != "nothing":
        val = F.write_in1k_val(tmp_path, "torchvision" if damage == "few folders" else "flat")
    if damage == "no devkit":
        shutil.rmtree(tmp_path / "imagenet" / "ILSVRC2012_devkit_t12")
    elif damage == "both layouts":
        (val / F.FAKE_WNIDS[0]).mkdir()
    elif damage == "stray name":
        (val / "ILSVRC2012_val_00099999.JPEG").write_bytes(F.encode(1, "RGB"))
    elif damage == "bad id":
        truth = tmp_path / "imagenet" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
        truth.write_text(truth.read_text().replace(f"{F.ILSVRC_ID[0]}\n", "1001\n", 1))
    elif damage == "few folders":
        shutil.rmtree(val / F.FAKE_WNIDS[5])
    with pytest.raises(UserError, match=re.escape(said)):
        in1k_test(found, tmp_path)


# --------------------------------------------------------------------------------------------------------------
# Through the CLI


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return conftest.cli(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})


def one_error_line(proc) -> str:
    """Exit 2, one `transfer-eval: error:` line, said last, no traceback, nothing on stdout. (The refusals of
    the pretrained mode come from runner.execute, after the run's "[1/1] ... running" progress line.)"""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("transfer-eval: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return errors[0]


TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
TOP5 = [998, 500, 2, 250, 777]  # the tiny model's fixed ranking: its head has zero weights and these biases


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Path:
    """tiny1k: a local tiny ViT whose state dict holds a 1000-class head (predicting TOP5 for every image);
    tiny10: the same with a 10-class head."""
    import timm
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("registry")
    for name, classes in (("tiny1k", 1000), ("tiny10", 10)):
        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=classes, **TINY)
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.zero_()
            if classes == 1000:
                for r, c in enumerate(TOP5):
                    model.head.bias[c] = 10.0 - r
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / f"{name}.safetensors"))
    text = ""
    for name in ("tiny1k", "tiny10"):
        text += (
            f"{name}:\n  model: vit_small_patch16_224\n  weights: {folder / (name + '.safetensors')}\n"
            f"  model_args: {json.dumps(TINY)}\n"
            f"  data_config: {{mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], crop_pct: 1.0}}\n"
            f"  pretraining: test fixture\n"
        )
    (folder / "registry.yaml").write_text(text)
    return folder / "registry.yaml"


@pytest.mark.slow
def test_cli_pretrained_evaluates_the_checkpoints_own_head(registry, v2_root, tmp_path):
    db = tmp_path / "results.sqlite"
    out = cli(
        "run",
        "--registry",
        registry,
        "-c",
        "tiny1k",
        "-t",
        MF,
        "-m",
        "pretrained",
        "--device",
        "cpu",
        "--data-dir",
        v2_root,
        "--results",
        db,
        "--json",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1
    r = rows[0]
    assert r["status"] == "ok" and r["mode"] == "pretrained" and r["task"] == MF
    assert r["n_test"] == F.V2_COUNT
    assert r["train_seconds"] == 0 and r["params_per_task"] == 0
    # the head was kept (a zeroed one would predict class 0) and the labels are the folder integers
    labels = [c for c, v in F.V2_IMAGES.items() for _ in v]
    assert r["top1"] == pytest.approx(labels.count(998) / F.V2_COUNT)
    assert r["top5"] == pytest.approx(sum(y in TOP5 for y in labels) / F.V2_COUNT)


@pytest.mark.slow
def test_cli_pretrained_refuses_random_weights(v2_root, tmp_path):
    out = cli(
        "run",
        "-c",
        "vit_demo",
        "-t",
        MF,
        "-m",
        "pretrained",
        "--device",
        "cpu",
        "--data-dir",
        v2_root,
        "--results",
        tmp_path / "r.sqlite",
        "--json",
        cwd=tmp_path,
    )
    assert "random weights" in one_error_line(out)
    assert out.stdout == ""


@pytest.mark.slow
def test_cli_pretrained_refuses_a_10_class_head(registry, v2_root, tmp_path):
    out = cli(
        "run",
        "--registry",
        registry,
        "-c",
        "tiny10",
        "-t",
        MF,
        "-m",
        "pretrained",
        "--device",
        "cpu",
        "--data-dir",
        v2_root,
        "--results",
        tmp_path / "r.sqlite",
        "--json",
        cwd=tmp_path,
    )
    line = one_error_line(out)
    assert "10 classes" in line and "1000-class head" in line


@pytest.mark.slow
def test_cli_linear_without_in1k_train_names_the_path(v2_root, tmp_path):
    out = cli(
        "run",
        "-c",
        "vit_demo",
        "-t",
        MF,
        "-m",
        "linear",
        "--device",
        "cpu",
        "--data-dir",
        v2_root,
        "--results",
        tmp_path / "r.sqlite",
        "--json",
        cwd=tmp_path,
    )
    line = one_error_line(out)
    assert str(v2_root / "imagenet" / "train") in line and "-m pretrained" in line


@pytest.mark.slow
def test_cli_linear_with_in1k_train(tmp_path):
    full_root = tmp_path / "data"  # the matched-frequency fixture, and train images of each of its classes
    F.write_v2(full_root)  # (a test class without training images is refused: Task.check_classes)
    F.write_in1k_train(full_root, {**F.IN1K_COUNTS, **{c: 2 for c in F.V2_IMAGES if c not in F.IN1K_COUNTS}})
    out = cli(
        "run",
        "-c",
        "vit_demo",
        "-t",
        MF,
        "-m",
        "linear",
        "--device",
        "cpu",
        "--data-dir",
        full_root,
        "--results",
        tmp_path / "r.sqlite",
        "--json",
        "--set",
        "c_grid=[1.0]",
        cwd=tmp_path,
    )  # one C: fast
    assert out.returncode == 0, out.stderr
    (r,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert r["status"] == "ok" and r["n_test"] == F.V2_COUNT
    assert r["val_holdout"] == {"fraction": 0.01, "seed": 0}
    assert 0.0 <= r["top1"] <= r["top5"] <= 1.0 and r["val_top1"] is not None


@pytest.mark.slow
def test_cli_data_check(v2_root, tmp_path):
    out = cli("data", "check", MF, "--data-dir", v2_root, "--json", cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # not ready for the training modes
    rows = {r["split"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert rows["test"]["status"] == "ok" and rows["test"]["images"] == F.V2_COUNT
    assert rows["test"]["classes"] == len(F.V2_IMAGES)
    for split in ("train", "val"):
        assert rows[split]["status"] == "missing"
        assert str(v2_root / "imagenet" / "train") in rows[split]["detail"]


@pytest.mark.slow
def test_cli_pretrained_scores_a_head_on_the_official_val_set(registry, tmp_path):
    F.write_in1k_val(tmp_path / "data")
    out = cli(
        *("run", "--registry", registry, "-c", "tiny1k", "-t", IN1K, "-m", "pretrained", "--device", "cpu"),
        *("--data-dir", tmp_path / "data", "--results", tmp_path / "r.sqlite", "--json", "--skip-verify"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    (r,) = conftest.json_lines(out.stdout)
    assert r["n_test"] == len(F.IN1K_VAL) and "not the official 50000" in out.stderr
    assert r["top1"] == pytest.approx(F.IN1K_VAL.count(998) / len(F.IN1K_VAL))
    assert r["top5"] == pytest.approx(sum(y in TOP5 for y in F.IN1K_VAL) / len(F.IN1K_VAL))
