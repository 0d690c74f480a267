"""The faults of shared machines, each through the real program: a disk filling up while the feature cache, a
delta, a training checkpoint or the store is written (a real, tiny tmpfs, mounted in a user namespace); damaged
stores, cache entries and training checkpoints; a results path that cannot be written; SQLite on a network
filesystem. Each asserts the message, the exit status and that nothing is left half-written."""

import builtins
import errno
import io as stdio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import cli, hermetic_env, json_lines, stored_rows

LINEAR = ("run", "-c", "vit_demo", "-t", "digits", "-m", "linear")
ATTENTION = ("run", "-c", "vit_demo", "-t", "digits", "-m", "attention", "--set", "steps=6")
QUICK = ("--limit", "200")  # fewer images to score where the test is about the files, not the numbers


def assert_fails_cleanly(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, and the last line the one error line holding every fragment."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("transfer-eval: error:"), proc.stderr[-3000:]
    for f in fragments:
        assert f in last, (f, last)
    return last


# ------------------------------------------------------------------------------------------ a disk that fills


@pytest.fixture(scope="session")
def namespaces(tmp_path_factory):
    """Mounting a small tmpfs in a user namespace (util-linux's unshare), or skip saying why."""
    d = tmp_path_factory.mktemp("mount-check")
    try:
        p = subprocess.run(
            ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=64k none "{d}"'],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        pytest.skip("unshare (util-linux) not found: the full-disk tests mount a tiny tmpfs with it")
    if p.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs in a user namespace here ({p.stderr.strip()[:200]}); full-disk tests need it"
        )


def in_namespace(disk: Path, mount: str, body: str, env=None, cwd=None):
    """Run shell `body` (`te ARGS` is the real program) in a mount namespace where `disk` is mounted by `mount`
    (shell, with $DISK). Returns the process (its stdout up to the listing) and the files left under the disk,
    listed before the namespace, and the mount, go."""
    disk.mkdir(parents=True, exist_ok=True)
    script = f"""{mount} || exit 99
te() {{ "$PY" -m transfer_eval "$@"; }}
{body}
rc=$?
echo "::files"
find "$DISK" -type f -printf '%P\\n' | sort
exit $rc
"""
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=hermetic_env({"PY": sys.executable, "DISK": disk, **(env or {})}),
    )
    assert proc.returncode != 99, proc.stderr
    out, _, files = proc.stdout.partition("::files\n")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, proc.stderr), files.split()


def on_tiny_disk(disk: Path, size: str, body: str, env=None, cwd=None):
    return in_namespace(disk, f'mount -t tmpfs -o size={size} none "$DISK"', body, env, cwd)


class _FillingFile:
    """A file opened for writing on the emulated disk: its writes take room, and fail with ENOSPC past it."""

    def __init__(self, file, disk):
        self._file, self._disk = file, disk

    def write(self, data):
        n = len(memoryview(data).cast("B")) if not isinstance(data, str) else len(data.encode())
        if n > self._disk["room"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._file.name)
        self._disk["room"] -= n
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __iter__(self):
        return iter(self._file)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def on_filling_disk(disk: Path, size: int, args, env=None):
    """Where no tmpfs can be mounted: the real program in this process (conftest.cli), every write into `disk`
    failing with ENOSPC, as the kernel's would, once `size` bytes are written there. Python's own opens are
    wrapped; torch.save and safetensors' save_file (native writers) serialise to bytes and write those through
    the same wrapped open. Returns the process and the files left under `disk`."""
    disk.mkdir(parents=True, exist_ok=True)
    room = {"room": size}
    real_open, real_save, real_save_file = builtins.open, torch.save, safetensors.torch.save_file

    def on_disk(file) -> bool:
        return isinstance(file, (str, os.PathLike)) and Path(os.path.abspath(file)).is_relative_to(disk)

    def opening(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        return _FillingFile(f, room) if on_disk(file) and any(c in mode for c in "wax+") else f

    def saving(obj, f, *a, **kw):
        if not on_disk(f):
            return real_save(obj, f, *a, **kw)
        buf = stdio.BytesIO()
        real_save(obj, buf, *a, **kw)
        with opening(f, "wb") as out:
            out.write(buf.getvalue())

    def saving_file(tensors, filename, metadata=None):
        if not on_disk(filename):
            return real_save_file(tensors, filename, metadata=metadata)
        with opening(filename, "wb") as out:
            out.write(safetensors.torch.save(tensors, metadata=metadata))

    with pytest.MonkeyPatch.context() as patch:
        for target, name, fake in (
            (builtins, "open", opening),
            (stdio, "open", opening),  # pathlib's open
            (torch, "save", saving),
            (safetensors.torch, "save_file", saving_file),
        ):
            patch.setattr(target, name, fake)
        proc = cli(*args, env=env)
    return proc, sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file())


