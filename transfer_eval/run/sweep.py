"""`transfer-eval sweep`: plan the runs not yet stored and launch them as jobs, locally or on Slurm (submitit).

A job is one `transfer-eval run` command line: one run, or one group (a checkpoint x task with all its modes and
seeds). Every job writes to the same results store (SQLite in WAL mode takes concurrent writers), and a job that
finds its runs already stored skips them, so a sweep can be launched again to fill the gaps.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from transfer_eval.errors import UserError
from transfer_eval.methods import resume


@dataclass
class Job:
    name: str
    runs: list  # runs.Run
    argv: list[str]  # the `transfer-eval run` arguments


def _argv(runs, common: list[str]) -> list[str]:
    ckpts = sorted({r.checkpoint.name for r in runs})
    tasks = sorted({r.task.name for r in runs})
    modes = sorted({r.mode.name for r in runs})
    seeds = sorted({r.seed for r in runs})
    argv = [
        "run",
        "-c",
        ",".join(ckpts),
        "-t",
        ",".join(tasks),
        "-m",
        ",".join(modes),
        "--seed",
        ",".join(map(str, seeds)),
    ]
    argv += common
    shots = sorted({r.recipe["shots"] for r in runs if r.mode.stage == "fewshot"})
    if shots and len(runs) == 1:  # after the user's --set: this job runs exactly its one shot count
        argv += ["--set", f"shots=[{shots[0]}]"]
    return argv


def plan_jobs(runs, pending_keys: set, per: str, common: list[str]) -> list[Job]:
    """Jobs for the runs whose key is pending: one per run, or one per checkpoint x task."""
    todo = [r for r in runs if r.key in pending_keys]
    if per == "run":
        return [Job(r.label(), [r], _argv([r], common)) for r in todo]
    groups: dict[tuple, list] = {}
    for r in todo:
        groups.setdefault((r.checkpoint.name, r.task.name), []).append(r)
    # a group's command re-plans all its modes and seeds; runs already stored are skipped by that command
    return [Job(f"{ck} / {task}", rs, _argv(rs, common)) for (ck, task), rs in groups.items()]


def launch_local(jobs: list[Job], echo=print) -> list[int]:
    """One job after another in subprocesses; returns their exit codes."""
    codes = []
    for i, job in enumerate(jobs, 1):
        echo(f"[job {i}/{len(jobs)}] {job.name}: transfer-eval {shlex.join(job.argv)}", file=sys.stderr)
        codes.append(subprocess.run([sys.executable, "-m", "transfer_eval", *job.argv]).returncode)
    return codes


def launch_slurm(
    jobs: list[Job], folder: Path, partition: str | None, gpus: int, cpus: int, mem_gb: int, timeout_min: int
) -> list[str]:
    """Submit each job to Slurm through submitit; returns the job ids."""
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit: pip install 'transfer-eval[slurm]'") from None
    executor = submitit.AutoExecutor(folder=str(folder))
    params = {
        "gpus_per_node": gpus,
        "cpus_per_task": cpus,
        "mem_gb": mem_gb,
        "timeout_min": timeout_min,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_signal_delay_s": 180,  # USR1 this long before the time limit: time to write a training checkpoint
    }
    if partition:
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    ids = []
    for job in jobs:
        ids.append(executor.submit(RequeueingCommand([sys.executable, "-m", "transfer_eval", *job.argv])).job_id)
    return ids


class RequeueingCommand:
    """A Slurm job's `transfer-eval run` command, for submitit. Before Slurm pre-empts or times out the job it
    signals USR1 (submitit asks for it); submitit then calls `checkpoint`, which passes the signal on to the
    command (fine-tuning writes its training checkpoint at the next step and exits with EXIT_PREEMPTED), waits
    for it, and hands submitit the same command to requeue: the requeued job resumes where this one stopped."""

    def __init__(self, cmd: list[str], grace_seconds: float = 120.0):
        self.cmd, self.grace_seconds = list(cmd), grace_seconds
        self._proc = None

    def __call__(self) -> int:
        self._proc = subprocess.Popen(self.cmd)
        code = self._proc.wait()
        if code not in (0, resume.EXIT_PREEMPTED):
            raise RuntimeError(f"transfer-eval exited with status {code}: {shlex.join(self.cmd)}")
        return code

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)
            try:
                self._proc.wait(timeout=self.grace_seconds)
            except subprocess.TimeoutExpired:
                pass
        return DelayedSubmission(RequeueingCommand(self.cmd, self.grace_seconds))

    def __getstate__(self):  # what submitit pickles: the command, never a live process
        return {"cmd": self.cmd, "grace_seconds": self.grace_seconds, "_proc": None}
