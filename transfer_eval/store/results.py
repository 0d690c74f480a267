"""The Result record and the results store (SQLite by default; PostgreSQL for a `postgresql://` URL).

One row per run key (checkpoint, weights_sha256, task, task_version, mode, protocol_hash, seed); a second write
of the same key replaces the first inside one transaction, so a key never has two rows and a failed write leaves
none. Per-sample test predictions are kept beside each row (compressed), for paired comparisons.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from transfer_eval.errors import UserError
from transfer_eval.store import databases

KEY = ("checkpoint", "weights_sha256", "task", "task_version", "mode", "protocol_hash", "seed")
# The store's schema version (SQLite's user_version). 1: the record of suite 0.1 (stores written before the version
# was kept read as 0, and are migrated as 1); 2: `curves` and `limit_per_split`; 3: the cost that tells the
# parameter-efficient methods apart (`params_backbone`, `params_head`, `deployed_gflops_per_image`); 4: calibration
# (`ece`, `nll`, `temperature`, `ece_scaled`, `nll_scaled`) and each test image's probabilities beside its top-5
# (`predictions.probs`); labels may be label sets (N x M, padded with -1: ImageNet ReaL, ObjectNet).
SCHEMA_VERSION = 4


@dataclass
class Result:
    # key
    checkpoint: str
    weights_sha256: str
    task: str
    task_version: int
    mode: str
    protocol_hash: str
    seed: int
    run_id: int | None = None
    status: str = "ok"  # ok | failed
    error: str | None = None
    # accuracy
    top1: float | None = None
    top5: float | None = None
    balanced_top1: float | None = None  # mean per-class recall over the classes present in test
    val_top1: float | None = None
    shots: int | None = None  # few-shot runs: examples per class
    n_test: int | None = None
    limit_per_split: int | None = (
        None  # --limit N: at most N examples per split, a quick look (never a full run's result)
    )
    split_manifest: str | None = None  # digest of the test split's sample ids and labels
    skipped_images: int = 0  # unreadable images left out (--bad-images skip), over all splits read
    skipped_files: list = field(default_factory=list)  # their ids (the first 100)
    # protocol and selection
    resolution: int | None = None
    recipe: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)
    val_holdout: dict | None = None
    curves: dict | None = None  # fine-tuning: each phase's loss and lr every few steps, and each lr's val top-1
    # compute (GFLOPs: 1 multiply-add = 2 FLOPs; GMACs = GFLOPs / 2)
    fwd_gflops_per_image: float | None = None
    fwd_gmacs_per_image: float | None = None
    train_gflops_per_image: float | None = None
    train_pflops_total: float | None = None
    train_seconds: float | None = None
    train_images_per_second: float | None = None
    eval_images_per_second: float | None = None
    peak_memory_mb: float | None = None
    device: str | None = None
    precision: str | None = None
    input_pipeline: str | None = None  # where images were resized: cpu, cpu+image-cache, device-resize from WxH
    compiled: bool = False  # trained through torch.compile
    world_size: int = 1
    micro_batch_size: int | None = None  # the micro-batch training ran with (smaller than the recipe's after OOM)
    oom_backoffs: int = 0  # how often an out-of-memory error halved it (the effective batch is kept)
    gpu_hours: float | None = None
    # parameter sharing
    params_total: int | None = None
    params_trainable: int | None = None
    params_per_task: int | None = None
    bytes_per_task: int | None = None
    # the trainable parameters of the backbone and of the head apart (the published PEFT columns exclude the head),
    # and the forward FLOPs of the deployed task: after merging (SSF, LoRA: the backbone's), with the method's
    # modules where it keeps them (adapters, prompts). None: a result stored before schema 3.
    params_backbone: int | None = None
    params_head: int | None = None
    deployed_gflops_per_image: float | None = None
    # calibration of the test probabilities (None: a mode without probabilities, few-shot ridge, or a result stored
    # before schema 4): expected calibration error over 15 equal-width bins of top-1 confidence and the mean
    # negative log-likelihood of the true class (Guo et al. 2017); both again after temperature scaling with one
    # scalar `temperature` fitted on val by minimising its NLL (never on test)
    ece: float | None = None
    nll: float | None = None
    temperature: float | None = None
    ece_scaled: float | None = None
    nll_scaled: float | None = None
    # provenance
    suite_version: str | None = None
    git_commit: str | None = None
    torch_version: str | None = None
    timm_version: str | None = None
    torchvision_version: str | None = None
    command: str | None = None
    started: str | None = None
    finished: str | None = None

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, k) for k in KEY)

    def to_dict(self) -> dict:
        return asdict(self)


_JSON_FIELDS = {"recipe", "selection", "val_holdout", "skipped_files", "curves"}


def _sql_type(f, types: dict) -> str:
    t = str(f.type)
    if "int" in t or "bool" in t:
        return types["int"]
    if "float" in t:
        return types["float"]
    return types["text"]


_COLUMNS = [f.name for f in fields(Result) if f.name != "run_id"]


def _schema(db) -> list[str]:
    t = db.types
    return [
        f"""CREATE TABLE IF NOT EXISTS results (
    run_id {db.run_id},
    {", ".join(f"{f.name} {_sql_type(f, t)}" for f in fields(Result) if f.name != "run_id")},
    UNIQUE ({", ".join(KEY)})
)""",
        f"""CREATE TABLE IF NOT EXISTS predictions (
    run_id {t["int"]} PRIMARY KEY REFERENCES results(run_id) ON DELETE CASCADE,
    labels {t["blob"]} NOT NULL,
    top5 {t["blob"]} NOT NULL,
    probs {t["blob"]}
)""",
    ]


PROBS = ("top1", "top2", "top3", "top4", "top5", "true")  # the columns of a run's stored probabilities


def _checked_probs(probs, n: int) -> np.ndarray:
    probs = np.asarray(probs, np.float16)
    if probs.shape != (n, len(PROBS)):
        raise ValueError(f"probabilities must be N x {len(PROBS)} ({', '.join(PROBS)}), got {probs.shape}")
    return probs


def _pack(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return zlib.compress(buf.getvalue())


def _unpack(b) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(bytes(b))), allow_pickle=False)


def _value(result: Result, column: str):
    v = getattr(result, column)
    if column in _JSON_FIELDS:
        return json.dumps(v, sort_keys=True)
    return int(v) if isinstance(v, bool) else v


class Store:
    """The results database: `Store(path or postgresql:// URL)`, then `has`, `put`, `get`, `query`. A SQLite file
    that does not exist yet is made by the first `put`: opening a store makes nothing on disk."""

    def __init__(self, target: str | Path):
        self.target = str(target) if databases.is_url(str(target)) else Path(target)
        self.path = databases.shown(self.target)  # what messages name (a URL without its password)
        self._open(create=False)  # a SQLite file is made at the first write: a refused run leaves no store behind

    def _open(self, create: bool) -> None:
        self._database = db = databases.open_database(self.target, create)
        try:
            self._migrate()
        except UserError:
            db.close()
            raise
        except db.errors as e:
            db.close()
            raise UserError(f"results store {self.path} is not a transfer-eval results database ({e})") from None

    @property
    def database(self):
        """The database (SQLite or PostgreSQL). A SQLite file that was not there when the store was opened reads as
        an empty store, made of nothing on disk, until it is written (`put` makes it) or another process makes it."""
        if getattr(self._database, "stand_in", False) and Path(self.target).exists():
            self._database.close()
            self._open(create=False)
        return self._database

    def _writable(self):
        """The database to write: a store that is not there yet is made now (its file, the schema); where that
        fails (a full disk), the empty file SQLite began is removed, so no store is left that is not one."""
        if getattr(self.database, "stand_in", False):
            self._database.close()
            try:
                self._open(create=True)
            except BaseException:
                for f in (self.target, Path(f"{self.target}-wal"), Path(f"{self.target}-shm")):
                    if f.is_file() and f.stat().st_size == 0:  # begun here: a store another process made has bytes
                        f.unlink(missing_ok=True)
                raise
        return self._database

    @classmethod
    def existing(cls, target=None, first: str = "`transfer-eval run ...`", missing_ok: bool = False) -> "Store | None":
        """A store to read (`target`, else the default): a missing file is bad input (None with `missing_ok`),
        never an empty store to create; `first` says what fills one."""
        from transfer_eval import paths

        target = target or paths.default_results()
        if not databases.is_url(str(target)) and not Path(target).is_file():
            if missing_ok:
                return None
            raise UserError(f"no results store at {target}; run {first} first, or give --results DB")
        return cls(target)

    @property
    def db(self):  # the raw connection (sqlite3 or psycopg)
        return self.database.db

    def _migrate(self):
        """The schema, at SCHEMA_VERSION: a new store gets it; a store written by an older version gains the
        record's newer fields (empty for its old rows) and the new version number, in one transaction; a store of
        a newer version is refused."""
        db = self._database
        version = db.version()
        if version > SCHEMA_VERSION:
            raise UserError(
                f"results store {self.path} has schema version {version}, newer than this transfer-eval reads "
                f"({SCHEMA_VERSION}); upgrade transfer-eval (pip install -U transfer-eval) to read it"
            )
        if version == SCHEMA_VERSION:
            return
        with db.transaction(lock_key="schema"):
            for statement in _schema(db):
                db.execute(statement)
            have = db.columns()
            for f in fields(Result):
                if f.name not in have:
                    db.execute(f"ALTER TABLE results ADD COLUMN {f.name} {_sql_type(f, db.types)}")
            if "probs" not in db.columns("predictions"):
                db.execute(f"ALTER TABLE predictions ADD COLUMN probs {db.types['blob']}")
            db.set_version(SCHEMA_VERSION)

    def close(self):
        self._database.close()

    def has(self, key: tuple) -> bool:
        where = " AND ".join(f"{k} = ?" for k in KEY)
        row = self.database.execute(f"SELECT status FROM results WHERE {where}", key).fetchone()
        return row is not None and row[0] == "ok"

    def put(
        self,
        result: Result,
        labels: np.ndarray | None = None,
        top5: np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> int:
        """Insert or replace the row of `result.key`, with its per-sample predictions, atomically. `labels`: N, or
        N x M label sets padded with -1 (inference.truth); `top5`: N x 5 class indices, best first; `probs`: where
        the mode gives probabilities, N x 6 (PROBS): the top-5 classes' probabilities, then the true class's (NaN
        where the truth is a set), stored as float16."""
        values = [_value(result, c) for c in _COLUMNS]
        where = " AND ".join(f"{k} = ?" for k in KEY)
        db = self._writable()
        # one transaction: the old row and its predictions go only if the new ones land
        with db.transaction(lock_key=json.dumps(list(result.key), default=str)):
            db.execute(f"DELETE FROM results WHERE {where}", result.key)
            run_id = db.insert(
                f"INSERT INTO results ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", values
            )
            if labels is not None and top5 is not None:
                db.execute(
                    "INSERT INTO predictions (run_id, labels, top5, probs) VALUES (?, ?, ?, ?)",
                    (
                        run_id,
                        _pack(np.asarray(labels, np.int32)),
                        _pack(np.asarray(top5, np.int32)),
                        None if probs is None else _pack(_checked_probs(probs, len(top5))),
                    ),
                )
        result.run_id = run_id
        return run_id

    def _rows(self, sql: str, args=()) -> list[Result]:
        with self.database.guard():
            cur = self.database.execute(sql, args)
            names, rows = [d[0] for d in cur.description], cur.fetchall()
        out = []
        for row in rows:
            d = dict(zip(names, row))
            for c in _JSON_FIELDS:
                d[c] = json.loads(d[c]) if d[c] is not None else None
            d["compiled"] = bool(d.get("compiled"))
            out.append(Result(**d))
        return out

    def get(self, run_id: int) -> Result | None:
        rows = self._rows("SELECT * FROM results WHERE run_id = ?", (run_id,))
        return rows[0] if rows else None

    def get_key(self, key: tuple) -> Result | None:
        where = " AND ".join(f"{k} = ?" for k in KEY)
        rows = self._rows(f"SELECT * FROM results WHERE {where}", key)
        return rows[0] if rows else None

    def predictions(self, run_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels N, top-5 class indices N x 5, best first) of a run's test split."""
        row = self.database.execute("SELECT labels, top5 FROM predictions WHERE run_id = ?", (run_id,)).fetchone()
        return (_unpack(row[0]), _unpack(row[1])) if row else None

    def probabilities(self, run_id: int) -> np.ndarray | None:
        """N x 6 float16 (PROBS) of a run's test split: the probabilities of its top-5 classes, best first, then of
        the true class (NaN where the truth is a label set); None where the mode gives none (few-shot ridge) or the
        result was stored before schema 4."""
        row = self.database.execute("SELECT probs FROM predictions WHERE run_id = ?", (run_id,)).fetchone()
        return _unpack(row[0]) if row and row[0] is not None else None

    def query(self, checkpoints=(), tasks=(), modes=(), status: str | None = "ok") -> list[Result]:
        clauses, args = [], []
        for col, vals in (("checkpoint", checkpoints), ("task", tasks), ("mode", modes)):
            if vals:
                clauses.append(f"{col} IN ({', '.join('?' * len(vals))})")
                args += list(vals)
        if status:
            clauses.append("status = ?")
            args.append(status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._rows(f"SELECT * FROM results {where} ORDER BY run_id", args)

    def copy_to(self, other: "Store") -> tuple[int, int]:
        """Every result of this store, with its predictions, into `other` (a key already there is replaced by the
        same result, and one already there is left alone: copying twice writes nothing the second time). Returns
        (copied, of which new to `other`)."""
        copied = new = 0
        for r in self.query(status=None):
            there = other.get_key(r.key)
            if there is not None and (there.finished, there.status) == (r.finished, r.status):
                continue  # this very result is there already
            new += there is None
            preds, probs = self.predictions(r.run_id), self.probabilities(r.run_id)
            r.run_id = None
            other.put(r, *(preds if preds is not None else (None, None)), probs)
            copied += 1
        return copied, new
