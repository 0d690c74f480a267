"""A task name as a user gives it: a registered task (`digits`, `cifar100`, a plugin's), or where the data is:
`folder:PATH` (an image folder, folder_task.py) or `hf:PATH_OR_NAME` (a Hugging Face dataset, hf_task.py).
`resolve` is how every command and the Python API turn a name into a Task."""

from __future__ import annotations

from transfer_eval import folder_task, hf_task, tasks
from transfer_eval.tasks import Task

SOURCES = {
    folder_task.PREFIX: "an image folder: PATH/train/<class>/..., PATH/test/<class>/... (PATH/val/ optional)",
    hf_task.PREFIX: "a Hugging Face dataset: a save_to_disk folder, Parquet files, or a Hub name (--download)",
}


def resolve(name: str, known: dict[str, Task], download: bool = False) -> Task:
    """The task a name stands for: `folder:` and `hf:` names are read from where they point (a Hub dataset is
    fetched only with `download`); any other name is looked up in `known` (tasks.discover())."""
    if name.startswith(folder_task.PREFIX):
        return folder_task.task(name[len(folder_task.PREFIX) :])
    if name.startswith(hf_task.PREFIX):
        return hf_task.task(name[len(hf_task.PREFIX) :], download)
    return tasks.resolve(name, known)


def is_source(name: str) -> bool:
    """Whether a name points at data (`folder:`, `hf:`) rather than naming a registered task."""
    return any(name.startswith(p) for p in SOURCES)
