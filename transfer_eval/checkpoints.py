"""The checkpoint registry (checkpoints.yaml plus user files) and model building through timm.

A Checkpoint names a timm architecture, where its weights come from, and how its inputs are preprocessed.
`build_model` turns one into a model with a fresh zero-initialised head for a task's classes, at the resolution
the recipe asks for (timm resamples the position embedding), and the data config its transforms follow.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transfer_eval import paths
from transfer_eval.errors import UserError, unknown_name

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
_FIELDS = {
    "model",
    "weights",
    "sha256",
    "family",
    "pretraining",
    "paper",
    "description",
    "seed",
    "model_args",
    "data_config",
    "probe",
}
_REQUIRED = ("model", "pretraining")
_DATA_CONFIG_KEYS = {"mean", "std", "interpolation", "crop_pct", "crop_mode", "input_size"}
BUILTIN = "<built-in checkpoints.yaml>"


@dataclass(frozen=True)
class Checkpoint:
    name: str
    model: str  # timm architecture, optionally with a pretrained tag: "deit3_base_patch16_224.fb_in1k"
    weights: str = "timm"  # timm | hf-hub:ORG/NAME | a local file | an https URL | none
    sha256: str | None = None
    family: str = ""
    pretraining: str = ""
    paper: str | None = None
    description: str = ""
    seed: int = 0  # the initialisation seed when weights is none
    model_args: dict = field(default_factory=dict)  # extra keyword arguments for timm.create_model
    data_config: dict = field(default_factory=dict)  # overrides of timm's pretrained data config
    probe: dict = field(default_factory=dict)  # what its paper probed (`--recipe paper`; methods/sources.py)
    source: str = BUILTIN  # the registry file that defined it, BUILTIN, or "timm" for a bare name

    @property
    def architecture(self) -> str:
        return self.model.split(".", 1)[0]

    @property
    def weights_kind(self) -> str:
        w = self.weights
        if w in ("timm", "none"):
            return w
        if w.startswith("hf-hub:"):
            return "hf-hub"
        if w.startswith(("https://", "http://")):
            return "url"
        return "file"

    def weights_path(self) -> Path:
        """A local weights file, relative paths taken from the registry file's folder."""
        p = Path(os.path.expanduser(self.weights))
        if p.is_absolute() or self.source == "timm":
            return p
        if self.source == BUILTIN:  # shipped weights live in the package, in a checkout and a wheel alike
            return paths.PACKAGE / p
        return Path(self.source).parent / p

    @property
    def offline(self) -> bool:
        """True where building the model needs no network."""
        return self.weights_kind == "none" or (self.weights_kind == "file" and self.weights_path().is_file())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["offline"] = self.offline
        return d


# --------------------------------------------------------------------------------------------------------------
# Registry files


def _parse_file(path: Path) -> dict[str, Checkpoint]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"registry file {path} does not exist") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"malformed registry file {where}: {problem}; fix the YAML there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"registry file {path} must map checkpoint names to entries, found a {type(raw).__name__}")
    lines = _entry_lines(text)
    out = {}
    for name, entry in raw.items():
        ck = from_entry(str(name), entry, f"{path}:{lines.get(str(name), '?')}", str(path))
        out[ck.name] = ck
    return out


