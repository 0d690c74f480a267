"""A Hugging Face dataset as a task, from the command line: `-t hf:PATH_OR_NAME` (needs `pip install datasets`, the
`hf` extra).

PATH is a folder written by `save_to_disk` (a DatasetDict), or Parquet files as the Hub lays them out (a folder
holding `data/train-*.parquet`, `data/test-*.parquet`, ...: anything `datasets.load_dataset(PATH)` reads). A NAME
that is not a path is a Hub dataset, read from Hugging Face's local cache; it is downloaded only with --download.

Its splits: `train` and `test`, and `validation` (or `val`, `valid`) where there is one; else val is 10% of train
held out per class (seed 0), as the built-in tasks without an official val. Its image column is the one feature of
type `Image` and its label column the one `ClassLabel` (whose names are the class names; without one, an integer
column named `label`); where that is ambiguous, name them after the path: `hf:PATH:image=img:label=fine_label`.

The task's name is `hf:` with the absolute path (or the Hub name) and the named columns; its version is this
reader's. What the images are is guarded by the split manifests (ids are split/row, with their labels) and, for
the feature cache, by the dataset's fingerprint and its Arrow files' sizes and times.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.tasks import ImageSplit, LoadContext, Task, UnreadableImage, folder, load_image

PREFIX = "hf:"
VERSION = 1  # bump when the way a dataset is read changes what a run sees
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # NAME or ORG/NAME; anything else is a path
OPTIONS = re.compile(r"^(.*?)((?::(?:image|label)=[^,:=]+)+)$")  # PATH:image=COLUMN:label=COLUMN
HELP = (
    "give hf:PATH (a save_to_disk folder or Parquet files with train and test splits) or hf:NAME (a Hub dataset, "
    "fetched with --download); name the columns with hf:PATH:image=COLUMN:label=COLUMN"
)


def parse(spec: str) -> tuple[str, dict]:
    """PATH_OR_NAME and the columns named after it (`image=`, `label=`)."""
    found = OPTIONS.match(spec)
    if not found:
        return spec, {}
    return found.group(1), dict(part.split("=", 1) for part in found.group(2)[1:].split(":"))


def task(spec: str, download: bool = False) -> Task:
    """The task of `hf:SPEC`. One line says what is wrong with a dataset that cannot be one."""
    source, columns = parse(spec)
    path = Path(source).expanduser()
    where = str(path.resolve()) if path.exists() else source
    name = PREFIX + where + "".join(f":{k}={v}" for k, v in sorted(columns.items()))
    if not path.exists() and not HUB_NAME.match(source):  # a path, not a Hub name: nothing to download
        raise UserError(
            f"task {name}: {path} does not exist; give the path of a save_to_disk folder or of Parquet files with "
            f"train and test splits"
        )
    splits = _open(path if path.exists() else None, source, download, name)
    found = {ours: next((s for s in theirs if s in splits), None) for ours, theirs in SPLIT_NAMES.items()}
    missing = [s for s in ("train", "test") if found[s] is None]
    if missing:
        raise UserError(f"task {name}: no {' or '.join(missing)} split (it has {', '.join(splits) or 'none'}); {HELP}")
    train = splits[found["train"]]
    image_col = _column(name, train, columns.get("image"), "image", "Image")
    label_col = _column(name, train, columns.get("label"), "label", "ClassLabel")
    # a column named as the one found without naming it is the same task: named in the task's name only where
    # naming it changes what is read (hf:PATH:label=label is hf:PATH where `label` is the one label column)
    named = {k: v for k, v in columns.items() if v != _found(train, k)}
    name = PREFIX + where + "".join(f":{k}={v}" for k, v in sorted(named.items()))
    feature = train.features[label_col]
    classes = tuple(feature.names) if hasattr(feature, "names") else None
    labels = {s: list(splits[their][label_col]) for s, their in found.items() if their is not None}
    num_classes = len(classes) if classes else max(max(v, default=-1) for v in labels.values()) + 1
    for s, values in labels.items():
        bad = [v for v in values if not (isinstance(v, int) and 0 <= v < num_classes)]
        if bad:
            raise UserError(
                f"task {name}: the {found[s]} split has labels outside 0..{num_classes - 1} (e.g. {bad[0]!r}: an "
                f"unlabelled split?); every image needs its class"
            )
    return Task(
        name=name,
        num_classes=num_classes,
        load=_loader(name, {s: splits[t] for s, t in found.items() if t is not None}, image_col, label_col),
        version=VERSION,
        classes=classes,
        recipes=folder.recipes(),
        description=f"Hugging Face dataset: {num_classes} classes, "
        + (f"its own {found['val']} split" if found["val"] else "val = 10% of train"),
        data_help=HELP,
        val_holdout=None if found["val"] else dict(folder.VAL_HOLDOUT),
        source=PREFIX,
    )


def _open(path: Path | None, source: str, download: bool, name: str) -> dict:
    """The dataset's splits (name -> datasets.Dataset)."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"task {name} needs the datasets library: pip install 'transfer-eval[hf]'") from None
    try:
        with _quiet(datasets), _offline(datasets, not download and path is None):
            if path is not None and (path / "dataset_dict.json").is_file():
                out = datasets.load_from_disk(str(path))
            elif path is not None and (path / "state.json").is_file():
                raise UserError(
                    f"task {name}: {path} holds one split; save a DatasetDict with train and test splits "
                    f"(datasets.DatasetDict({{'train': ..., 'test': ...}}).save_to_disk(PATH))"
                )
            else:
                out = datasets.load_dataset(str(path) if path is not None else source)
    except UserError:
        raise
    except Exception as e:  # datasets' own errors: missing files, not cached, a bad Parquet file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            ""
            if path is not None or download
            else f"; there is no folder {source} here, and it is not in the local Hugging Face cache: add "
            "--download to fetch it from the Hub"
        )
        raise UserError(f"task {name}: cannot read it ({type(e).__name__}: {first}){hint}; {HELP}") from None
    return dict(out.items()) if hasattr(out, "items") else {}


