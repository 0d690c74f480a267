"""Training checkpoints, so that a killed fine-tuning run resumes where it stopped.

A run's checkpoints live in one folder named after its run key (under $TRANSFER_EVAL_CACHE/resume). Each
training phase (one per learning rate tried, and the retraining) writes `<phase>.pt` every `every_steps` steps
or `every_seconds` seconds, atomically (write, then rename): the trainable parameters, the optimiser and
scheduler states, the RNG states and the step. `progress.json` records the phases already finished and their
val accuracy. A stored result removes the folder.

Pre-emption: while runs execute (`stop_on_signal`), SIGTERM and SIGUSR1 (what Slurm sends before it pre-empts or
times out a job) do not kill the process; they ask it to stop. A fine-tuning phase writes its training checkpoint
at the next step boundary and raises `Preempted`; the CLI exits with EXIT_PREEMPTED, nothing recorded as failed,
and the same command resumes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from transfer_eval import io, paths

log = logging.getLogger(__name__)
ABOUT = "about.json"  # the identity of the run the checkpoints belong to
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; distinct from 1 (a run failed) and 2 (bad input)
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
_requested: list[str] = []  # the name of the signal that asked this process to stop


class Preempted(Exception):
    """The process was asked to stop (SIGTERM, SIGUSR1); the training checkpoint needed to resume is written."""


def requested() -> str | None:
    """The signal that asked this process to stop, or None."""
    return _requested[0] if _requested else None


@contextlib.contextmanager
def stop_on_signal():
    """While inside, SIGTERM and SIGUSR1 ask for a stop (`requested()`) instead of ending the process. Outside the
    main thread (where Python cannot take signals) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum, frame):
        if not _requested:
            _requested.append(signal.Signals(signum).name)

    previous = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, ask)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()


class RunCheckpoints:
    """`identity` (the run key, the recipe, the suite's version) is written beside the checkpoints as `about.json`;
    `claim()` ignores (and removes), saying so, a folder whose checkpoints were written for another identity: by
    another version of the suite, or for another recipe."""

    def __init__(self, folder: Path, every_steps: int = 0, every_seconds: float = 600.0, identity: dict | None = None):
        self.folder = Path(folder)
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.identity = json.loads(json.dumps(identity or {}, default=str))  # as it reads back from the file
        self._last = time.monotonic()

    @property
    def exists(self) -> bool:
        return self.folder.is_dir() and any(self.folder.iterdir())

    def claim(self) -> bool:
        """Whether there are checkpoints of this very run to resume from; those of another are removed, saying so."""
        if not self.exists:
            return False
        try:
            theirs = json.loads((self.folder / ABOUT).read_text())
        except (OSError, ValueError):
            theirs = None
        why = _mismatch(theirs, self.identity)
        if why is None:
            return True
        log.warning(
            "transfer-eval: the training checkpoints in %s are %s: ignored; training from the start", self.folder, why
        )
        self.remove()
        return False

    def _write_about(self) -> None:
        if self.identity and not (self.folder / ABOUT).is_file():
            io.write_text(self.folder / ABOUT, json.dumps(self.identity), "a training checkpoint", paths.CACHE_HINT)

    # -- phases finished (one lr of the grid, or the retraining) --------------------------------------------

    def progress(self) -> dict:
        f = self.folder / "progress.json"
        try:
            return json.loads(f.read_text()) if f.is_file() else {}
        except ValueError as e:
            log.warning("transfer-eval: %s is damaged (%s): ignored; its finished phases train again", f, e)
            return {}

    def record(self, **items) -> None:
        from transfer_eval import distributed

        if not distributed.is_main():
            return
        self._write_about()
        self._atomic_json(self.folder / "progress.json", {**self.progress(), **items})

    # -- within a phase -------------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return time.monotonic() - self._last >= self.every_seconds

    def save(self, phase: str, step: int, model, optimizer, scheduler, extra: dict) -> None:
        from transfer_eval import distributed

        if not distributed.is_main():  # one writer; every process reads the same files on resume
            return
        state = {
            "step": step,
            "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "python": _jsonable(random.getstate()),
                "numpy": _jsonable(np.random.get_state()),
            },
            "extra": extra,
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        self._write_about()
        with io.replacing(self.folder / f"{phase}.pt", what="a training checkpoint", hint=paths.CACHE_HINT) as tmp:
            torch.save(state, tmp)
        self._last = time.monotonic()

    def load(self, phase: str, model, optimizer, scheduler) -> dict | None:
        """Restore a phase's checkpoint into model, optimiser, scheduler and RNGs; its step and extras."""
        state = self._read(self.folder / f"{phase}.pt")
        if state is None:
            return None
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in state["trainable"].items():
                params[n].copy_(v)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_tuples(state["rng"]["python"]))
        np_state = state["rng"]["numpy"]
        np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return state

    def save_tensors(self, name: str, tensors: dict) -> None:
        from transfer_eval import distributed

        if not distributed.is_main():
            return
        self._write_about()
        with io.replacing(self.folder / f"{name}.pt", what="a training checkpoint", hint=paths.CACHE_HINT) as tmp:
            torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)

    def load_tensors(self, name: str) -> dict | None:
        return self._read(self.folder / f"{name}.pt")

    @staticmethod
    def _read(f: Path) -> dict | None:
        """A checkpoint file's contents; None where missing, or damaged (said so; that phase trains again)."""
        if not f.is_file():
            return None
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("transfer-eval: the training checkpoint %s is damaged (%s): ignored; it trains again", f, first)
            return None

    def remove(self) -> None:
        from transfer_eval import distributed

        if not distributed.is_main():
            return
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _atomic_json(path: Path, obj: dict) -> None:
        io.write_text(path, json.dumps(obj), what="a training checkpoint", hint=paths.CACHE_HINT)


def _mismatch(theirs: dict | None, ours: dict) -> str | None:
    """Why checkpoints written for `theirs` cannot resume the run `ours`, or None."""
    if not ours:
        return None
    if not isinstance(theirs, dict):
        return "of an unknown run (no readable about.json)"
    if theirs.get("suite") != ours.get("suite"):
        return f"of transfer-eval {theirs.get('suite')}, not of this {ours.get('suite')}"
    a, b = theirs.get("recipe") or {}, ours.get("recipe") or {}
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if changed:
        return (
            "of another recipe (" + ", ".join(f"{k} {a.get(k)!r}, this run's {b.get(k)!r}" for k in changed[:3]) + ")"
        )
    if theirs != ours:
        return "of another run (its key differs)"
    return None


def _jsonable(obj):
    """RNG states as nested lists of ints and strings: loadable with weights_only=True."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, list)):
        return [_jsonable(o) for o in obj]
    return obj


def _tuples(obj):
    return tuple(_tuples(o) for o in obj) if isinstance(obj, list) else obj
