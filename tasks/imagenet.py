"""imagenet1k: ImageNet-1k (ILSVRC 2012) with its official 50,000 val images as test; imagenetv2_matched_frequency,
imagenetv2_threshold07, imagenetv2_top_images: ImageNet-V2 (Recht et al. 2019) in the same label space.

ImageNet-1k train, in torchvision's ImageNet layout (every task here that trains reads it):

    DATA/imagenet/train/<wnid>/*.JPEG          exactly the 1000 wnid folders; class index = the wnid's rank in
                                               sorted order (the standard ImageNet-1k indices)

`val` is 1% of it held out per class (the ViT paper's "minival", `holdout(labels, 0.01, seed=0)`).

imagenet1k's `test` is the official validation set, in either of its two layouts:

    DATA/imagenet/val/<wnid>/ILSVRC2012_val_NNNNNNNN.JPEG        torchvision's layout (after its val parsing)
    DATA/imagenet/val/ILSVRC2012_val_NNNNNNNN.JPEG               the flat folder of ILSVRC2012_img_val.tar, with
    DATA/imagenet/ILSVRC2012_devkit_t12/data/meta.mat            the devkit's ground truth (extracted, or the
    DATA/imagenet/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt   ILSVRC2012_devkit_t12.tar.gz
                                                                 there, read in place and md5-checked)

The ground truth gives each val image an ILSVRC2012_ID (1..1000), which is NOT the class index: meta.mat maps it
to its wnid, whose sorted rank is. Sample ids are the file names (ILSVRC2012_val_00000001.JPEG, ...) in both
layouts, so the two give the same split manifest and their results compare. `-m pretrained` evaluates a
checkpoint's own ImageNet-1k head on val and reads nothing else.

ImageNet-V2: test-only datasets (1000 classes, 10 images each), as the tarballs of the Hugging Face dataset
vaishaal/ImageNetV2 extract:

    DATA/imagenetv2-matched-frequency-format-val/<class index 0..999>/<40-hex sha1>.jpeg
    DATA/imagenetv2-threshold0.7-format-val/...
    DATA/imagenetv2-top-images-format-val/...

(DATA/imagenetv2/<the same folder>/ is accepted too; older copies name the files 0.jpeg..9.jpeg, and any image
extension is read.) The label of an image is `int(<its folder name>)`, the ImageNet-1k class index: NOT the
folder's rank, neither in string order (what torchvision's ImageFolder and the official README do: '10' -> 2,
'100' -> 3, '2' -> 112, ...) nor in numeric order among the folders present (wrong as soon as one is missing).

Two ways to run ImageNet-V2 (and imagenet1k):

- `-m pretrained`: a checkpoint with an ImageNet-1k head is evaluated as it is, without training; only the
  `test` split is read.
- `-m linear|attention|full|...`: trained on ImageNet-1k train (above), selected on its 1% minival, scored on
  the test split.

Table 5 of "Three things everyone should know about Vision Transformers" (attention-only fine-tuning from 224 to
384 px, scored on ImageNet val and ImageNet-V2) is `transfer-eval paper run three-things-table5`, or by hand:

    transfer-eval run -c deit3_s16_in1k -t imagenet1k,imagenetv2_matched_frequency -m attention --resolution 384

No automatic download: ImageNet-1k needs an account at image-net.org, and there is no published checksum of the
ImageNet-V2 tarballs to verify a download against.

ImageNet's other test sets (ReaL, Sketch, A, R and their -clean sets; ObjectNet) are companions of these, in
tasks/imagenet_shift.py and tasks/objectnet.py; what they share with them is transfer_eval/tasks/imagenet_shared.py.
"""

from __future__ import annotations

from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task
from transfer_eval.tasks.imagenet_shared import (
    DEVKIT_TAR,
    IN1K,
    IN1K_URL,
    NUM_CLASSES,
    TRAIN_IMAGES,
    VAL_HOLDOUT,
    VAL_IMAGES,
    class_names,
    companions_of,
    in1k_listing,
    in1k_train_root,
    recipes,
    subdirs,
    val_listing,
    walk,
)

HF_DATASET = "vaishaal/ImageNetV2"
HF_URL = "https://huggingface.co/datasets/vaishaal/ImageNetV2"

# task name -> the variant's name in the tarball and folder names
VARIANTS = {
    "imagenetv2_matched_frequency": "matched-frequency",
    "imagenetv2_threshold07": "threshold0.7",
    "imagenetv2_top_images": "top-images",
}


def folder_name(variant: str) -> str:
    return f"imagenetv2-{variant}-format-val"


def tarball(variant: str) -> str:
    return f"imagenetv2-{variant}.tar.gz"


# --------------------------------------------------------------------------------------------------------------
# ImageNet-V2 (test)


