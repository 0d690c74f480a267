"""Per-task deltas: the trained tensors of one run, written as a safetensors file beside the shared checkpoint.

`size` is what a result records as bytes_per_task (the file's real size); `save` keeps the file (atomically);
`metadata` says which run it belongs to; `apply` loads it into a model built from the shared checkpoint, which
then gives back that run's model and its test predictions exactly.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from transfer_eval import io
from transfer_eval.errors import UserError

FORMAT = "transfer-eval delta v1: load with transfer_eval.checkpoints.apply_delta"  # = deltas.apply


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save(
    tensors: dict[str, torch.Tensor],
    path: str | Path,
    metadata: dict[str, str] | None = None,
    hint: str = "or give --save-delta a folder on another disk",
) -> int:
    """Write the delta to `path` (never half-written under that name); returns its size in bytes."""
    from safetensors.torch import save_file

    with io.replacing(path, what="a per-task delta", hint=hint) as tmp:
        save_file(_cpu(tensors), str(tmp), metadata=metadata)
    return os.path.getsize(path)


def size(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Bytes the delta takes as a safetensors file (written to a temporary folder and measured)."""
    with tempfile.TemporaryDirectory() as d:
        return save(tensors, os.path.join(d, "delta.safetensors"), metadata, hint="or set TMPDIR to a larger disk")


def file_name(run) -> str:
    """The file name of a run's delta in a --save-delta folder: checkpoint, task, mode, seed, protocol."""
    return f"{run.checkpoint.name}__{run.task.name}__{run.mode.name}__seed{run.seed}__{run.protocol_hash}.safetensors"


def metadata(run, data_config: dict) -> dict[str, str]:
    return {
        "checkpoint": run.checkpoint.name,
        "weights_sha256": run.weights_sha256,
        "task": run.task.name,
        "task_version": str(run.task.version),
        "mode": run.mode.name,
        "num_classes": str(run.task.num_classes),
        "resolution": str(data_config["input_size"][-1]),
        "protocol_hash": run.protocol_hash,
        "seed": str(run.seed),
        "format": FORMAT,
        # a mode that changes the model's structure records the fields that shape it (LoRA's rank, alpha)
        **({k: str(run.recipe[k]) for k in run.mode.defaults} if run.mode.prepare else {}),
    }


def apply(model, path: str | Path) -> dict:
    """Load a per-task delta (as written by `run --save-delta`) into a model built from the shared checkpoint;
    returns the delta's metadata. Every tensor must exist in the model with the same shape. A delta of a mode that
    changes the model's structure (LoRA) first gets that change, with the fields it records (rank and alpha)."""
    from safetensors import safe_open

    from transfer_eval import modes

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    mode = modes.MODES.get(meta.get("mode", ""))
    own = model.state_dict()
    if mode is not None and mode.prepare is not None and any(k not in own for k in tensors):
        fields = {k: meta.get(k) for k in mode.defaults}
        if any(v is None for v in fields.values()):
            raise UserError(
                f"delta {path} holds {mode.name} tensors but not its {', '.join(sorted(fields))}; "
                f"rebuild it with `run --save-delta`"
            )
        modes.prepare(mode, model, {k: type(mode.defaults[k])(v) for k, v in fields.items()})
        own = model.state_dict()
    bad = [k for k, v in tensors.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise UserError(
            f"delta {path} does not fit this model: {', '.join(bad[:5])}; build the checkpoint with "
            f"the task's class count and resolution first"
        )
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v)
    return meta
