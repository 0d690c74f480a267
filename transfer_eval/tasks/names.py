"""A task name as a user gives it: a registered task (`digits`, `cifar100`, a plugin's), or where the data is:
`folder:PATH` (an image folder, folder.py) or `hf:PATH_OR_NAME` (a Hugging Face dataset, hf.py).
`resolve` is how every command and the Python API turn a name into a Task."""

from __future__ import annotations

from transfer_eval import tasks
from transfer_eval.tasks import Task, folder, hf

SOURCES = {
    folder.PREFIX: "an image folder: PATH/train/<class>/..., PATH/test/<class>/... (PATH/val/ optional)",
    hf.PREFIX: "a Hugging Face dataset: a save_to_disk folder, Parquet files, or a Hub name (--download)",
}


def resolve(name: str, known: dict[str, Task], download: bool = False) -> Task:
    """The task a name stands for: `folder:` and `hf:` names are read from where they point (a Hub dataset is
    fetched only with `download`); any other name is looked up in `known` (tasks.discover())."""
    if name.startswith(folder.PREFIX):
        return folder.task(name[len(folder.PREFIX) :])
    if name.startswith(hf.PREFIX):
        return hf.task(name[len(hf.PREFIX) :], download)
    return tasks.resolve(name, known)


def is_source(name: str) -> bool:
    """Whether a name points at data (`folder:`, `hf:`) rather than naming a registered task."""
    return any(name.startswith(p) for p in SOURCES)
