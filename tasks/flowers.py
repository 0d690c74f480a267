"""flowers102: Oxford Flowers-102 (Nilsback & Zisserman 2008) with its official train / val / test splits.

torchvision's `Flowers102` layout under --data-dir (what `--download` or the official files give):

    DATA/flowers-102/jpg/image_00001.jpg ... image_08189.jpg     (102flowers.tgz, extracted)
    DATA/flowers-102/imagelabels.mat                             (`labels`: 1 x 8189, classes 1..102)
    DATA/flowers-102/setid.mat                                   (`trnid`, `valid`, `tstid`: 1-based image ids)

(DATA/flowers102/flowers-102/... is accepted too.) Splits are the official ones: train = trnid (1,020 images),
val = valid (1,020; official, so nothing is held out of train), test = tstid (6,149). Label = imagelabels - 1.
torchvision reads the .mat files (and, unless --skip-verify, checks their md5s); the images are decoded by
transfer_eval, so every PIL mode becomes RGB and an unreadable file is reported by its path. Sample ids are the
paths relative to flowers-102/ (e.g. `jpg/image_00007.jpg`), so results compare across data folders.

    transfer-eval run -c deit3_s16_in1k -t flowers102 -m attention --data-dir DATA
    transfer-eval data check flowers102 --data-dir DATA --download     # fetches the official files (~330 MB)
"""

from functools import lru_cache
from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task

NAME = "flowers102"
FOLDER = "flowers-102"
URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
_MATS = ("imagelabels.mat", "setid.mat")
_EXPECTED = "jpg/image_NNNNN.jpg, imagelabels.mat and setid.mat"
HELP = (
    f"pass --download to fetch the official files, or put 102flowers.tgz (extracted: jpg/), imagelabels.mat "
    f"and setid.mat from {URL} into DATA/{FOLDER}/ and pass --data-dir DATA"
)

# torchvision's Flowers102.classes (a class attribute since torchvision 0.20), the official class order. Kept
# here so that discovering the plugins does not import torchvision (seconds); tests check that they agree.
CLASSES = (
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
    "moon orchid",
    "bird of paradise",
    "monkshood",
    "globe thistle",
    "snapdragon",
    "colt's foot",
    "king protea",
    "spear thistle",
    "yellow iris",
    "globe-flower",
    "purple coneflower",
    "peruvian lily",
    "balloon flower",
    "giant white arum lily",
    "fire lily",
    "pincushion flower",
    "fritillary",
    "red ginger",
    "grape hyacinth",
    "corn poppy",
    "prince of wales feathers",
    "stemless gentian",
    "artichoke",
    "sweet william",
    "carnation",
    "garden phlox",
    "love in the mist",
    "mexican aster",
    "alpine sea holly",
    "ruby-lipped cattleya",
    "cape flower",
    "great masterwort",
    "siam tulip",
    "lenten rose",
    "barbeton daisy",
    "daffodil",
    "sword lily",
    "poinsettia",
    "bolero deep blue",
    "wallflower",
    "marigold",
    "buttercup",
    "oxeye daisy",
    "common dandelion",
    "petunia",
    "wild pansy",
    "primula",
    "sunflower",
    "pelargonium",
    "bishop of llandaff",
    "gaura",
    "geranium",
    "orange dahlia",
    "pink-yellow dahlia?",
    "cautleya spicata",
    "japanese anemone",
    "black-eyed susan",
    "silverbush",
    "californian poppy",
    "osteospermum",
    "spring crocus",
    "bearded iris",
    "windflower",
    "tree poppy",
    "gazania",
    "azalea",
    "water lily",
    "rose",
    "thorn apple",
    "morning glory",
    "passion flower",
    "lotus",
    "toad lily",
    "anthurium",
    "frangipani",
    "clematis",
    "hibiscus",
    "columbine",
    "desert-rose",
    "tree mallow",
    "magnolia",
    "cyclamen",
    "watercress",
    "canna lily",
    "hippeastrum",
    "bee balm",
    "ball moss",
    "foxglove",
    "bougainvillea",
    "camellia",
    "mallow",
    "mexican petunia",
    "bromelia",
    "blanket flower",
    "trumpet creeper",
    "blackberry lily",
)
assert len(CLASSES) == 102


def _root(data_dir: Path) -> Path:
    """The folder torchvision calls `root`: the one holding flowers-102/."""
    for root in (data_dir, data_dir / NAME):
        if (root / FOLDER).is_dir():
            return root
    raise UserError(
        f"task {NAME}: no {FOLDER}/ under {data_dir} (nor {data_dir / NAME}); expected "
        f"{FOLDER}/ holding {_EXPECTED}; {HELP}"
    )