@pytest.fixture(params=["tmpfs", "enospc"])
def full_disk(request):
    """How a test fills a disk: `tmpfs`, the real program on a tiny tmpfs in a user namespace (skipped where
    unshare is refused); `enospc`, writes made to fail with ENOSPC in this process, which runs everywhere.
    Returns fill(disk, size_bytes, args, env) -> (process, files left under disk)."""
    if request.param == "tmpfs":
        request.getfixturevalue("namespaces")

        def fill(disk, size, args, env=None):
            return on_tiny_disk(disk, f"{size // 1024}k", "te " + " ".join(f'"{a}"' for a in args), env)

        return fill
    return on_filling_disk


def test_the_disk_filling_up_while_a_feature_cache_entry_is_written(full_disk, tmp_path):
    db = tmp_path / "results.sqlite"
    cache = tmp_path / "cache"
    proc, files = full_disk(cache, 64 * 1024, [*LINEAR, "--results", db], {"TRANSFER_EVAL_CACHE": cache})
    assert_fails_cleanly(proc, "no space left on the disk of", "a feature cache entry", "TRANSFER_EVAL_CACHE")
    assert files == []  # no partial entry, no temporary folder
    assert stored_rows(db) == 0


def test_the_disk_filling_up_while_a_delta_is_written(full_disk, tmp_path):
    db = tmp_path / "results.sqlite"
    deltas = tmp_path / "deltas"
    proc, files = full_disk(deltas, 4 * 1024, [*LINEAR, *QUICK, "--save-delta", deltas, "--results", db])
    assert_fails_cleanly(proc, "no space left on the disk of", "a per-task delta", "--save-delta")
    assert files == []
    assert stored_rows(db) == 0  # the run failed: no result that looks like a success


def test_the_disk_filling_up_while_a_training_checkpoint_is_written(full_disk, tmp_path):
    db = tmp_path / "results.sqlite"
    cache = tmp_path / "cache"
    proc, files = full_disk(
        cache, 64 * 1024, [*ATTENTION, "--checkpoint-every", 3, "--results", db], {"TRANSFER_EVAL_CACHE": cache}
    )
    assert_fails_cleanly(proc, "no space left on the disk of", "a training checkpoint", "TRANSFER_EVAL_CACHE")
    assert not [f for f in files if ".part" in f or f.endswith(".pt")], files  # only whole files remain
    assert stored_rows(db) == 0


def test_the_disk_filling_up_while_the_store_is_written(namespaces, tmp_path):
    """A store with one result, on a disk with room; the disk fills while the run extracts features; its result
    cannot be written: one line, exit 2, no row more, and the store whole (integrity_check) once there is room."""
    err = tmp_path / "run.err"
    check = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); q = lambda s: c.execute(s).fetchone()[0]; "
        "print('::rows', q('select count(*) from results'), q('pragma integrity_check'))"
    )
    first = (  # the store exists before the run (a new one is made only by its first result)
        "import sys, numpy as np; from transfer_eval.store.results import Result, Store; "
        "Store(sys.argv[1]).put(Result('c', 'w', 'digits', 1, 'linear', 'p', 0), np.zeros(1), np.zeros((1, 5)))"
    )
    body = f""""$PY" -c "{first}" "$DISK/results.sqlite" || exit 98
te {" ".join(LINEAR)} --results "$DISK/results.sqlite" 2> "{err}" &
pid=$!
while kill -0 $pid 2>/dev/null && ! grep -q "running on" "{err}"; do sleep 0.1; done
dd if=/dev/zero of="$DISK/fill" bs=4k 2>/dev/null
wait $pid
rc=$?
cat "{err}" >&2
rm -f "$DISK/fill"
"$PY" -c "{check}" "$DISK/results.sqlite"
(exit $rc)"""
    # a fresh feature cache: extraction takes seconds, time enough for the disk to fill before the result is put
    proc, files = on_tiny_disk(tmp_path / "store", "1m", body, {"TRANSFER_EVAL_CACHE": tmp_path / "cache"})
    assert_fails_cleanly(proc, "no space left on the disk of", "the results store", "--results")
    assert "::rows 1 ok" in proc.stdout, proc.stdout
    assert not [f for f in files if ".part" in f], files


