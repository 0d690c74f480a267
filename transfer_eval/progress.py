"""Progress for every long step. On a terminal: a tqdm bar. Elsewhere (Slurm logs, pipes): a plain line through
logging every PLAIN_SECONDS (TRANSFER_EVAL_PROGRESS_SECONDS; 0 turns them off). Both give the rate, the time left
in this loop and, where more of the same work follows in the run (further learning rates, the retraining), the
whole run's time left. TQDM_DISABLE=1 turns the bar off (plain lines then, as in a log)."""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)
PLAIN_SECONDS = 60.0


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """An iterable over `iterable` that shows where it stands; `set_postfix` adds figures (the loss) to it."""

    def __init__(self, iterable, desc: str, unit: str, total: int | None = None, more: int = 0):
        self.iterable, self.desc, self.unit, self.more = iterable, desc, unit, more
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix: dict = {}
        tty = os.environ.get("TQDM_DISABLE") != "1" and sys.stderr.isatty()
        self.bar = (
            tqdm(iterable, desc=desc, unit=unit, leave=False, dynamic_ncols=True, total=self.total) if tty else None
        )
        self.every = 0.0 if tty else float(os.environ.get("TRANSFER_EVAL_PROGRESS_SECONDS", PLAIN_SECONDS))

    def __iter__(self):
        start = last = time.monotonic()
        done = 0
        for item in self.bar if self.bar is not None else self.iterable:
            yield item
            done += 1
            now = time.monotonic()
            if self.bar is not None:
                if self.more and done % 20 == 0:
                    self.bar.set_postfix(**self.postfix, run_left=self.left(done, now - start, whole=True))
            elif self.every and now - last >= self.every:
                last = now
                log.info("%s", self.line(done, now - start))

    def left(self, done: int, elapsed: float, whole: bool = False) -> str | None:
        rate = done / elapsed if elapsed > 0 else 0.0
        if not self.total or rate <= 0:
            return None
        return duration((self.total - done + (self.more if whole else 0)) / rate)

    def line(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}, "
        text += f"{rate:.3g} {self.unit}/s"
        text += "".join(f", {k} {v}" for k, v in self.postfix.items())
        if self.left(done, elapsed):
            text += f", {self.left(done, elapsed)} left"
            if self.more:
                text += f" (run: about {self.left(done, elapsed, whole=True)} left)"
        return text

    def set_postfix(self, **figures) -> None:
        self.postfix.update(figures)
        if self.bar is not None:
            self.bar.set_postfix(**self.postfix)


def bar(iterable, desc: str, unit: str = "it", total: int | None = None, more: int = 0) -> Progress:
    """Progress over `iterable`. `more`: how many further units of the same work follow in this run, so that the
    estimate covers the whole run."""
    return Progress(iterable, desc, unit, total, more)
