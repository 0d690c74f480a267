"""The databases a results Store can live in, behind one small interface: SQLite (a file, the embedded default)
and PostgreSQL (a `postgresql://` URL, for stores that many nodes share: SQLite's locking is not safe on the
network filesystems of clusters). Each gives the same schema, types and transactions; the Store's SQL is
written once, with `?` placeholders.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import tempfile
import time
from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.io import full_error, is_full, room_for

URL_PREFIXES = ("postgresql://", "postgres://")


def is_url(target) -> bool:
    return isinstance(target, str) and target.startswith(URL_PREFIXES)


def shown(target) -> str:
    """A store's name for messages: a URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(target)) if is_url(target) else str(target)


def open_database(target, create: bool = True):
    """The database at `target`. A SQLite file that does not exist yet is made only with `create`; without it,
    an empty database in memory stands in for it (`stand_in`), checked as the file would be, and nothing is made on
    disk (the Store makes the file at its first write)."""
    return Postgres(target) if is_url(target) else SQLite(Path(target), create)


def _try_making(path: Path) -> None:
    """Raise OSError where the file `path` could not be made (its folders, then a file beside it); leaves nothing."""
    made = []
    try:
        for folder in reversed([p for p in path.parents if not p.exists()]):
            folder.mkdir()
            made.append(folder)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    finally:
        for folder in reversed(made):
            folder.rmdir()


class SQLite:
    types = {"int": "INTEGER", "float": "REAL", "text": "TEXT", "blob": "BLOB"}
    run_id = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: Path, create: bool = True):
        if path.exists() and path.is_dir():
            raise UserError(f"results store {path} is a folder; give a file path with --results")
        self.path = path
        self.stand_in = not path.exists() and not create  # an empty database in memory until the first write
        if not path.exists():
            where = next((p for p in path.parents if p.exists()), Path("."))
            if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
                raise UserError(
                    f"results store {path} cannot be created: {where} is not a folder you can write; "
                    f"give --results a path you can write"
                )
        if not path.exists():
            try:
                with room_for(f"the results store {path}", where, "or give --results a file on another disk"):
                    if self.stand_in:
                        _try_making(path)
                    else:
                        path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(
                    f"results store {path} cannot be created ({e.strerror or e}); give --results a path you can write"
                ) from None
        if self.stand_in:
            self.journal, self.errors = "MEMORY", (sqlite3.DatabaseError,)
            self.db = sqlite3.connect(":memory:")
            return
        from transfer_eval.store.filesystems import network_filesystem

        # WAL needs memory shared by the processes of one host: on a network filesystem, the rollback journal
        self.journal = "DELETE" if network_filesystem(path) else "WAL"
        try:
            self.db = sqlite3.connect(str(path), timeout=60)
            self._wal()
        except sqlite3.DatabaseError as e:
            raise self.error(e) from None
        self.errors = (sqlite3.DatabaseError,)

    def error(self, e: sqlite3.DatabaseError) -> UserError:
        """One line for what SQLite reports about the file or its disk (its other errors are bugs, and stay)."""
        text = str(e)
        if is_full(e):
            return full_error(f"the results store {self.path}", self.path.parent, "or give --results another disk")
        if "readonly" in text or "unable to open" in text or "disk I/O" in text:
            return UserError(
                f"results store {self.path} cannot be written ({text}); give --results a path you can write"
            )
        if "locked" in text:
            return UserError(
                f"results store {self.path} stayed locked by another process for over 60 s ({text}); on a shared "
                f"or network disk, use a postgresql:// URL (--results) instead"
            )
        return UserError(
            f"results store {self.path} is damaged or not a transfer-eval SQLite database ({text}); restore it from a "
            f"copy, or give --results another file"
        )

    @contextlib.contextmanager
    def guard(self):
        """Inside, SQLite's errors about the file (damaged, full, locked, read-only) are one-line UserErrors."""
        try:
            yield
        except sqlite3.OperationalError as e:
            raise self.error(e) from None
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:  # IntegrityError, ProgrammingError, ...: the suite's bugs
                raise
            raise self.error(e) from None

    def _wal(self, patience: float = 60.0):
        """Switching a new file to WAL takes a lock that SQLite does not wait for, so processes opening one new
        store together (torchrun, parallel runs) retry for a while."""
        deadline, delay = time.monotonic() + patience, 0.05
        while True:
            try:
                self.db.execute(f"PRAGMA journal_mode={self.journal}")
                self.db.execute("PRAGMA foreign_keys=ON")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def execute(self, sql: str, args=()):
        with self.guard():
            return self.db.execute(sql, tuple(args))

    @contextlib.contextmanager
    def transaction(self, lock_key: str | None = None):
        """One write transaction (SQLite takes the database's write lock: writers queue, up to 60 s)."""
        self.db.isolation_level = None
        try:
            self.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:  # SQLite has rolled back by itself after some errors (a full disk)
                    self.db.execute("ROLLBACK")
                raise
            self.execute("COMMIT")
        finally:
            self.db.isolation_level = ""

    def insert(self, sql: str, args) -> int:
        return self.execute(sql, args).lastrowid

    def columns(self, table: str = "results") -> set[str]:
        return {row[1] for row in self.execute(f"PRAGMA table_info({table})")}

    def version(self) -> int:
        return self.execute("PRAGMA user_version").fetchone()[0]

    def set_version(self, version: int) -> None:
        self.execute(f"PRAGMA user_version = {int(version)}")

    def close(self):
        self.db.close()