@contextlib.contextmanager
def _quiet(datasets):
    """datasets' progress bars off while a task is read (restored after)."""
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _offline(datasets, on: bool):
    """No network for a Hub name unless --download (the local cache only)."""
    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = saved or on
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def _found(ds, role: str) -> str | None:
    """The column of `role` (image, label) found without naming one; None where it would be ambiguous."""
    try:
        return _column("", ds, None, role, "Image" if role == "image" else "ClassLabel")
    except UserError:
        return None


def _column(name: str, ds, chosen: str | None, role: str, kind: str) -> str:
    """The image or label column: the one named, else the one feature of its kind (labels: else `label`)."""
    features = ds.features
    if chosen is not None:
        if chosen not in features:
            raise UserError(f"task {name}: no column {chosen!r} (it has {', '.join(features)})")
        return chosen
    of_kind = [c for c, f in features.items() if type(f).__name__ == kind]
    if role == "label" and not of_kind and "label" in features:
        of_kind = ["label"]
    if len(of_kind) != 1:
        which = f"several ({', '.join(of_kind)})" if of_kind else "none"
        raise UserError(
            f"task {name}: {which} of its columns hold {'images' if role == 'image' else 'class labels'} "
            f"(columns: {', '.join(features)}); name it: hf:PATH:{role}=COLUMN"
        )
    return of_kind[0]


def _signature(ds) -> str:
    """The dataset's fingerprint and its Arrow files' sizes and times: what changes when its data does."""
    h = hashlib.sha256(str(getattr(ds, "_fingerprint", "")).encode())
    for f in ds.cache_files:
        st = os.stat(f["filename"])
        h.update(f"{f['filename']}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _loader(name: str, splits: dict, image_col: str, label_col: str):
    def load(split: str, ctx: LoadContext) -> ImageSplit:
        import datasets

        ds = splits[split]
        labels = list(ds[label_col])
        raw = ds.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))

        def image(i: int):
            cell = raw[int(i)][image_col]
            data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (None, None)
            if data is None and not path:
                raise UnreadableImage(f"unreadable image {name} {split} row {i}: the row holds no image")
            try:
                return load_image(io.BytesIO(data) if data is not None else path)
            except UnreadableImage as e:
                reason = str(e).split(": ", 1)[-1]
                raise UnreadableImage(f"unreadable image {name} {split} row {i}: {reason}") from None

        out = ImageSplit(image, labels, [f"{split}/{i}" for i in range(len(labels))])
        out.signature = _signature(ds)
        return out

    return load
