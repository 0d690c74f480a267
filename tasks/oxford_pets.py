"""oxford_pets: the Oxford-IIIT Pet dataset (Parkhi et al. 2012), 37 cat and dog breeds, with its official splits.

torchvision's `OxfordIIITPet` layout under --data-dir (what `--download` or the official tarballs give):

    DATA/oxford-iiit-pet/images/Abyssinian_1.jpg ... yorkshire_terrier_99.jpg     (images.tar.gz, extracted)
    DATA/oxford-iiit-pet/annotations/trainval.txt, test.txt                      (annotations.tar.gz, extracted)

(DATA/oxford_pets/oxford-iiit-pet/... is accepted too.) Each line of a list file is `IMAGE CLASS SPECIES BREED`
(`Abyssinian_100 1 1 1`): CLASS is 1..37, the label is CLASS - 1, in the order of CLASSES below. torchvision
parses the list files; transfer_eval decodes the images (a few of the real .jpg files are PNG, grayscale or
CMYK inside: every mode becomes RGB). Splits: trainval (3,680 images) is the official training set, and val is
10% of it held out per class (the ViT paper's protocol for Pets; `holdout(labels, 0.1, seed=0)`); test is the
official test list (3,669). Sample ids are the paths relative to oxford-iiit-pet/ (`images/Abyssinian_100.jpg`).

    transfer-eval run -c vit_b16_in21k -t oxford_pets -m full --resolution 384 --data-dir DATA
    transfer-eval data check oxford_pets --data-dir DATA --download     # torchvision fetches the tarballs (~800 MB)

The tarballs' md5s are checked by torchvision when it downloads them; extracted list files have no published
checksum, so --skip-verify changes nothing here.
"""

from functools import lru_cache
from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task

NAME = "oxford_pets"
FOLDER = "oxford-iiit-pet"
URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
HELP = (
    f"pass --download to fetch the official tarballs, or extract images.tar.gz and annotations.tar.gz from {URL} "
    f"into DATA/{FOLDER}/ (so that images/ and annotations/trainval.txt, test.txt exist) and pass --data-dir DATA"
)
_LISTS = {"train": "trainval", "test": "test"}

# torchvision's OxfordIIITPet.classes for the real list files: the breeds in CLASS order (1..37), kept here so
# that discovering the plugins does not import torchvision; tests check that they agree.
CLASSES = (
    "Abyssinian",
    "American Bulldog",
    "American Pit Bull Terrier",
    "Basset Hound",
    "Beagle",
    "Bengal",
    "Birman",
    "Bombay",
    "Boxer",
    "British Shorthair",
    "Chihuahua",
    "Egyptian Mau",
    "English Cocker Spaniel",
    "English Setter",
    "German Shorthaired",
    "Great Pyrenees",
    "Havanese",
    "Japanese Chin",
    "Keeshond",
    "Leonberger",
    "Maine Coon",
    "Miniature Pinscher",
    "Newfoundland",
    "Persian",
    "Pomeranian",
    "Pug",
    "Ragdoll",
    "Russian Blue",
    "Saint Bernard",
    "Samoyed",
    "Scottish Terrier",
    "Shiba Inu",
    "Siamese",
    "Sphynx",
    "Staffordshire Bull Terrier",
    "Wheaten Terrier",
    "Yorkshire Terrier",
)
assert len(CLASSES) == 37


def _root(data_dir: Path) -> Path:
    for root in (data_dir, data_dir / NAME):
        if (root / FOLDER).is_dir():
            return root
    raise UserError(f"task {NAME}: no {FOLDER}/ under {data_dir} (nor {data_dir / NAME}); {HELP}")


def _signature(folder: Path, list_name: str) -> tuple:
    st = (folder / "annotations" / f"{list_name}.txt").stat()
    return (st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4)
def _index(root: str, list_name: str, signature: tuple) -> tuple[list[str], list[int]]:
    from torchvision.datasets import OxfordIIITPet

    try:
        ds = OxfordIIITPet(root, split=list_name, download=False)
    except Exception as e:  # a line that is not `IMAGE CLASS SPECIES BREED`, a class that is not an integer
        raise UserError(
            f"task {NAME}: cannot read {Path(root) / FOLDER / 'annotations' / (list_name + '.txt')}: "
            f"{type(e).__name__}: {e}; expected lines `IMAGE CLASS SPECIES BREED` with CLASS 1..37"
        ) from None
    return [str(p) for p in ds._images], [int(y) for y in ds._labels]


def load(split: str, ctx: LoadContext) -> ImageSplit:
    root = _root(Path(ctx.data_dir))
    folder = root / FOLDER
    list_name = _LISTS[split]
    wanted = [folder / "images", folder / "annotations" / f"{list_name}.txt"]
    missing = [str(p.relative_to(folder)) for p in wanted if not p.exists()]
    if missing:
        raise UserError(f"task {NAME}: {folder} lacks {', '.join(missing)}; {HELP}")
    paths, labels = _index(str(root), list_name, _signature(folder, list_name))
    bad = [y for y in labels if not 0 <= y < len(CLASSES)]
    if bad:
        raise UserError(
            f"task {NAME}: {list_name}.txt in {folder / 'annotations'} has class {bad[0] + 1} outside 1..37"
        )
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise UserError(
            f"task {NAME}: {len(absent)} of the {len(paths)} images named by {list_name}.txt are missing, e.g. "
            f"{absent[0]}; extract images.tar.gz from {URL} into {folder}"
        )
    ids = [Path(p).relative_to(folder).as_posix() for p in paths]
    return ImageSplit.from_files(paths, labels, ids)


def download(ctx: LoadContext) -> None:
    """torchvision fetches images.tar.gz and annotations.tar.gz from the official site, checking their md5s."""
    data_dir = Path(ctx.data_dir)
    for root in (data_dir, data_dir / NAME):
        if (root / FOLDER / "images").is_dir() and (root / FOLDER / "annotations" / "test.txt").is_file():
            return
    data_dir.mkdir(parents=True, exist_ok=True)
    from torchvision.datasets import OxfordIIITPet

    try:
        OxfordIIITPet(str(data_dir), split="trainval", download=True)
    except Exception as e:
        raise UserError(
            f"task {NAME}: download from {URL} into {data_dir / FOLDER} failed ({type(e).__name__}: {e}); {HELP}"
        ) from None


# ViT paper (Table 4) / big_vision's transfer configs for pets: the `vit` preset (SGD momentum 0.9, batch 512, no
# weight decay, clip 1, lr from {0.001, 0.003, 0.01, 0.03} chosen on val) with 500 steps after 100 warmup.
_SCHEDULE = {"steps": 500, "warmup_steps": 100}

oxford_pets = Task(
    name=NAME,
    sizes={"train": 3_680, "test": 3_669},
    num_classes=len(CLASSES),
    load=load,
    version=1,
    classes=CLASSES,
    description="Oxford-IIIT Pet (Parkhi et al. 2012): 37 breeds; trainval 3,680 images less 10% held out as "
    "val, official test 3,669",
    data_help=HELP,
    recipes={"linear": {}, "attention": dict(_SCHEDULE), "full": dict(_SCHEDULE)},
    val_holdout={"fraction": 0.1, "seed": 0},
    download=download,
)