def _signature(folder: Path) -> tuple:
    """Sizes and modification times of the .mat files: a changed file is not served from the cache."""
    out = []
    for name in _MATS:
        st = (folder / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _torchvision_class(verify: bool):
    from torchvision.datasets import Flowers102

    if verify:
        return Flowers102
    # Re-packed copies and test fixtures: the .mat files must exist, their md5s are not checked.
    return type(
        "Flowers102Unverified",
        (Flowers102,),
        {"_file_dict": {k: (fname, None) for k, (fname, _) in Flowers102._file_dict.items()}},
    )


@lru_cache(maxsize=8)
def _index(root: str, split: str, verify: bool, signature: tuple) -> tuple[list[str], list[int]]:
    """(image paths, labels) of one split, read by torchvision from the .mat files."""
    folder = Path(root) / FOLDER
    cls = _torchvision_class(verify)
    try:
        ds = cls(root, split=split, download=False)
    except RuntimeError as e:
        if "not found or corrupted" not in str(e):
            raise UserError(f"task {NAME}: cannot read {folder}: {e}") from None
        # the files are all there (checked before), so it is the md5 check that failed
        raise UserError(
            f"task {NAME}: {', '.join(_MATS)} in {folder} do not match the official md5 "
            f"checksums; download them again from {URL}, or pass --skip-verify for a re-packed "
            f"copy"
        ) from None
    except Exception as e:  # a truncated .mat file, a missing variable, an image id without a label
        raise UserError(
            f"task {NAME}: cannot read {', '.join(_MATS)} in {folder}: {type(e).__name__}: {e}; "
            f"expected `labels` (1 x N, classes 1..102) and `trnid`, `valid`, `tstid` "
            f"(1-based image ids, two or more each)"
        ) from None
    return [str(p) for p in ds._image_files], [int(y) for y in ds._labels]


def load(split: str, ctx: LoadContext) -> ImageSplit:
    data_dir = Path(ctx.data_dir)
    root = _root(data_dir)
    folder = root / FOLDER
    missing = [f for f in _MATS if not (folder / f).is_file()] + ([] if (folder / "jpg").is_dir() else ["jpg/"])
    if missing:
        raise UserError(f"task {NAME}: {folder} lacks {', '.join(missing)}; expected {_EXPECTED}; {HELP}")
    paths, labels = _index(str(root), split, ctx.verify, _signature(folder))
    bad = [y for y in labels if not 0 <= y < len(CLASSES)]
    if bad:
        raise UserError(f"task {NAME}: {folder / 'imagelabels.mat'} has class {bad[0] + 1} outside 1..102")
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise UserError(
            f"task {NAME}: {len(absent)} of the {len(paths)} {split} images named by setid.mat are "
            f"missing, e.g. {absent[0]}; extract 102flowers.tgz from {URL} into {folder}"
        )
    ids = [Path(p).relative_to(folder).as_posix() for p in paths]
    return ImageSplit.from_files(paths, labels, ids)


def download(ctx: LoadContext) -> None:
    """torchvision fetches 102flowers.tgz and the two .mat files from the official site, checking their md5s."""
    data_dir = Path(ctx.data_dir)
    for root in (data_dir, data_dir / NAME):
        folder = root / FOLDER
        if (folder / "jpg").is_dir() and all((folder / f).is_file() for f in _MATS):
            return
    data_dir.mkdir(parents=True, exist_ok=True)
    from torchvision.datasets import Flowers102

    try:
        Flowers102(str(data_dir), split="train", download=True)
    except Exception as e:
        raise UserError(
            f"task {NAME}: download from {URL} into {data_dir / FOLDER} failed ({type(e).__name__}: {e}); {HELP}"
        ) from None


def _recipes() -> dict:
    # ViT paper (Table 4) / big_vision's transfer configs for flowers: SGD momentum 0.9, batch 512, no weight
    # decay, clip 1, cosine after 100 warmup steps, 500 steps; lr from {0.001, 0.003, 0.01, 0.03} chosen on val.
    # The optimiser and lr grid come from the `vit` preset; the task gives its schedule.
    schedule = {"steps": 500, "warmup_steps": 100}
    return {"linear": {}, "attention": dict(schedule), "full": dict(schedule)}


flowers102 = Task(
    name=NAME,
    sizes={"train": 1_020, "val": 1_020, "test": 6_149},
    num_classes=102,
    load=load,
    version=1,
    classes=CLASSES,
    description="Oxford Flowers-102 (Nilsback & Zisserman 2008): official splits, 1,020 train / 1,020 val / "
    "6,149 test images, 102 classes",
    data_help=HELP,
    recipes=_recipes(),
    val_holdout=None,  # val is the official one
    download=download,
)
