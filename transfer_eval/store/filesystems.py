"""Which filesystem a path lives on, from the mount table: SQLite is not safe on the network filesystems of
clusters (its WAL mode needs memory shared by the processes of one host, and its file locks are unreliable over
NFS, Lustre or GPFS), so a results store there is refused for sweeps and warned about for single runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transfer_eval.errors import UserError

log = logging.getLogger(__name__)

MOUNTS = Path("/proc/self/mounts")  # Linux; where it cannot be read, no path counts as on a network filesystem
NETWORK = {
    "9p",
    "afs",
    "beegfs",
    "ceph",
    "cifs",
    "fuse.ceph",
    "fuse.gcsfuse",
    "fuse.glusterfs",
    "fuse.juicefs",
    "fuse.rclone",
    "fuse.s3fs",
    "fuse.sshfs",
    "glusterfs",
    "gpfs",
    "lustre",
    "ncpfs",
    "nfs",
    "nfs4",
    "ocfs2",
    "panfs",
    "pvfs2",
    "smb3",
    "smbfs",
    "wekafs",
}
POSTGRES_HINT = "give --results (or TRANSFER_EVAL_RESULTS) a postgresql://USER@HOST/DB URL instead"


def _unescape(field: str) -> str:
    """The mount table writes space, tab, newline and backslash in paths as octal escapes (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(table: str | None = None) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, in the table's order (a later mount hides an earlier one)."""
    if table is None:
        try:
            table = MOUNTS.read_text()
        except OSError:
            return []
    out = []
    for line in table.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((_unescape(parts[1]), parts[2]))
    return out


def filesystem_type(path: str | Path, table: str | None = None) -> str | None:
    """The type of the filesystem `path` is on (its nearest existing folder's, for a file yet to be made)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    real = os.path.realpath(p)
    best, kind = -1, None
    for point, fstype in mounts(table):
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, kind = len(point), fstype
    return kind


def network_filesystem(path: str | Path, table: str | None = None) -> str | None:
    """The network filesystem type `path` is on (nfs, lustre, gpfs, ...), or None for a local one."""
    kind = filesystem_type(path, table)
    return kind if kind in NETWORK else None


def check_sqlite_store(path: str | Path, many_writers: bool) -> None:
    """A SQLite store on a network filesystem: refused where many processes write it (a sweep's jobs), warned
    about for one run (which works, without WAL, as long as nothing else writes the file meanwhile)."""
    kind = network_filesystem(path)
    if kind is None:
        return
    if many_writers:
        raise UserError(
            f"results store {path} is a SQLite file on a {kind} network filesystem, where SQLite's locks are "
            f"unreliable: a sweep's jobs could corrupt it or fail on 'database is locked'; {POSTGRES_HINT}"
        )
    log.warning(
        "transfer-eval: warning: results store %s is a SQLite file on a %s network filesystem: safe only while "
        "one process writes it (no WAL there); for several runs at once, %s",
        path,
        kind,
        POSTGRES_HINT,
    )
