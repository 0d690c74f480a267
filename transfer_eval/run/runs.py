"""A planned run: checkpoint x task x mode x fully resolved recipe x seed, and its key (what the store finds it
by). `runner.plan` makes them; the preflight (`checks`), the stages and `execution` read them. It sits below all
of them, so that each imports it and none imports the runner."""

from __future__ import annotations

from dataclasses import dataclass

from transfer_eval import protocol
from transfer_eval.checkpoints import Checkpoint
from transfer_eval.methods import sources
from transfer_eval.methods.modes import Mode
from transfer_eval.tasks import Task


@dataclass(frozen=True)
class Run:
    checkpoint: Checkpoint
    task: Task
    mode: Mode
    seed: int
    recipe: dict  # fully resolved: the mode's defaults, then the task's, then the user's overrides
    weights_sha256: str
    limit: int | None = None  # at most this many examples per split (--limit): a quick look, with a key of its own
    precision: str = "auto"  # --precision (devices.py): auto keeps results equal across devices; fp32, bf16 chosen

    @property
    def protocol_hash(self) -> str:
        return protocol.protocol_hash(self.mode.name, self.mode.version, self.recipe, self.limit, self.precision)

    @property
    def key(self) -> tuple:
        return (
            self.checkpoint.name,
            self.weights_sha256,
            self.task.name,
            self.task.version,
            self.mode.name,
            self.protocol_hash,
            self.seed,
        )

    def label(self) -> str:
        shots = f" / {self.recipe['shots']}-shot" if self.mode.stage == "fewshot" else ""
        if self.mode.stage == "knn":
            shots = f" / k {','.join(str(k) for k in self.recipe['k'])}"
        limit = f" / limit {self.limit}" if self.limit is not None else ""
        prec = f" / {self.precision}" if self.precision != "auto" else ""
        shots += f" / {sources.describe(self.recipe)}" if self.mode.optional and sources.describe(self.recipe) else ""
        return f"{self.checkpoint.name} / {self.task.name} / {self.mode.name}{shots} / seed {self.seed}{limit}{prec}"
