"""Per-task deltas: the trained tensors of one run, written as a safetensors file beside the shared checkpoint.

`size` is what a result records as bytes_per_task (the size the file has: computed from safetensors' format, no file
written, so a k-NN memory of millions of features costs no temporary disk); `save` keeps the file (atomically);
`metadata` says which run it belongs to and what serving it needs (the mode and its version, the resolved recipe,
the class names, the data config, the weights digest: JSON strings), so that `transfer-eval predict` serves the task
from the file alone; `read` opens a file with each way it can be wrong as one line, and `served` parses what a
delta describes; `apply` loads it into a model built from the shared checkpoint, which then gives back that run's
model and its test predictions exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from transfer_eval import io
from transfer_eval.errors import UserError

# v2: the file describes its task (recipe, classes, data config: SERVED); v1 files carry only the run's names
FORMAT = (
    "transfer-eval delta v2: serve with `transfer-eval predict`, or load with transfer_eval.checkpoints.apply_delta"
)
SERVED = ("mode_version", "stage", "recipe", "classes", "data_config", "chosen", "precision")  # JSON strings, v2


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


# safetensors' dtypes in the order of its Dtype enum: a file holds its tensors by descending dtype, then by name
SAFETENSORS_DTYPES = (
    "BOOL F4 F6_E2M3 F6_E3M2 U8 I8 F8_E5M2 F8_E4M3 F8_E8M0 F8_E4M3FNUZ F8_E5M2FNUZ I16 U16 F16 BF16 I32 U32 F32 C64 "
    "F64 I64 U64"
).split()
TORCH_DTYPES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
}


def size(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Bytes the delta takes as a safetensors file, from its format (8 bytes of header length; the JSON header,
    compact, padded with spaces to a multiple of 8; the tensors' bytes) without writing it. A dtype outside
    TORCH_DTYPES is measured by writing the file to a temporary folder."""
    if any(t.dtype not in TORCH_DTYPES for t in tensors.values()):
        with tempfile.TemporaryDirectory() as d:
            return save(tensors, os.path.join(d, "delta.safetensors"), metadata, hint="or set TMPDIR to a larger disk")
    rank = {name: i for i, name in enumerate(SAFETENSORS_DTYPES)}
    order = sorted(tensors, key=lambda k: (-rank[TORCH_DTYPES[tensors[k].dtype]], k.encode()))
    header: dict = {} if metadata is None else {"__metadata__": metadata}
    offset = 0
    for name in order:
        t = tensors[name]
        n = t.numel() * t.element_size()
        header[name] = {"dtype": TORCH_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return 8 + -(-len(text) // 8) * 8 + offset


def file_name(run) -> str:
    """The file name of a run's delta in a --save-delta folder: checkpoint, task, mode, seed, protocol, each name in
    its `safe_name` form (the names of registered checkpoints and tasks as they are, so earlier files keep theirs)."""
    ck, task = safe_name(run.checkpoint.name), safe_name(run.task.name)
    return f"{ck}__{task}__{run.mode.name}__seed{run.seed}__{run.protocol_hash}.safetensors"


SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a name that is a file name on every OS as it is
COLUMNS = re.compile(r"(:[A-Za-z_]+=[^:/\\]*)+$")  # hf:PATH:image=...:label=...: the columns after the path


def safe_name(name: str) -> str:
    """`name` as one part of a file name, the same on every OS: as it is where it is one already (registered names);
    else the kind before its first ':' (folder, hf), the last part of the path it names, and a digest of the whole
    name (two folders of one base name get two files): `folder:/data/shapes4` is `folder-shapes4-b616cfb4`. No
    `/`, `\\` or `:`."""
    if SAFE.fullmatch(name) and not name.endswith("."):
        return name
    kind, _, where = name.partition(":") if ":" in name else ("", "", name)
    base = re.split(r"[/\\]", COLUMNS.sub("", where).rstrip("/\\"))[-1]
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip("._-")[:48] for p in (kind, base)]
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return "-".join([p for p in parts if p] + [digest])


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def metadata(run, data_config: dict, chosen: dict | None = None) -> dict[str, str]:
    """The delta file's metadata: which run it belongs to and what serving its task needs (`served` reads it).
    `data_config` is the one the run read its images with (the checkpoint's, the task's input settings over it, at
    the run's resolution); `chosen` what the stage chose on val (the k-NN's k)."""
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
        "mode_version": str(run.mode.version),
        "stage": run.mode.stage,
        "recipe": _json(run.recipe),
        "classes": _json(list(run.task.classes) if run.task.classes else None),
        "data_config": _json(dict(data_config)),
        "chosen": _json(chosen or {}),
        "precision": run.precision,
        # a probe's feature source and normalisation where set (methods/sources.py): what its classifier reads
        **{k: str(run.recipe[k]) for k in run.mode.optional if k in run.recipe},
    }