def _v2_root(task: str, data_dir: Path) -> Path:
    name = folder_name(VARIANTS[task])
    for root in (data_dir / name, data_dir / "imagenetv2" / name):
        if root.is_dir():
            return root
    raise UserError(
        f"task {task}: no {name}/ under {data_dir} (nor under {data_dir / 'imagenetv2'}); expected "
        f"{name}/<class index 0..999>/*.jpeg as extracted from {tarball(VARIANTS[task])} of the "
        f"Hugging Face dataset {HF_DATASET} ({HF_URL}); extract it into the data folder and pass "
        f"--data-dir or set TRANSFER_EVAL_DATA"
    )


def _class_index(task: str, root: Path, name: str) -> int:
    if not (name.isascii() and name.isdigit() and 0 <= int(name) < NUM_CLASSES):
        raise UserError(
            f"task {task}: folder {root / name} is not an ImageNet-1k class index (an integer "
            f"0..999); {root} must hold only the folders 0..999 of {tarball(VARIANTS[task])}"
        )
    return int(name)


def _v2_listing(task: str, root: Path) -> tuple[list[str], list[int], list[str]]:
    """Paths, labels (int(folder name), never a rank) and ids ("<folder>/<file>"), by class index then file name."""
    found = subdirs(root)
    by_index: dict[int, str] = {}
    for name, _ in found:
        idx = _class_index(task, root, name)
        if idx in by_index:
            raise UserError(f"task {task}: folders {root / by_index[idx]} and {root / name} are both class {idx}")
        by_index[idx] = name
    return walk(str(root), root.stat().st_mtime_ns, tuple(found), tuple(sorted(by_index.items())))


# --------------------------------------------------------------------------------------------------------------
# The tasks


def _loader(task: str):
    def load(split: str, ctx: LoadContext) -> ImageSplit:
        data_dir = Path(ctx.data_dir)
        if split == "test" and task == IN1K:
            return ImageSplit.from_files(*val_listing(task, data_dir / "imagenet", ctx.verify))
        if split == "test":
            paths, labels, ids = _v2_listing(task, _v2_root(task, data_dir))
            return ImageSplit.from_files(paths, labels, ids)
        # train: the whole ImageNet-1k train set; Task.dataset holds val out of it (val_holdout)
        return ImageSplit.from_files(*in1k_listing(task, in1k_train_root(task, data_dir)))

    return load


def _help(variant: str) -> str:
    return (
        f"extract {tarball(variant)} from the Hugging Face dataset {HF_DATASET} ({HF_URL}) into DATA (so "
        f"that DATA/{folder_name(variant)}/0..999/ exist; DATA/imagenetv2/{folder_name(variant)}/ works too) "
        f"and pass --data-dir DATA; not downloaded automatically (no published sha256 to verify the tarball "
        f"against). ImageNet-V2 is test-only: -m pretrained needs nothing else; linear, attention and full "
        f"also need ImageNet-1k train at DATA/imagenet/train (torchvision layout: <wnid>/*.JPEG, all 1000 "
        f"wnid folders; from image-net.org)"
    )


_CLASSES = class_names()


def _task(name: str) -> Task:
    variant = VARIANTS[name]
    return Task(
        companions=companions_of(name),
        name=name,
        num_classes=NUM_CLASSES,
        sizes={"train": TRAIN_IMAGES, "test": 10_000},
        load=_loader(name),
        version=1,
        classes=_CLASSES,
        splits=("train", "val", "test"),
        description=f"ImageNet-V2 {variant} (Recht et al. 2019): test-only, 10,000 images, ImageNet-1k labels; "
        f"train/val = ImageNet-1k train / its 1% minival",
        data_help=_help(variant),
        recipes=recipes(),
        val_holdout=dict(VAL_HOLDOUT),
        download=None,  # no published checksum of the tarballs on Hugging Face to verify a download against
    )


imagenet1k = Task(
    companions=companions_of(IN1K),
    name=IN1K,
    sizes={"train": TRAIN_IMAGES, "test": VAL_IMAGES},
    num_classes=NUM_CLASSES,
    load=_loader(IN1K),
    version=1,
    classes=_CLASSES,
    splits=("train", "val", "test"),
    description="ImageNet-1k (ILSVRC 2012): 1,281,167 train images less the 1% minival held out as val; test = "
    "the official 50,000 val images (torchvision's layout, or flat with the devkit's ground truth)",
    data_help=(
        f"put ImageNet-1k at DATA/imagenet: train/<wnid>/*.JPEG (the 1000 wnid folders) and val/ (torchvision's "
        f"val/<wnid>/ layout, or the flat ILSVRC2012_img_val.tar folder with {DEVKIT_TAR} beside it), from "
        f"{IN1K_URL}, and pass --data-dir DATA; never downloaded automatically (it needs an account)"
    ),
    recipes=recipes(),
    val_holdout=dict(VAL_HOLDOUT),
    download=None,
)
imagenetv2_matched_frequency = _task("imagenetv2_matched_frequency")
imagenetv2_threshold07 = _task("imagenetv2_threshold07")
imagenetv2_top_images = _task("imagenetv2_top_images")
