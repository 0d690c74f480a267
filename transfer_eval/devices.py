"""The run's device: which one, at what precision, what it is called in a record, and its peak memory."""

from __future__ import annotations

import contextlib
import contextvars
import os
import resource
from dataclasses import dataclass

import torch

from transfer_eval.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is visible here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu or cuda[:N]") from None


# ---------------------------------------------------------------------------------------------------- precision
#
# What a run computes in, by phase: "features" (the probes' frozen features), "train" (fine-tuning
# steps) and "eval" (scoring val and test with a model). Each is "fp32" (strict: TF32 off on CUDA) or "bf16"
# (bf16 autocast, on any device: torch.autocast("cpu", torch.bfloat16) reproduces it on a CPU).
#
# Measured on the demo (BENCHMARKS.md, "The same numbers on every device"): bf16 features moved the random-init
# vit_demo's probe from 87.20% to 82.56% (C 316 -> 10), and TF32-rounded matmul inputs (emulated) by up to 1.1
# points; bf16 *training* moves fine-tuning within its seed-to-seed noise. So `auto` trains in bf16 on CUDA (the
# step's speed) and extracts features and scores in strict fp32 everywhere: a probe gives the same C and the same
# accuracy on a GPU as on a CPU. `fp32` and `bf16` set every phase; `bf16` features are cached apart.

PRECISIONS = ("auto", "fp32", "bf16")
PHASES = ("features", "train", "eval")


@dataclass(frozen=True)
class Precision:
    """The arithmetic of each phase of a run: "fp32" or "bf16" (autocast)."""

    features: str = "fp32"
    train: str = "fp32"
    eval: str = "fp32"

    def describe(self) -> str:
        """What the record's `precision` says: one word where every phase agrees, else each phase's."""
        words = {"fp32": "fp32", "bf16": "bf16-autocast"}
        phases = [getattr(self, p) for p in PHASES]
        if len(set(phases)) == 1:
            return words[phases[0]]
        return ", ".join(f"{p} {words[v]}" for p, v in zip(PHASES, phases))


def precision_policy(name: str, device: torch.device) -> Precision:
    """The phases' precision for `--precision NAME` on this device (see the comment above)."""
    if name not in PRECISIONS:
        raise UserError(f"--precision {name!r}: use {', '.join(PRECISIONS)}")
    if name == "auto":
        return Precision(train="bf16" if device.type == "cuda" else "fp32")
    return Precision(name, name, name)


_POLICY: contextvars.ContextVar[Precision | None] = contextvars.ContextVar("transfer_eval_precision", default=None)


@contextlib.contextmanager
def strict_fp32():
    """Within the block, fp32 matmuls and convolutions on CUDA are full fp32 (no TF32: it moved the demo's probe
    by up to 1.1 points); restored afterwards. Nothing changes on a CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def using(policy: Precision):
    """Within the block (a run), `autocast` follows `policy`, and fp32 work outside it (an fp32 run's backward
    passes) is strict fp32 too."""
    token = _POLICY.set(policy)
    try:
        with strict_fp32():
            yield policy
    finally:
        _POLICY.reset(token)


def current(device: torch.device) -> Precision:
    """The precision in force: the run's (`using`), else `auto`'s on this device."""
    return _POLICY.get() or precision_policy("auto", device)


@contextlib.contextmanager
def autocast(device: torch.device, phase: str = "train"):
    """The phase's arithmetic under the precision in force: bf16 autocast where it says bf16, else strict fp32
    (so every fp32 forward pass is strict, inside a run or not: `transfer-eval features`, `bench`)."""
    on = getattr(current(device), phase) == "bf16"
    with (
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=on),
        contextlib.nullcontext() if on else strict_fp32(),
    ):
        yield


def precision(device: torch.device) -> str:
    """The record's `precision` for the policy in force on this device."""
    return current(device).describe()


class PeakMemory:
    """Peak memory over a block: CUDA's peak allocation on GPU, the process's peak resident set on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._reset_rss_peak()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mb = self._rss_peak_mb()
        return False

    def _reset_rss_peak(self):
        # Linux: writing 5 to clear_refs resets VmHWM, so the peak is this block's, not the process's lifetime.
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    @staticmethod
    def _rss_peak_mb() -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return (
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()})"
    )
