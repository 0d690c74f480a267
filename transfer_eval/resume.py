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
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from transfer_eval import io

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
    def __init__(self, folder: Path, every_steps: int = 0, every_seconds: float = 600.0):
        self.folder = Path(folder)
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self._last = time.monotonic()

    @property
    def exists(self) -> bool:
        return self.folder.is_dir() and any(self.folder.iterdir())

    # -- phases finished (one lr of the grid, or the retraining) --------------------------------------------

    def progress(self) -> dict:
        f = self.folder / "progress.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def record(self, **items) -> None:
        from transfer_eval import distributed

        if not distributed.is_main():
            return
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
        with io.replacing(self.folder / f"{phase}.pt") as tmp:
            torch.save(state, tmp)
        self._last = time.monotonic()

    def load(self, phase: str, model, optimizer, scheduler) -> dict | None:
        """Restore a phase's checkpoint into model, optimiser, scheduler and RNGs; its step and extras."""
        f = self.folder / f"{phase}.pt"
        if not f.is_file():
            return None
        state = torch.load(f, map_location="cpu", weights_only=True)
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
        with io.replacing(self.folder / f"{name}.pt") as tmp:
            torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)

    def load_tensors(self, name: str) -> dict | None:
        f = self.folder / f"{name}.pt"
        return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None

    def remove(self) -> None:
        from transfer_eval import distributed

        if not distributed.is_main():
            return
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _atomic_json(path: Path, obj: dict) -> None:
        io.write_text(path, json.dumps(obj))


def _jsonable(obj):
    """RNG states as nested lists of ints and strings: loadable with weights_only=True."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, list)):
        return [_jsonable(o) for o in obj]
    return obj


def _tuples(obj):
    return tuple(_tuples(o) for o in obj) if isinstance(obj, list) else obj