def test_a_store_that_cannot_hold_one_more_row_keeps_none_of_it(tmp_path):
    """SQLite's own full-database path (max_page_count): the write is refused whole, the store still reads."""
    from transfer_eval.errors import UserError
    from transfer_eval.store.results import Result, Store

    store = Store(tmp_path / "results.sqlite")
    base = dict(weights_sha256="w" * 64, task="digits", task_version=1, mode="linear", protocol_hash="p" * 16)
    store.put(Result(checkpoint="a", seed=0, top1=0.5, **base), np.zeros(10, np.int32), np.zeros((10, 5), np.int32))
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    rng = np.random.default_rng(0)
    labels, top5 = rng.integers(0, 1000, 20_000).astype(np.int32), rng.integers(0, 1000, (20_000, 5)).astype(np.int32)
    with pytest.raises(UserError, match="no space left on the disk of .* the results store"):
        store.put(Result(checkpoint="b", seed=0, top1=0.7, **base), labels, top5)
    assert [r.checkpoint for r in store.query()] == ["a"]
    assert store.db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 1
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ----------------------------------------------------------------------------------------------- damaged files


def _real_store(path: Path, rows: int = 40) -> None:
    from transfer_eval.store.results import Result, Store

    store = Store(path)
    for i in range(rows):
        r = Result("c", "w" * 64, "digits", 1, "linear", "p" * 16, i, top1=0.5, command="x" * 2000)
        store.put(r, np.zeros(500, np.int32), np.zeros((500, 5), np.int32))
    store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "overwritten"])
