"""One run trained by one process at a time: the lock on a run key.

A fine-tuning run keeps its training checkpoints in the cache, in one folder per run key (execution.checkpoints_for),
not per store: two commands of one key (two stores sharing the default cache, a sweep started twice, a Slurm job
launched twice) would otherwise train into, and resume from, that one folder at once. Before such a run starts, its
process takes an exclusive lock on `<that folder>.lock` and writes who holds it (host, pid, the store it writes,
the run). A second process of the same key then:

- writes the same store: waits for the first, then takes its stored result and skips the run (where the first
  failed or was killed, the run is still missing: the second runs it, resuming from the training checkpoints);
- writes another store: says in one line which process (host, pid) holds the run and leaves it alone.

The lock is the kernel's (`flock`): it goes with the process that holds it, so a process killed with -9 leaves no
lock behind, and the next command of that key resumes from its training checkpoints as before. flock is kept by
the server on NFS (Linux maps it onto NFS's byte-range locks), CephFS, GPFS and BeeGFS, and on Lustre mounted with
`flock`; where the filesystem refuses locks (Lustre's default `noflock`, some FUSE filesystems), the run goes on
unlocked, said once in a warning, as the store warns about SQLite on a network filesystem.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from transfer_eval import distributed, io, paths
from transfer_eval.errors import UserError
from transfer_eval.methods.resume import Preempted, requested
from transfer_eval.store import filesystems
from transfer_eval.store.results import Result, Store

try:
    import fcntl
except ImportError:  # not a POSIX system: runs go on unlocked
    fcntl = None

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how often a waiting process tries the lock again
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # the filesystem keeps no locks
_warned: set[str] = set()  # the filesystems said to keep no locks, once each


def locked(run) -> bool:
    """Whether a run takes the lock: the runs that keep training checkpoints (fine-tuning)."""
    return run.mode.stage == "finetune"


def lock_path(run) -> Path:
    """The lock file of a run: beside its training checkpoints' folder (which a stored result removes)."""
    from transfer_eval.run.execution import checkpoints_for

    return checkpoints_for(run).folder.with_suffix(".lock")


def store_identity(store: Store) -> str:
    """What tells two stores apart across processes: a PostgreSQL URL (without its password), or a SQLite file's
    real path, with the host where that path is on a local disk (the same path on two hosts is two files)."""
    if not isinstance(store.target, Path):
        return store.path
    real = os.path.realpath(store.target)
    return real if filesystems.network_filesystem(real) else f"{socket.gethostname()}:{real}"


class Claim:
    """What `claim` decided for one run: `run` (this process runs it, holding the lock until the `with` block
    ends), else skip it, with `stored` the result another process stored meanwhile (same store) or None (another
    store's process holds it, said in one line)."""

    def __init__(self, run: bool, stored: Result | None = None, fd: int | None = None, path: Path | None = None):
        self.run, self.stored, self.fd, self.path = run, stored, fd, path

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Give the lock back; the lock file goes first, so a process that opens it afterwards finds a new one."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # closing the file gives the lock back
        self.fd = None


FREE = Claim(True)  # a run that takes no lock


def claim(run, store: Store, prefix: str = "", force: bool = False) -> Claim:
    """Take the lock on `run` for this command, waiting while a process of the same store holds it; see the module's
    docstring. With the lock taken, a result of the run stored meanwhile by another command (while this one waited,
    or since this one planned its runs: a sweep launched twice) is taken instead of running the run again; `force`
    runs it again unless this command waited for the one that stored it.

    Under torchrun rank 0 tries the lock and every process follows what it found (they try again together, so no
    collective waits longer than POLL_SECONDS). A stop asked for while waiting (SIGTERM, SIGUSR1) raises Preempted:
    nothing of the run has started."""
    if not locked(run):
        return FREE
    main = distributed.is_main()
    path, ours = lock_path(run), store_identity(store)
    waited_for = None  # who held the run when this process began to wait
    while True:
        fd, holder = _try(path, run, ours) if main else (None, None)
        state = distributed.broadcast(_state(fd, holder, ours))
        if state == "elsewhere":  # a process of another store holds it: left alone
            if main:
                log.warning(
                    "%s: not run here: %s is running it for another store (%s), in the same training checkpoints; "
                    "left alone: run this command again once it has finished",
                    prefix,
                    _who(holder),
                    holder.get("store"),
                )
            return Claim(False)
        if state == "run":
            held = Claim(True, fd=fd, path=path)
            stored = store.get_key(run.key) if main and (waited_for is not None or not force) else None
            if distributed.broadcast(stored is not None and stored.status == "ok"):
                held.release()
                if main:
                    by = _who(waited_for) if waited_for else "another command"
                    log.info("%s: stored meanwhile by %s as run %s, skipped", prefix, by, stored.run_id)
                return Claim(False, stored)
            return held
        if state == "wait" and waited_for is None:
            waited_for = holder or {}
            if main:
                log.info("%s: %s is running it into this store; waiting for it to finish", prefix, _who(holder))
        if requested():
            raise Preempted(f"{requested()} while {run.label()} waited for another process: the same command runs it")
        time.sleep(POLL_SECONDS if state == "wait" else 0.05)


def _state(fd: int | None, holder: dict | None, ours: str) -> str:
    """What one try at the lock found: run (the lock is ours, or the filesystem keeps none), wait (a process of this
    store holds it), elsewhere (a process of another store does), or again (its holder has not written itself
    down yet: tried again at once)."""
    if fd is not None or holder is None:
        return "run"
    if not holder:
        return "again"
    return "wait" if holder.get("store") == ours else "elsewhere"


def _who(holder: dict | None) -> str:
    holder = holder or {}
    return f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"


def _try(path: Path, run, store: str) -> tuple[int | None, dict | None]:
    """One try at the lock: (the open lock file, None) where taken; (None, who holds it: {} while it has not
    written itself down yet) where another process holds it; (None, None) where the filesystem keeps no locks
    (warned once: the run goes on unlocked)."""
    if fcntl is None:
        return None, None
    while True:
        try:
            with io.room_for("a run's lock file", path.parent, paths.CACHE_HINT):
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(
                f"cannot make the lock file {path} ({e.strerror or e}); set TRANSFER_EVAL_CACHE to a folder you "
                f"can write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None, holder
            if e.errno in UNSUPPORTED:
                _warn_unlocked(path, e)
                return None, None
            raise
        if not _same_file(fd, path):  # its holder removed it as we opened it: the lock of a file now gone
            os.close(fd)
            continue
        me = {"host": socket.gethostname(), "pid": os.getpid(), "store": store, "run": run.label()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        return fd, None


def _holder(fd: int) -> dict:
    """Who holds a lock file (what its holder wrote in it); {} where nothing is written yet."""
    try:
        holder = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def _warn_unlocked(path: Path, e: OSError) -> None:
    kind = filesystems.filesystem_type(path) or "this"
    if kind not in _warned:
        _warned.add(kind)
        log.warning(
            "transfer-eval: warning: the %s filesystem of %s keeps no file locks (%s): two commands of one run key "
            "could train it at once there; mount it with locks (Lustre: -o flock) or set TRANSFER_EVAL_CACHE to a "
            "disk that keeps them",
            kind,
            path.parent,
            e.strerror or e,
        )
