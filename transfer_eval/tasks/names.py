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


def describe(name: str) -> str | None:
    """What a `folder:` or `hf:` task name points at, from the name alone (no data is read: a report describes
    stored results whose data may be elsewhere now); None for any other name."""
    if name.startswith(folder.PREFIX):
        return f"an image folder at {name[len(folder.PREFIX) :]}"
    if name.startswith(hf.PREFIX):
        source, columns = hf.parse(name[len(hf.PREFIX) :])
        where = f"at {source}" if source.startswith("/") else f"{source} (the Hugging Face Hub)"
        named = ", ".join(f"{k} column {v!r}" for k, v in sorted(columns.items()))
        return f"a Hugging Face dataset {where}" + (f", {named}" if named else "")
    return None


def stored_name(name: str) -> str:
    """The name results of a `folder:` or local `hf:` task are stored under (its path made absolute, `~`
    expanded), from the name as a user types it, reading no data; any other name as it is."""
    from pathlib import Path

    if name.startswith(folder.PREFIX):
        return folder.PREFIX + str(Path(name[len(folder.PREFIX) :]).expanduser().resolve())
    if name.startswith(hf.PREFIX):
        source, columns = hf.parse(name[len(hf.PREFIX) :])
        path = Path(source).expanduser()
        where = str(path.resolve()) if path.exists() else source
        return hf.PREFIX + where + "".join(f":{k}={v}" for k, v in sorted(columns.items()))
    return name
