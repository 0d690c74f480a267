"""Small file helpers written once: a file appears whole under its name, or not at all; a full disk is one line
that says where and what to do."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from transfer_eval.errors import UserError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# how torch.save, safetensors and SQLite word it (their errors are not OSErrors with an errno)
_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def is_full(e: BaseException, folder: str | Path | None = None) -> bool:
    """Whether `e`, raised while writing into `folder`, is the disk (or quota) filling up. torch.save reports a
    failed write only as a RuntimeError ("unexpected pos"); so one where the folder has under 1 MiB free counts."""
    if isinstance(e, OSError) and e.errno is not None:  # the kernel's own word
        return e.errno in _FULL_ERRNOS
    if any(w in str(e) for w in _FULL_WORDS):
        return True
    if folder is None or not isinstance(e, RuntimeError):
        return False
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def full_error(what: str, folder: str | Path, hint: str = "") -> UserError:
    """The one line for a full disk: what was being written, where, that nothing of it was kept, what to do."""
    return UserError(
        f"no space left on the disk of {folder} while writing {what}; nothing of it was kept. "
        f"Free some space there{', ' + hint if hint else ''}, then run the same command again"
    )


@contextlib.contextmanager
def room_for(what: str, folder: str | Path, hint: str = "") -> Iterator[None]:
    """Inside, a write that fails because the disk is full raises `full_error` instead."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if is_full(e, folder):
            raise full_error(what, folder, hint) from None
        raise


_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask, read without changing it where the kernel says it (Linux's /proc/self/status, since
    4.7); elsewhere set and restored at once, under a lock, so no other thread of ours creates a file meanwhile."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def as_open_makes(path: str | Path) -> None:
    """Give a file made by `tempfile.mkstemp` (mode 0600) the mode `open()` would have given it: 0666 less the
    user's umask, so a report copied to a web server or a cache shared by a team is readable as the user meant."""
    os.chmod(path, 0o666 & ~umask())


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = "", what: str | None = None, hint: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write to (the same folder, so the rename is atomic; `suffix` for
        writers that pick the format from the name). When the block ends, the file is renamed onto `path`; when the
        block raises, it is removed: readers, and a crash, never see half a file under the name. The file gets the
    mode `open()` would give it (the user's umask), not the temporary file's 0600. A full disk is
        `full_error` naming `what` (default: the file) with `hint`."""
    path = Path(path)
    what = what or str(path)
    with room_for(what, path.parent, hint):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        as_open_makes(tmp)
        os.replace(tmp, path)
    except UserError:
        raise
    except Exception as e:
        full = is_full(e, path.parent)  # asked before the partial file goes, while the disk is still full
        tmp.unlink(missing_ok=True)
        if full:
            raise full_error(what, path.parent, hint) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, what: str | None = None, hint: str = "") -> None:
    with replacing(path, what=what, hint=hint) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str, what: str | None = None, hint: str = "") -> None:
    with replacing(path, what=what, hint=hint) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
