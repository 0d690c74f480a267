"""cifar10, cifar100: torchvision's CIFAR classes over the official Python pickles under --data-dir.

    DATA/cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta   (cifar-10-python.tar.gz)
    DATA/cifar-100-python/     train, test, meta                                       (cifar-100-python.tar.gz)

(DATA/cifar10/... and DATA/cifar100/... are accepted too.) Val is 10% of train, held out per class (stratified)
with numpy's default_rng(0): the 45,000 / 5,000 sizes of VTAB and the ResNet paper, though not VTAB's examples
(VTAB takes the last 10% in file order). Test is the official test set.

    transfer-eval run -c deit3_s16_in1k -t cifar100 -m attention --data-dir DATA
"""

from functools import lru_cache
from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task

VAL_FRACTION, VAL_SEED = 0.1, 0

_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_FILES = {"cifar10": "data_batch_1..5, test_batch, batches.meta", "cifar100": "train, test, meta"}
_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


def _root(name: str, data_dir: Path) -> Path:
    for root in (data_dir, data_dir / name):
        if (root / _FOLDERS[name]).is_dir():
            return root
    raise UserError(
        f"task {name}: no {_FOLDERS[name]}/ under {data_dir} (nor {data_dir / name}); expected "
        f"{_FILES[name]} as extracted from {_URLS[name]}; pass --data-dir or set TRANSFER_EVAL_DATA"
    )


def _files(cls) -> list[str]:
    return [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _signature(folder: Path) -> tuple:
    """Names, sizes and modification times: a changed or deleted file is not served from the cache."""
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


def _dataset(name: str, root: str, train: bool, verify: bool):
    return _cached_dataset(name, root, train, verify, _signature(Path(root) / _FOLDERS[name]))


@lru_cache(maxsize=4)
def _cached_dataset(name: str, root: str, train: bool, verify: bool, signature: tuple):
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = Path(root) / _FOLDERS[name]
    missing = [f for f in _files(cls) if not (folder / f).is_file()]
    if missing:
        raise UserError(
            f"task {name}: {folder} lacks {', '.join(missing)}; expected {_FILES[name]} as extracted from {_URLS[name]}"
        )
    if not verify:  # re-packed copies and test fixtures: same files, md5 not checked (existence still is)
        cls = type(
            cls.__name__ + "Unverified",
            (cls,),
            {
                "train_list": [[f, None] for f, _ in cls.train_list],
                "test_list": [[f, None] for f, _ in cls.test_list],
                "meta": {**cls.meta, "md5": None},
            },
        )
    try:
        return cls(root, train=train, download=False)
    except RuntimeError:  # torchvision's md5 check of every file (only reached when verifying)
        raise UserError(
            f"task {name}: files in {folder} do not match the official md5 checksums; re-extract "
            f"{_URLS[name]}, or pass --skip-verify for a re-packed copy"
        ) from None
    except Exception as e:  # a truncated or foreign pickle
        raise UserError(f"task {name}: cannot read {folder}: {type(e).__name__}: {e}") from None


def _loader(name: str):
    def load(split: str, ctx: LoadContext) -> ImageSplit:
        root = str(_root(name, Path(ctx.data_dir)))
        ds = _dataset(name, root, split != "test", ctx.verify)
        prefix = "test" if split == "test" else "train"
        # train: the whole official train set; Task.dataset holds val out of it (val_holdout)
        return ImageSplit(lambda i: ds[i][0], ds.targets, [f"{prefix}/{i}" for i in range(len(ds.targets))])

    return load


def _downloader(name: str):
    def download(ctx: LoadContext) -> None:
        from torchvision import datasets

        root = Path(ctx.data_dir)
        if (root / _FOLDERS[name]).is_dir() or (root / name / _FOLDERS[name]).is_dir():
            return
        root.mkdir(parents=True, exist_ok=True)
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        try:  # torchvision fetches the official tarball and checks its md5 before extracting
            cls(str(root), train=True, download=True)
        except Exception as e:
            how = _HELP.format(tar=_URLS[name], folder=_FOLDERS[name])
            raise UserError(f"task {name}: download of {_URLS[name]} failed ({e}); {how}") from None

    return download


def _recipes():
    # The `vit` preset (ViT paper, Table 4: SGD momentum 0.9, batch 512, no weight decay, clip 1, lr from
    # {0.001, 0.003, 0.01, 0.03} on held-out train data) with CIFAR's schedule: 10k steps, 500 warmup.
    schedule = {"steps": 10000, "warmup_steps": 500}
    return {"linear": {}, "attention": dict(schedule), "full": dict(schedule)}


_HELP = "extract {tar} into DATA (so that DATA/{folder}/ exists) and pass --data-dir DATA"

cifar10 = Task(
    name="cifar10",
    sizes={"train": 50_000, "test": 10_000},
    num_classes=10,
    load=_loader("cifar10"),
    version=1,
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    description="CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test 32x32 images; val = 10% of train",
    data_help=_HELP.format(tar=_URLS["cifar10"], folder=_FOLDERS["cifar10"]),
    recipes=_recipes(),
    val_holdout={"fraction": VAL_FRACTION, "seed": VAL_SEED},
    download=_downloader("cifar10"),
)

cifar100 = Task(
    name="cifar100",
    sizes={"train": 50_000, "test": 10_000},
    num_classes=100,
    load=_loader("cifar100"),
    version=1,
    description="CIFAR-100 (Krizhevsky 2009): 50,000 train / 10,000 test 32x32 images, 100 fine classes; "
    "val = 10% of train",
    data_help=_HELP.format(tar=_URLS["cifar100"], folder=_FOLDERS["cifar100"]),
    recipes=_recipes(),
    val_holdout={"fraction": VAL_FRACTION, "seed": VAL_SEED},
    download=_downloader("cifar100"),
)
