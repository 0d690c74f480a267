"""Task plugin discovery.

A task plugin is a Python file that defines `Task` objects at module level (or a `TASKS` list). Plugins are
found in three places, later ones overriding earlier ones of the same name:

1. the built-in plugins in `tasks/` (shipped inside the package by a wheel install);
2. installed packages that declare the entry-point group `transfer_eval.tasks` (an entry point may name a Task,
   a list of Tasks, or a module holding them);
3. a user's folder given with `--tasks-dir DIR`.

A Task's `load(split, ctx)` returns an `ImageSplit`: images (PIL) with integer labels and stable sample ids.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

from transfer_eval import paths
from transfer_eval.errors import UserError, unknown_name
from transfer_eval.tasks.task import Task

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "transfer_eval.tasks"


def _tasks_in(namespace, where: str) -> list[Task]:
    found = [v for v in vars(namespace).values() if isinstance(v, Task)] if hasattr(namespace, "__dict__") else []
    found += [t for t in getattr(namespace, "TASKS", []) if isinstance(t, Task) and t not in found]
    return found


def _import_file(path: Path):
    """The plugin module of `path`, imported once per content: a file edited since (in a notebook, between two
    runs in one process) is imported again, never served from the earlier import."""
    identity = str(path.resolve()).encode() + b"\0" + path.read_bytes()
    mod_name = "transfer_eval_task_" + hashlib.sha1(identity).hexdigest()[:10] + "_" + path.stem
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[mod_name]
        raise UserError(f"task plugin {path} failed to import: {type(e).__name__}: {e}") from None
    return module


def _from_folder(folder: Path) -> list[Task]:
    if not folder.is_dir():
        raise UserError(f"tasks folder {folder} does not exist or is not a folder")
    out = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        for t in _tasks_in(_import_file(path), str(path)):
            out.append(_with_source(t, str(path)))
    return out


def _with_source(t: Task, source: str) -> Task:
    from dataclasses import replace

    return replace(t, source=source)


def _from_entry_points() -> list[Task]:
    out = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:
            raise UserError(f"task entry point {ep.name!r} ({ep.value}) failed to load: {e}") from None
        if callable(obj) and not isinstance(obj, Task):
            obj = obj()
        items = obj if isinstance(obj, (list, tuple)) else [obj] if isinstance(obj, Task) else _tasks_in(obj, ep.value)
        out += [_with_source(t, f"entry point {ep.value}") for t in items if isinstance(t, Task)]
    return out


# Tasks added in this process (transfer_eval.add_task: a notebook's, without a plugin file); discovered last.
ADDED: dict[str, Task] = {}


def discover(tasks_dirs: Sequence[str | Path] = ()) -> dict[str, Task]:
    """Every task, by name: built-ins, then entry points, then each user folder, then those added in this process."""
    found: dict[str, Task] = {}
    sources = [lambda: _from_folder(paths.builtin("tasks")), _from_entry_points]
    sources += [lambda d=d: _from_folder(Path(d)) for d in tasks_dirs]
    sources.append(lambda: list(ADDED.values()))
    for source in sources:
        for t in source():
            if t.name in found and found[t.name].source != t.source:
                log.warning(
                    "transfer-eval: task %r from %s overrides the one from %s", t.name, t.source, found[t.name].source
                )
            found[t.name] = t
    return found


def resolve(name: str, tasks: dict[str, Task]) -> Task:
    if name not in tasks:
        hint = "(see `transfer-eval list tasks`; add one with --tasks-dir DIR, or give folder:PATH or hf:PATH)"
        raise unknown_name("task", name, tasks, hint=hint)
    return tasks[name]