def read(path: str | Path, described: bool = True) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a delta file; a missing file, or one that is not a safetensors file (of this suite,
    unless `described` is False: `apply` loads any tensors that fit), is one line."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        raise UserError(f"delta {path} is a folder; give one of the .safetensors files `run --save-delta` wrote in it")
    if not path.is_file():
        raise UserError(f"delta {path} does not exist (deltas are written by `run --save-delta FOLDER`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a transfer-eval delta (not a safetensors file: {text[:120]})") from None
    if described and (not meta.get("format", "").startswith("transfer-eval delta") or "mode" not in meta):
        raise UserError(f"{path} is not a transfer-eval delta (a safetensors file without a delta's metadata)")
    return meta, tensors


def served(meta: dict[str, str], path: str | Path) -> dict:
    """What a delta describes, parsed: mode, mode_version, stage, recipe, classes (names, or None), num_classes,
    data_config (tuples where timm gives tuples), chosen, precision, with the names and digest as written. A delta
    written before deltas described their task is one line saying to run again."""
    missing = [k for k in SERVED if k not in meta]
    if missing:
        raise UserError(
            f"delta {path} was written by an older transfer-eval and does not describe its task "
            f"(no {', '.join(missing)}); rerun its run with --force --save-delta FOLDER to write one predict can serve"
        )
    try:
        out = {k: json.loads(meta[k]) for k in ("recipe", "classes", "data_config", "chosen")}
        out["mode_version"], out["num_classes"] = int(meta["mode_version"]), int(meta["num_classes"])
    except ValueError as e:
        raise UserError(f"delta {path}: damaged metadata ({e})") from None
    out["data_config"] = {k: tuple(v) if isinstance(v, list) else v for k, v in out["data_config"].items()}
    for k in ("checkpoint", "weights_sha256", "task", "mode", "stage", "precision", "seed"):
        out[k] = meta.get(k, "")
    return out


def apply(model, path: str | Path) -> dict:
    """Load a per-task delta (as written by `run --save-delta`) into a model built from the shared checkpoint;
    returns the delta's metadata. Every tensor must exist in the model with the same shape. A delta of a mode that
    changes the model's structure (LoRA, SSF, VPT, adapters) first gets that change, with the recipe it records (a
    format-1 file: the fields it records; lora's version 1 recorded rank and alpha, not targets and dropout); a
    mode that merges is then merged, as its run's test was scored."""
    from transfer_eval.methods import lora, modes

    meta, tensors = read(path, described=False)
    mode = modes.MODES.get(meta.get("mode", ""))
    if mode is not None and mode.prepare is not None and any(k not in model.state_dict() for k in tensors):
        if "recipe" in meta:
            recipe = served(meta, path)["recipe"]
        else:  # a v1 file: the fields that shape the model, as strings
            older = lora.VERSION_1 if mode.name == "lora" else {}  # what a lora delta of version 1 did not record
            fields = {k: meta.get(k, older.get(k)) for k in mode.defaults}
            if any(v is None for v in fields.values()):
                raise UserError(
                    f"delta {path} holds {mode.name} tensors but not its {', '.join(sorted(fields))}; "
                    f"rebuild it with `run --save-delta`"
                )
            recipe = {k: type(mode.defaults[k])(v) for k, v in fields.items()}
        modes.prepare(mode, model, recipe)
    load_into(model, tensors, path)
    if mode is not None:
        modes.merge(mode, model)  # a mode that merges (SSF, LoRA) was scored merged: so is the model it gives back
    return meta


def load_into(model, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Copy a delta's tensors into the model's own; each must exist there with the same shape."""
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