def from_entry(name: str, entry, where: str, source: str) -> Checkpoint:
    """A registry entry (the fields of checkpoints.yaml), checked: `where` names it in error messages."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: entry {name!r} must be a mapping with at least 'model' and 'pretraining'")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise UserError(
            f"{where}: entry {name!r} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}"
        )
    missing = [f for f in _REQUIRED if not entry.get(f)]
    if missing:
        raise UserError(f"{where}: entry {name!r} is missing required field(s) {', '.join(missing)}")
    for key in ("model_args", "data_config"):
        if not isinstance(entry.get(key, {}) or {}, dict):
            raise UserError(f"{where}: entry {name!r}: {key} must be a mapping")
    bad = sorted(set(entry.get("data_config") or {}) - _DATA_CONFIG_KEYS)
    if bad:
        raise UserError(
            f"{where}: entry {name!r}: unknown data_config key(s) {', '.join(bad)}; "
            f"allowed: {', '.join(sorted(_DATA_CONFIG_KEYS))}"
        )
    from transfer_eval.methods import sources  # (the registry's probe field)

    probe = sources.registry_probe(entry.get("probe"), f"{where}: entry {name!r}")
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
        raise UserError(f"{where}: entry {name!r}: sha256 must be 64 hex digits in quotes, got {sha!r}")
    try:
        seed = int(entry.get("seed", 0))
    except (TypeError, ValueError):
        raise UserError(f"{where}: entry {name!r}: seed must be an integer, got {entry.get('seed')!r}") from None
    ck = Checkpoint(
        name=name,
        model=str(entry["model"]),
        weights=str(entry.get("weights", "timm")),
        sha256=sha.lower() if sha else None,
        family=str(entry.get("family") or ""),
        pretraining=str(entry["pretraining"]),
        paper=(str(entry["paper"]) if entry.get("paper") else None),
        description=str(entry.get("description") or ""),
        seed=seed,
        model_args=dict(entry.get("model_args") or {}),
        data_config=dict(entry.get("data_config") or {}),
        probe=probe,
        source=source,
    )
    if ck.weights_kind == "url" and not ck.sha256:
        raise UserError(f"{where}: entry {name!r} loads weights from a URL and needs its sha256")
    if ck.weights_kind == "file" and not ck.weights.endswith(WEIGHT_SUFFIXES):
        raise UserError(
            f"{where}: entry {name!r}: weights {ck.weights!r} is not timm, none, hf-hub:ORG/NAME, "
            f"an https URL or a file ending in {', '.join(WEIGHT_SUFFIXES)}"
        )
    return ck


# Checkpoints added in this process (transfer_eval.add_checkpoint: a notebook's, without a file); they come last in
# every registry, so they win over files of the same name.
ADDED: dict[str, Checkpoint] = {}


def _entry_lines(text: str) -> dict[str, int]:
    """Line numbers of the top-level keys, for error messages."""
    lines = {}
    for node_key, _ in getattr(yaml.compose(text), "value", []) or []:
        lines[str(node_key.value)] = node_key.start_mark.line + 1
    return lines


def load_registry(user_files=()) -> dict[str, Checkpoint]:
    """The built-in registry, then each user file in order (TRANSFER_EVAL_REGISTRY first), then the checkpoints
    added in this process; later entries win."""
    files = [paths.builtin("checkpoints.yaml")]
    env = os.environ.get("TRANSFER_EVAL_REGISTRY")
    if env:
        files += [Path(p) for p in env.split(os.pathsep) if p]
    files += [Path(p) for p in user_files if p]
    registry: dict[str, Checkpoint] = {}
    for f in files:
        parsed = _parse_file(f)
        if f == files[0]:
            parsed = {k: dataclasses.replace(v, source=BUILTIN) for k, v in parsed.items()}
        registry.update(parsed)
    registry.update(ADDED)
    return registry


def resolve(name: str, registry: dict[str, Checkpoint]) -> Checkpoint:
    """A registry name, or a bare timm architecture name (random init), or `arch.tag` (timm's pretrained weights)."""
    if name in registry:
        return registry[name]
    import timm

    arch, _, tag = name.partition(".")
    if timm.is_model(arch):
        if tag:
            if name not in timm.list_pretrained(arch + ".*"):
                raise UserError(
                    f'timm has no pretrained tag {name!r}; see `python -c "import timm; '
                    f"print(timm.list_pretrained('{arch}.*'))\"`"
                )
            return Checkpoint(name=name, model=name, weights="timm", pretraining="see timm", source="timm")
        return Checkpoint(
            name=name, model=name, weights="none", pretraining="none (random init, seed 0)", source="timm"
        )
    raise unknown_name(
        "checkpoint", name, registry, hint="(a registry name, a timm architecture, or add it with --registry FILE)"
    )


# --------------------------------------------------------------------------------------------------------------
# Weights digests: part of every run key


def file_sha256(path: Path) -> str:
    st = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(ck: Checkpoint) -> str:
    """sha256 identifying the weights without building the model.

    Files are hashed (and checked against the registry's sha256 when it gives one); URLs carry a verified
    sha256; timm and hf-hub tags are immutable names, so their digest is that of the name; random init is the
    digest of everything that determines it.
    """
    kind = ck.weights_kind
    if kind == "none":
        ident = json.dumps({"model": ck.model, "model_args": ck.model_args, "seed": ck.seed}, sort_keys=True)
        return hashlib.sha256(("none:" + ident).encode()).hexdigest()
    if kind == "url":
        return ck.sha256
    if kind == "file":
        p = ck.weights_path()
        if not p.is_file():
            raise UserError(f"checkpoint {ck.name!r}: weights file {p} does not exist")
        digest = file_sha256(p)
        if ck.sha256 and digest != ck.sha256:
            raise UserError(
                f"checkpoint {ck.name!r}: {p} has sha256 {digest}, the registry says {ck.sha256}; "
                f"the file is corrupt or not the one registered"
            )
        return digest
    ident = f"{kind}:{ck.weights if kind == 'hf-hub' else ck.model}"
    return hashlib.sha256(ident.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Loading weights safely


def load_state_dict(path: Path) -> dict:
    """Tensors from a .safetensors or a weights-only pickle; never runs code from the file."""
    import torch

    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise UserError(f"cannot read safetensors file {path}: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}; the file is truncated or not a PyTorch checkpoint") from None
    except Exception as e:  # weights_only refuses anything that is not plain tensors and containers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"refusing to load {path}: it is not a weights-only checkpoint ({first[:200]}); convert it to .safetensors"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if hasattr(v, "shape")}


def _download(ck: Checkpoint) -> Path:
    import torch

    suffix = Path(ck.weights.split("?")[0]).suffix or ".pth"
    dest = paths.cache_dir() / "weights" / f"{ck.sha256}{suffix}"
    if not dest.is_file():
        from transfer_eval import io

        with io.replacing(dest, what=f"the weights of {ck.name}", hint=paths.CACHE_HINT) as tmp:  # kept once checked
            try:
                torch.hub.download_url_to_file(ck.weights, str(tmp), progress=True)
            except Exception as e:
                raise UserError(f"checkpoint {ck.name!r}: cannot download {ck.weights}: {e}") from None
            digest = file_sha256(tmp)
            if digest != ck.sha256:
                raise UserError(
                    f"checkpoint {ck.name!r}: {ck.weights} has sha256 {digest}, expected {ck.sha256}; not used"
                )
    return dest


def weights_path_for(ck: Checkpoint) -> Path:
    """The local weights file of a file or URL checkpoint: downloaded and verified, or checked on disk."""
    if ck.weights_kind == "url":
        return _download(ck)
    weights_digest(ck)  # exists, and matches the registry's sha256 where it gives one
    return ck.weights_path()


def head_shape(path: Path) -> tuple[int, ...] | None:
    """(classes, width) of the classifier stored in a weights file, or None where it has none."""
    import numpy as np

    if str(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as w:
            return tuple(w["head/kernel"].shape[::-1]) if "head/kernel" in w.files else None
    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return tuple(f.get_slice("head.weight").get_shape()) if "head.weight" in f.keys() else None
    sd = load_state_dict(path)
    return tuple(sd["head.weight"].shape) if "head.weight" in sd else None


def _classifier_keys(model) -> set[str]:
    head = model.get_classifier()
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in head.parameters() if id(p) in names}


def _load_file_weights(model, path: Path, ck: Checkpoint, keep_head: bool) -> None:
    import torch

    if str(path).endswith(".npz"):
        if not hasattr(model, "load_pretrained"):
            raise UserError(f"checkpoint {ck.name!r}: .npz weights need a timm ViT architecture, not {ck.model}")
        head = {k: v.clone() for k, v in model.get_classifier().state_dict().items()}
        try:
            model.load_pretrained(str(path))  # timm's JAX-format loader; resamples the position embedding
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"checkpoint {ck.name!r}: {path} does not fit {ck.model}: {e}") from None
        if not keep_head:
            model.get_classifier().load_state_dict(head)  # the task's head, not the pretrained one
        return
    sd = load_state_dict(path)
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is not None:  # timm's own key conversions and position-embedding resampling
        try:
            sd = filter_fn(sd, model)
        except Exception as e:
            raise UserError(f"checkpoint {ck.name!r}: {path} does not fit {ck.model}: {e}") from None
    head_keys = _classifier_keys(model)
    own = model.state_dict()
    head_fits = all(k in sd and tuple(sd[k].shape) == tuple(own[k].shape) for k in head_keys)
    if not (keep_head and head_fits):
        sd = {k: v for k, v in sd.items() if k not in head_keys}
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = sorted(set(own) - set(sd) - head_keys)
    unexpected = sorted(set(sd) - set(own))
    if wrong or missing or unexpected:
        parts = []
        if wrong:
            parts.append(f"wrong shape: {', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}")
        if missing:
            parts.append(f"missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} ({len(missing)})")
        if unexpected:
            parts.append(
                f"unexpected: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
            )
        raise UserError(f"checkpoint {ck.name!r}: {path} does not fit {ck.model}: {'; '.join(parts)}")
    with torch.no_grad():
        model.load_state_dict(sd, strict=False)


def build_model(
    ck: Checkpoint,
    num_classes: int,
    resolution: int | None = None,
    keep_head: bool = False,
    load_weights: bool = True,
    model_kwargs: dict | None = None,
):
    """A timm model with the checkpoint's weights and a zero-initialised `num_classes` head, and its data config.

    The head is zeroed as in the ViT paper (B.1.1) unless `keep_head`, which keeps a pretrained head of the
    same size (evaluating an ImageNet-1k classifier as it is). `resolution` changes the input size; timm
    resamples the position embedding from the pretrained grid. `load_weights=False` builds the architecture
    alone (seeded random init, nothing downloaded), for cost planning.
    """
    import timm
    import torch

    kwargs = {**ck.model_args, **(model_kwargs or {})}
    kwargs["num_classes"] = num_classes
    if resolution:
        kwargs["img_size"] = resolution
    kind = ck.weights_kind if load_weights else "none"
    try:
        if kind == "none":
            torch.manual_seed(ck.seed)
            # with a timm tag, timm attaches that tag's pretrained config (input size, mean, std) without loading
            name = ck.model if ck.weights_kind == "timm" else ck.architecture
            model = timm.create_model(name, pretrained=False, **kwargs)
        elif kind in ("timm", "hf-hub"):
            name = ck.model if kind == "timm" else ck.weights
            model = timm.create_model(name, pretrained=True, **kwargs)
        else:
            path = weights_path_for(ck)
            model = timm.create_model(ck.architecture, pretrained=False, **kwargs)
            _load_file_weights(model, path, ck, keep_head)
    except UserError:
        raise
    except (OSError, RuntimeError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if kind in ("timm", "hf-hub") and any(
            w in text.lower() for w in ("connect", "resolve", "offline", "hub", "internet", "network")
        ):
            raise UserError(
                f"checkpoint {ck.name!r}: cannot fetch weights for {ck.model} ({text[:160]}); "
                f"this needs network access once, or use an offline checkpoint such as vit_demo"
            ) from None
        raise
    if not keep_head:
        head = model.get_classifier()
        with torch.no_grad():
            for p in head.parameters():
                p.zero_()
    return model, data_config(model, ck, resolution)


def data_config(model, ck: Checkpoint, resolution: int | None = None) -> dict[str, Any]:
    """timm's data config for the weights (mean, std, interpolation, crop), at the size the model was built for."""
    from timm.data import resolve_model_data_config

    cfg = dict(resolve_model_data_config(model))
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        cfg["input_size"] = (3, *tuple(size))
    for k, v in ck.data_config.items():
        cfg[k] = tuple(v) if isinstance(v, list) else v
    if resolution:
        cfg["input_size"] = (3, resolution, resolution)
    return cfg


def apply_delta(model, path: str | Path) -> dict:
    """Load a per-task delta written by `run --save-delta` into a model built from the shared checkpoint (the name
    every delta file's metadata gives; transfer_eval.methods.deltas.apply does the work)."""
    from transfer_eval.methods import deltas

    return deltas.apply(model, path)
