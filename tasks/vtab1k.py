"""VTAB-1k (Zhai et al. 2019, arXiv 1910.04867) as the parameter-efficient transfer papers run it (VPT, NOAH, SSF,
FacT, V-PETL Bench): 19 tasks of 1,000 training images, in the community's re-hosted layout.

Layout (NOAH's data/vtab-source/get_vtab1k.py): DATA/vtab-1k/<folder>/ holds train800.txt, val200.txt,
train800val200.txt and test.txt, each line `images/<split>/<NNNNNN>.jpg <label>`, and the images under images/.
The folder names are the script's (`cifar`, `oxford_iiit_pet`, `clevr_count`, ...); NOAH's shell scripts' `cifar100`
and `oxford_pet` are accepted too.

Splits: train = train800, val = val200 (the official ones: nothing is held out), test = test. The model chosen on
val200 is refitted on train+val, which is train800val200: the loader checks that train800val200.txt lists exactly
train800's labels then val200's (the script writes those images a second time as their own copies). Checked on
every read: each line's form, labels within the task's classes (a small sample need not hold every class), no
image in two of train800, val200 and test, and the four files present. Checked unless --skip-verify (for samples
of the data): each split's size, 800 / 200 / 1,000 and the test size task_adaptation expects.

The input is VTAB's as the PEFT papers feed it: the image resized to the model's square input without a crop
(crop_mode squash: VPT's tf.image.resize, NOAH's and SSF's Resize((224, 224))), normalised with the checkpoint's own
mean and std (what its weights were trained with; NOAH uses ImageNet's, SSF the model's: README, VTAB-1k), no
augmentation. Fine-tuning follows the `vtab` recipe preset (transfer_eval/presets.py).
"""

from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task
from transfer_eval.tasks.groups import VTAB_PARTS, VTAB_PREFIX

ROOT = "vtab-1k"
FILES = {"train": "train800", "val": "val200", "test": "test"}
SIZES = {"train800": 800, "val200": 200, "train800val200": 1000}

# folder: (classes, test size, TFDS name and version VPT used, what the label is)
INFO = {
    "cifar": (100, 10_000, "cifar100:3.0.2", "CIFAR-100 class"),
    "caltech101": (102, 6_084, "caltech101:3.0.1", "Caltech-101 class (101 + background)"),
    "dtd": (47, 1_880, "dtd:3.0.1", "texture class"),
    "oxford_flowers102": (102, 6_149, "oxford_flowers102:2.1.1", "flower species"),
    "oxford_iiit_pet": (37, 3_669, "oxford_iiit_pet:3.2.0", "pet breed"),
    "svhn": (10, 26_032, "svhn_cropped:3.0.0", "digit"),
    "sun397": (397, 21_750, "sun397/tfds:4.0.0", "scene class"),
    "patch_camelyon": (2, 32_768, "patch_camelyon:2.0.0", "metastatic tissue or not"),
    "eurosat": (10, 5_400, "eurosat/rgb:2.0.0", "land-use class"),
    "resisc45": (45, 6_300, "resisc45:3.0.0 (manual download)", "scene class"),
    "diabetic_retinopathy": (5, 42_670, "diabetic_retinopathy_detection/btgraham-300:3.0.0 (manual)", "grade 0-4"),
    "clevr_count": (8, 15_000, "clevr:3.1.0", "number of objects - 3"),
    "clevr_dist": (6, 15_000, "clevr:3.1.0", "binned depth of the nearest object"),
    "dmlab": (6, 22_735, "dmlab:2.0.1", "distance x reward"),
    "kitti": (4, 711, "kitti:3.2.0", "binned distance of the nearest vehicle"),
    "dsprites_loc": (16, 73_728, "dsprites:2.0.0", "x position, 32 values -> 16"),
    "dsprites_ori": (16, 73_728, "dsprites:2.0.0", "orientation, 40 values -> 16"),
    "smallnorb_azi": (18, 12_150, "smallnorb:2.0.0", "azimuth"),
    "smallnorb_ele": (9, 12_150, "smallnorb:2.0.0", "elevation"),
}
ALIASES = {"cifar": ("cifar100",), "oxford_iiit_pet": ("oxford_pet",)}  # NOAH's shell scripts' names
PART = {folder: part for part, folders in VTAB_PARTS for folder in folders}