class Postgres:
    types = {"int": "BIGINT", "float": "DOUBLE PRECISION", "text": "TEXT", "blob": "BYTEA"}
    run_id = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"

    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError:
            raise UserError(
                "a postgresql:// results store needs psycopg: pip install 'transfer-eval[postgres]'"
            ) from None
        self.psycopg, self.url = psycopg, url
        try:
            self.db = psycopg.connect(url, autocommit=True, connect_timeout=30)
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"results store {shown(url)}: cannot connect ({first})") from None
        self.errors = (psycopg.Error,)
        with self.transaction(lock_key="schema"):  # openers of a new database take turns creating it
            self.db.execute("CREATE TABLE IF NOT EXISTS transfer_eval_meta (name TEXT PRIMARY KEY, value TEXT)")

    @contextlib.contextmanager
    def guard(self):
        """Inside, the server's disk filling up and a lost connection are one-line UserErrors."""
        errors = self.psycopg.errors
        try:
            yield
        except (errors.DiskFull, errors.OutOfMemory) as e:
            raise UserError(
                f"results store {shown(self.url)}: the server is out of room ({str(e).strip().splitlines()[0]}); "
                f"nothing of this write was kept; free space on the server, then run the same command again"
            ) from None
        except self.psycopg.OperationalError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"results store {shown(self.url)}: the connection failed ({first})") from None

    def execute(self, sql: str, args=()):
        with self.guard():
            return self.db.execute(sql.replace("?", "%s"), tuple(args))

    @contextlib.contextmanager
    def transaction(self, lock_key: str | None = None):
        """One transaction; with `lock_key`, writers of the same key (a run key, the schema) take turns (an
        advisory lock held until it ends), so a key never ends with two rows."""
        with self.guard(), self.db.transaction():
            key = int.from_bytes(hashlib.sha256(str(lock_key).encode()).digest()[:8], "big", signed=True)
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            yield

    def insert(self, sql: str, args) -> int:
        return self.execute(sql + " RETURNING run_id", args).fetchone()[0]

    def columns(self, table: str = "results") -> set[str]:
        rows = self.db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "AND table_schema = current_schema()",
            (table,),
        )
        return {r[0] for r in rows}

    def version(self) -> int:
        row = self.db.execute("SELECT value FROM transfer_eval_meta WHERE name = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def set_version(self, version: int) -> None:
        self.db.execute(
            "INSERT INTO transfer_eval_meta (name, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (str(int(version)),),
        )

    def close(self):
        self.db.close()
