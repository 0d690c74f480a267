"""Miniature CIFAR-10 / CIFAR-100 folders in the exact on-disk format of the official Python releases.

The official files were pickled by Python 2 (protocol 2): their str keys and values are byte strings
(SHORT_BINSTRING / BINSTRING opcodes), so they load as str under `encoding="latin1"` (what torchvision does) and
as bytes under `encoding="bytes"` (the snippet on the CIFAR website). A plain Python 3 pickle would load as str
under any encoding, so `Py2Pickler` writes str and bytes the Python 2 way, and numpy's `_reconstruct` under its
Python 2 module name.

Every image encodes where it came from, so a test can check that sample i decodes to the image written for it:
the R, G and B planes are filled with values in disjoint ranges derived from (split, index, label), and one marker
pixel at row MARK_ROW, column MARK_COL of the R plane is 255 (it proves the planes are 32x32 row-major).
"""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MARK_ROW, MARK_COL = 2, 5

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Train images per class (all five batches together), chosen so the 10% hold-out hits each rounding case:
# round(0.1 * n) for n = 10..20 gives 1 or 2; n = 8, 3, 2 round to 0 or 1 and are lifted to 1; n = 1 holds none.
CIFAR10_TRAIN_COUNTS = [10, 12, 14, 16, 18, 20, 8, 3, 2, 1]
CIFAR10_VAL_COUNTS = [1, 1, 1, 2, 2, 2, 1, 1, 1, 0]  # written out by hand: the expectation, not a computation
CIFAR10_TEST_PER_CLASS = 3

CIFAR100_FINE_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2").split()
assert len(CIFAR100_FINE_NAMES) == 100 and len(CIFAR100_COARSE_NAMES) == 20
# Fine classes present in the fixture (most >= 20, so coarse labels, 0..19, could never pass for them), with
# their train counts and the hand-computed val counts.
CIFAR100_TRAIN_COUNTS = {3: 5, 21: 12, 42: 16, 57: 2, 64: 8, 77: 20, 88: 1, 99: 15}
CIFAR100_VAL_COUNTS = {3: 1, 21: 1, 42: 2, 57: 1, 64: 1, 77: 2, 88: 0, 99: 2}
CIFAR100_TEST_PER_CLASS = 2


def coarse_of(fine: int) -> int:
    """A made-up fine -> coarse mapping (the real one is irrelevant: torchvision never exposes coarse labels)."""
    return (fine * 7 + 3) % 20


# --------------------------------------------------------------------------------------------------------------
# Python-2-style pickles


def _reconstruct():
    return np.zeros(0).__reduce__()[0]  # numpy's multiarray._reconstruct, wherever this numpy keeps it


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: str and bytes as byte strings, numpy under `numpy.core.multiarray`."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is _reconstruct():
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf).dump(obj)
    return buf.getvalue()


def write_py2_pickle(path: Path, obj) -> None:
    path.write_bytes(py2_dumps(obj))


# --------------------------------------------------------------------------------------------------------------
# Images


def colour(split: str, index: int, label: int) -> tuple[int, int, int]:
    """The (R, G, B) every pixel of one image has (except the marker), in disjoint ranges so a swap of planes
    shows: R = 10 + label (10..109), G = 110 + index % 100 (110..209), B = 215 + index // 100 (+20 for test)."""
    assert 0 <= label < 100 and 0 <= index < 2000
    return 10 + label, 110 + index % 100, 215 + index // 100 + (20 if split == "test" else 0)


def image_rows(split: str, first_index: int, labels: list[int]) -> np.ndarray:
    """(N, 3072) uint8 rows, R(1024) | G(1024) | B(1024), each plane 32x32 row-major."""
    rows = np.empty((len(labels), 3, 32, 32), np.uint8)
    for k, label in enumerate(labels):
        r, g, b = colour(split, first_index + k, label)
        rows[k, 0], rows[k, 1], rows[k, 2] = r, g, b
        rows[k, 0, MARK_ROW, MARK_COL] = 255
    return rows.reshape(len(labels), 3072)


def _shuffled(counts: dict[int, int], seed: int) -> list[int]:
    labels = np.repeat(np.array(list(counts), np.int64), list(counts.values()))
    return np.random.default_rng(seed).permutation(labels).tolist()  # Python ints, as in the real files


# --------------------------------------------------------------------------------------------------------------
# Folders


@dataclass
class Written:
    """What a fixture folder holds: the data root to pass as --data-dir, and the labels in official order."""

    root: Path
    folder: Path  # root / cifar-10-batches-py or root / cifar-100-python
    train_labels: list[int]
    test_labels: list[int]
    batch_sizes: list[int]  # CIFAR-10: images per data_batch_k; CIFAR-100: [len(train)]


def write_cifar10(root: Path) -> Written:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = _shuffled(dict(enumerate(CIFAR10_TRAIN_COUNTS)), seed=1)
    test = _shuffled({c: CIFAR10_TEST_PER_CLASS for c in range(10)}, seed=2)
    batches = [b.tolist() for b in np.array_split(np.array(train), 5)]  # 5 batches of uneven sizes, like shards
    start = 0
    for k, labels in enumerate(batches, 1):
        labels = [int(x) for x in labels]
        write_py2_pickle(folder / f"data_batch_{k}", {
            "batch_label": f"training batch {k} of 5",
            "labels": labels,
            "data": image_rows("train", start, labels),
            "filenames": [f"{CIFAR10_NAMES[y]}_s_{start + i:06d}.png" for i, y in enumerate(labels)],
        })
        start += len(labels)
    write_py2_pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1",
        "labels": test,
        "data": image_rows("test", 0, test),
        "filenames": [f"{CIFAR10_NAMES[y]}_s_{i:06d}.png" for i, y in enumerate(test)],
    })
    write_py2_pickle(folder / "batches.meta", {
        "num_cases_per_batch": 10000, "label_names": list(CIFAR10_NAMES), "num_vis": 3072})
    (folder / "readme.html").write_text("<meta HTTP-EQUIV=\"REFRESH\" content=\"0; "
                                        "url=http://www.cs.toronto.edu/~kriz/cifar.html\">\n")
    return Written(root, folder, train, test, [len(b) for b in batches])


def write_cifar100(root: Path) -> Written:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train = _shuffled(CIFAR100_TRAIN_COUNTS, seed=3)
    test = _shuffled({c: CIFAR100_TEST_PER_CLASS for c in CIFAR100_TRAIN_COUNTS}, seed=4)
    for name, labels, split in (("train", train, "train"), ("test", test, "test")):
        write_py2_pickle(folder / name, {
            "filenames": [f"{CIFAR100_FINE_NAMES[y]}_s_{i:06d}.png" for i, y in enumerate(labels)],
            "batch_label": f"{'training' if split == 'train' else 'testing'} batch 1 of 1",
            "fine_labels": labels,
            "coarse_labels": [coarse_of(y) for y in labels],
            "data": image_rows(split, 0, labels),
        })
    write_py2_pickle(folder / "meta", {
        "fine_label_names": list(CIFAR100_FINE_NAMES), "coarse_label_names": list(CIFAR100_COARSE_NAMES)})
    return Written(root, folder, train, test, [len(train)])
