"""oxford_pets over a miniature copy in torchvision's layout (fixtures/pets.py): the list files parsed as
torchvision parses them, labels (CLASS - 1, every image decodes to its own), the breeds' names, val held out of
trainval (10% per class), the official test list, and the errors for missing or bad files."""

from pathlib import Path

import conftest
import pytest
from fixtures import pets
from fixtures.imagenet import decode_class

from transfer_eval import tasks
from transfer_eval.errors import UserError
from transfer_eval.tasks import LoadContext


@pytest.fixture(scope="module")
def task():
    return tasks.discover()["oxford_pets"]


@pytest.fixture(scope="module")
def root(task, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pets")
    pets.write_pets(root, task.classes)
    return root


def split(task, root, name):
    return task.dataset(name, LoadContext(root))


def test_the_fixture_is_torchvisions_format_and_the_class_names_agree(task, root):
    from torchvision.datasets import OxfordIIITPet

    for name in ("trainval", "test"):
        ds = OxfordIIITPet(str(root), split=name)
        assert len(ds) == sum((pets.TRAINVAL if name == "trainval" else pets.TEST).values())
    assert OxfordIIITPet(str(root), split="trainval").classes == list(task.classes)  # all 37 breeds, in order
    assert task.num_classes == 37 and task.val_holdout == {"fraction": 0.1, "seed": 0}


def test_labels_images_and_ids(task, root):
    test = split(task, root, "test")
    assert sorted(test.labels.tolist()) == sorted(c for c, n in pets.TEST.items() for _ in range(n))
    assert [decode_class(test.image(i)) for i in range(len(test))] == test.labels.tolist()  # PNG, L, CMYK too
    assert all(i.startswith("images/") and i.endswith(".jpg") for i in test.ids)


def test_val_is_ten_percent_of_trainval_per_class_and_test_is_the_official_list(task, root):
    train, val, test = (split(task, root, s) for s in ("train", "val", "test"))
    full = [c for c, n in sorted(pets.TRAINVAL.items()) for _ in range(n)]
    # trainval.txt as the fixture wrote it, in its order: the images' ids (which image, not only which label)
    full_ids = [
        f"images/{pets.raw_name(task.classes[c])}_{100 + k}.jpg"
        for c, n in sorted(pets.TRAINVAL.items())
        for k in range(n)
    ]
    assert len(train) + len(val) == len(full)
    held = conftest.expected_holdout(full, 0.1, 0)
    assert val.ids == [full_ids[i] for i in held] and val.labels.tolist() == [full[i] for i in held]
    assert train.ids == [full_ids[i] for i in range(len(full)) if i not in set(held)]
    assert val.labels.tolist().count(5) == 2 and val.labels.tolist().count(30) == 1  # round(0.1 n)
    assert not set(val.ids) & set(train.ids) and not set(test.ids) & (set(train.ids) | set(val.ids))
    assert [decode_class(val.image(i)) for i in range(len(val))] == val.labels.tolist()


def test_missing_and_bad_files_are_one_clear_error(task, tmp_path):
    with pytest.raises(UserError, match="no oxford-iiit-pet/ under .*--download"):
        split(task, tmp_path, "test")
    top = pets.write_pets(tmp_path, task.classes)
    (top / "images" / "Abyssinian_1.jpg").unlink()
    with pytest.raises(UserError, match="images named by test.txt are missing, e.g. .*Abyssinian_1.jpg"):
        split(task, tmp_path, "test")
    lines = (top / "annotations" / "trainval.txt").read_text().replace(" 1 1 1\n", " 38 1 1\n", 1)
    (top / "annotations" / "trainval.txt").write_text(lines)
    with pytest.raises(UserError, match="class 38 outside 1..37"):
        split(task, tmp_path, "train")
    (top / "annotations" / "trainval.txt").write_text("Abyssinian_100 one\n")
    with pytest.raises(UserError, match="cannot read .*trainval.txt"):
        split(task, tmp_path, "train")