# The `vtab` preset with VTAB's schedule: 100 epochs of the 1,000 images at batch 64, 10 of them warm-up.
SCHEDULE = {"preset": "vtab", "steps": 1563, "warmup_steps": 156}
HELP = (
    "run NOAH's data/vtab-source/get_vtab1k.py (TFDS {tfds}) so that DATA/vtab-1k/{folder}/ holds train800.txt, "
    "val200.txt, train800val200.txt, test.txt and images/, and pass --data-dir DATA (or --skip-verify for a sample)"
)


def _folder(ctx: LoadContext, name: str) -> Path:
    root = Path(ctx.data_dir) / ROOT
    for candidate in (name, *ALIASES.get(name, ())):
        if (root / candidate).is_dir():
            return root / candidate
    raise UserError(
        f"task {VTAB_PREFIX}{name}: no folder {root / name}; {HELP.format(tfds=INFO[name][2], folder=name)}"
    )


def _read(folder: Path, name: str, split_file: str) -> list[tuple[str, int]]:
    path = folder / f"{split_file}.txt"
    if not path.is_file():
        there = ", ".join(sorted(p.name for p in folder.glob("*.txt"))) or "no .txt file"
        raise UserError(
            f"task {VTAB_PREFIX}{name}: {path} is missing (the folder has {there}); "
            f"{HELP.format(tfds=INFO[name][2], folder=name)}"
        )
    out, classes = [], INFO[name][0]
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"task {VTAB_PREFIX}{name}: {path}:{i}: expected `images/<split>/<file> <label>`: {line!r}")
        label = int(parts[1])
        if not 0 <= label < classes:
            raise UserError(
                f"task {VTAB_PREFIX}{name}: {path}:{i}: label {label} is outside 0..{classes - 1} "
                f"({classes} classes: {INFO[name][3]})"
            )
        out.append((parts[0], label))
    return out


def _splits(ctx: LoadContext, name: str) -> tuple[Path, dict[str, list[tuple[str, int]]]]:
    """The four lists of a task, checked (sizes only with ctx.verify)."""
    folder = _folder(ctx, name)
    lists = {f: _read(folder, name, f) for f in ("train800", "val200", "train800val200", "test")}
    seen: dict[str, str] = {}
    for f in ("train800", "val200", "test"):
        for p, _ in lists[f]:
            if p in seen and seen[p] != f:
                raise UserError(f"task {VTAB_PREFIX}{name}: {p} is listed in both {seen[p]}.txt and {f}.txt")
            seen[p] = f
    joined = [y for _, y in lists["train800"]] + [y for _, y in lists["val200"]]
    if [y for _, y in lists["train800val200"]] != joined:
        raise UserError(
            f"task {VTAB_PREFIX}{name}: train800val200.txt does not list train800's labels then val200's, as "
            f"get_vtab1k.py writes it; the refit on train+val would not be VTAB's train800val200"
        )
    if ctx.verify:
        expected = {**SIZES, "test": INFO[name][1]}
        for f, n in expected.items():
            if len(lists[f]) != n:
                raise UserError(
                    f"task {VTAB_PREFIX}{name}: {f}.txt lists {len(lists[f]):,} images, VTAB-1k's has {n:,}; "
                    f"{HELP.format(tfds=INFO[name][2], folder=name)}"
                )
    return folder, lists


def _loader(name: str):
    def load(split: str, ctx: LoadContext) -> ImageSplit:
        folder, lists = _splits(ctx, name)
        rows = lists[FILES[split]]
        return ImageSplit.from_files([folder / p for p, _ in rows], [y for _, y in rows], [p for p, _ in rows])

    return load


def _task(name: str) -> Task:
    classes, test, tfds, label = INFO[name]
    return Task(
        name=VTAB_PREFIX + name,
        num_classes=classes,
        load=_loader(name),
        version=1,
        description=f"VTAB-1k {PART[name]}: {name} ({label}), {classes} classes; train800 / val200 / {test:,} test",
        data_help=HELP.format(tfds=tfds, folder=name),
        sizes={"train": 800, "val": 200, "test": test},
        recipes={mode: dict(SCHEDULE) for mode in ("attention", "full", "finetune", "lora", "bitfit", "ffn")},
        val_holdout=None,  # val200 is the official val
        data_config={"crop_pct": 1.0, "crop_mode": "squash"},
        train_covers_classes=False,  # train800 may miss a class of many (SUN397: 397); the benchmark scores them
    )


TASKS = [_task(name) for _, folders in VTAB_PARTS for name in folders]