def test_a_damaged_store_is_one_line_for_reading_and_for_running(tmp_path, damage):
    db = tmp_path / "results.sqlite"
    _real_store(db)
    data = bytearray(db.read_bytes())
    if damage == "garbage":
        data = bytearray(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    elif damage == "truncated":
        data = data[: len(data) // 3]
    else:  # the pages after the first overwritten (the schema survives, the tables do not)
        data[4096:] = bytes(len(data) - 4096)
    db.write_bytes(bytes(data))
    for args in (("leaderboard",), LINEAR):
        proc = cli(*args, "--results", db)
        line = assert_fails_cleanly(proc, f"results store {db}")
        assert "damaged" in line or "not a transfer-eval" in line, line
        assert "running on" not in proc.stderr  # refused before any work


def test_a_damaged_feature_cache_entry_is_rebuilt_saying_so(tmp_path, monkeypatch):
    from transfer_eval.store.cache import features

    env = {"TRANSFER_EVAL_CACHE": tmp_path / "cache"}
    args = (*LINEAR, *QUICK, "--results", tmp_path / "results.sqlite", "--json")
    first = cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    entries = sorted((tmp_path / "cache" / "features").iterdir())
    assert len(entries) == 2  # train and val
    feats = entries[0] / "features.npy"
    feats.write_bytes(feats.read_bytes()[: feats.stat().st_size // 2])  # truncated
    (entries[1] / "about.json").write_text("{not json")
    second = cli(*args, "--force", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("is damaged") == 2 and "extracting its features again" in second.stderr
    assert json_lines(second.stdout)[0]["top1"] == json_lines(first.stdout)[0]["top1"]
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(tmp_path / "cache"))
    assert all(features.load(e.name) is not None for e in entries)  # rebuilt whole: both read back


def test_a_damaged_image_cache_entry_is_rebuilt_saying_so(tmp_path):
    import shutil

    from fixtures import flowers_cars

    flowers_cars.write_flowers(tmp_path / "data")  # images in files (digits' are in memory)
    cache = tmp_path / "cache"
    args = (
        *("run", "-c", "vit_demo", "-t", "flowers102", "-m", "linear", "--data-dir", tmp_path / "data"),
        *("--skip-verify", "--cache-images", "--results", tmp_path / "results.sqlite", "--json"),
    )
    first = cli(*args, env={"TRANSFER_EVAL_CACHE": cache})
    assert first.returncode == 0, first.stderr
    pixels = sorted((cache / "images").glob("*.u8"))
    assert pixels
    pixels[0].write_bytes(pixels[0].read_bytes()[:1000])  # truncated
    shutil.rmtree(cache / "features")  # so that the probe reads its images again
    second = cli(*args, "--force", env={"TRANSFER_EVAL_CACHE": cache})
    assert second.returncode == 0, second.stderr
    assert "decoded-image cache entry" in second.stderr and "decoding the split again" in second.stderr
    assert json_lines(second.stdout)[0]["top1"] == json_lines(first.stdout)[0]["top1"]
    assert pixels[0].stat().st_size > 1000


def test_training_checkpoints_of_another_version_or_recipe_are_ignored_saying_so(tmp_path, monkeypatch):
    """Checkpoints in the run's folder that another suite version or recipe wrote, or whose about.json is gone,
    are not resumed from (they are removed, saying so); a damaged one of this run trains again, saying so. All
    give the same result, that of a run from the start."""
    from transfer_eval.run import execution, runner

    cache = tmp_path / "cache"
    monkeypatch.setenv("TRANSFER_EVAL_CACHE", str(cache))
    args = (*ATTENTION, *QUICK, "--results", tmp_path / "results.sqlite", "--json", "--force")
    top1 = set()  # each case trains from the start: one result for all
    (run,) = runner.plan_named(["vit_demo"], ["digits"], ["attention"], overrides={"steps": 6}, limit=200)
    folder, identity = execution.checkpoints_for(run).folder, execution.checkpoints_for(run).identity
    cases = [
        ({**identity, "suite": "0.0.1"}, "of transfer-eval 0.0.1, not of this"),
        ({**identity, "recipe": {**identity["recipe"], "lr": 0.5}}, "of another recipe (lr 0.5, this run's 0.002)"),
        (None, "of an unknown run (no readable about.json)"),
        (identity, "lr0.002.pt is damaged"),
    ]
    for about, said in cases:
        folder.mkdir(parents=True, exist_ok=True)
        if about is not None:
            (folder / "about.json").write_text(json.dumps(about))
        (folder / "lr0.002.pt").write_bytes(b"not a checkpoint")
        proc = cli(*args, env={"TRANSFER_EVAL_CACHE": cache})
        assert proc.returncode == 0, proc.stderr
        assert said in proc.stderr, (said, proc.stderr)
        if about is not identity:
            assert "ignored; training from the start" in proc.stderr and "is damaged" not in proc.stderr
        top1.add(json_lines(proc.stdout)[0]["top1"])
        assert not folder.exists()  # the stored result removed them
    assert len(top1) == 1


def test_a_results_path_that_cannot_be_written(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for target, said in [
        (tmp_path / "file.txt" / "results.sqlite", "file.txt is not a folder you can write"),
        (Path("/proc/transfer-eval-test/results.sqlite"), "cannot be created"),
    ]:
        proc = cli(*LINEAR, "--results", target)
        assert_fails_cleanly(proc, f"results store {target}", said, "give --results a path you can write")
        assert "running on" not in proc.stderr


def test_a_read_only_store_is_one_line(namespaces, tmp_path):
    """A store on a read-only mount (EROFS): refused in one line before anything runs."""
    disk = tmp_path / "ro"
    disk.mkdir()
    _real_store(disk / "results.sqlite", rows=1)
    proc, files = in_namespace(
        disk,
        'mount --bind "$DISK" "$DISK" && mount -o remount,bind,ro "$DISK"',
        f'te {" ".join(LINEAR)} --results "$DISK/results.sqlite"',
    )
    assert_fails_cleanly(proc, "results store", "cannot be written", "give --results a path you can write")
    assert "running on" not in proc.stderr and files == ["results.sqlite"]


# ------------------------------------------------------------------------------------ network filesystems


TABLE = (
    "/dev/vda / ext4 rw,relatime 0 0\n"
    "server:/export {nfs} nfs4 rw,relatime 0 0\n"
    "fs1@tcp:/lustre {lustre} lustre rw 0 0\n"
)


def test_the_filesystem_of_a_path_comes_from_the_mount_table(tmp_path):
    from transfer_eval.store.filesystems import filesystem_type, mounts, network_filesystem

    nfs, lustre = tmp_path / "home dir", tmp_path / "scratch"
    nfs.mkdir()
    lustre.mkdir()  # a mount point is a folder
    escaped = str(nfs).replace(" ", "\\040")  # as the kernel writes a space in a mount point
    table = TABLE.format(nfs=escaped, lustre=lustre)
    assert (str(nfs), "nfs4") in mounts(table)  # octal escapes decoded
    assert network_filesystem(nfs / "results.sqlite", table) == "nfs4"  # a file yet to be made: its folder's
    assert network_filesystem(nfs / "deep" / "er" / "r.sqlite", table) == "nfs4"
    assert network_filesystem(lustre / "r.sqlite", table) == "lustre"
    assert filesystem_type(tmp_path / "other", table) == "ext4" and network_filesystem(tmp_path, table) is None
    assert network_filesystem(Path(f"{tmp_path}/home dirx"), table) is None  # a prefix of the name is not inside
    # a later mount on the same point hides the earlier one
    assert network_filesystem(nfs, table + f"/dev/sdb {escaped} xfs rw 0 0\n") is None


def _with_mounts(tmp_path: Path, *args, cwd=None) -> subprocess.CompletedProcess:
    """The real program, reading `tmp_path/mounts` as its mount table (tmp_path/nfs is an NFS mount there)."""
    (tmp_path / "nfs").mkdir(exist_ok=True)
    (tmp_path / "mounts").write_text(TABLE.format(nfs=tmp_path / "nfs", lustre=tmp_path / "lustre"))
    code = (
        "import sys; from pathlib import Path; from transfer_eval.store import filesystems; "
        f"filesystems.MOUNTS = Path({str(tmp_path / 'mounts')!r}); "
        "from transfer_eval.cli import main; sys.argv = ['transfer-eval', *sys.argv[1:]]; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=hermetic_env(),
        cwd=cwd or tmp_path,
        timeout=900,
    )


def test_a_sweep_refuses_sqlite_on_a_network_filesystem(tmp_path):
    db = tmp_path / "nfs" / "results.sqlite"
    proc = _with_mounts(
        tmp_path, "sweep", "-c", "vit_demo", "-t", "digits", "-m", "linear", "--results", db, "--dry-run"
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert f"results store {db} is a SQLite file on a nfs4 network filesystem" in line
    assert "postgresql://" in line
    assert not db.exists()
    # a store on a local disk is planned as before
    local = _with_mounts(tmp_path, "sweep", "-c", "vit_demo", "-t", "digits", "-m", "linear", "--results", "r.sqlite")
    assert local.returncode == 0 and "1 to run in 1 jobs" in local.stdout, local.stderr + local.stdout


def test_a_single_run_on_a_network_filesystem_warns_and_keeps_no_wal(tmp_path):
    db = tmp_path / "nfs" / "results.sqlite"
    proc = _with_mounts(tmp_path, *LINEAR, "--results", db)
    assert proc.returncode == 0, proc.stderr
    assert "warning: results store" in proc.stderr and "nfs4" in proc.stderr and "postgresql://" in proc.stderr
    assert stored_rows(db) == 1
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # WAL needs one host's shared memory
    assert not Path(f"{db}-wal").exists()
