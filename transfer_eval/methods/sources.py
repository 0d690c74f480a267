"""Feature sources and feature normalisation for the probes (linear, knn, fewshot): which tokens of a frozen ViT a
probe reads, all of them from one forward pass, and how the rows are normalised before the probe sees them.

Sources (a probe recipe's `features`: one name, or a list chosen on val):

- `pooled`: the checkpoint's own pooled pre-logits output, `forward_head(forward_features(x), pre_logits=True)`
  (the class token after the final norm for `global_pool='token'` ViTs; the patch mean through `fc_norm` for
  `global_pool='avg'` ones). The default, and what every probe read before sources existed.
- `cls`: the class token after the final norm.
- `avg`: the mean of the patch tokens after the final norm, register and other prefix tokens excluded.
- `lastN`: the class tokens of the last N blocks, each through the final norm, concatenated from the earliest
  block (DINOv2's `n_last_blocks` with `norm=True`, DINO's `get_intermediate_layers`); `last1` equals `cls`.
- `cls+avg`, `lastN+avg`: the same, then the patch mean of the last block (DINOv2's `use_avgpool`).
- `proj`: the projected image embedding (CLIP's `encode_image`): the checkpoint's pretrained head applied to
  `pooled`, where the registry says the head is a projection (`probe: {projection: WIDTH}`).

One forward pass gives every source: forward hooks keep the outputs of the blocks a `lastN` needs, and
`forward_features` (the final norm over every token) gives the rest.

Normalisation (a probe recipe's `normalise`): `none` (the default), `l2` (each row to unit length) or `standard`
(each feature standardised with the mean and standard deviation of the rows the probe is fitted on: the train split;
for fewshot, its k-shot sample), applied alike to train, val and test. The probes' own steps come after it (the
linear probe and fewshot standardise, k-NN takes the cosine).
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import torch

from transfer_eval.errors import UserError

DEFAULT = "pooled"
NORMALISE = ("none", "l2", "standard")
FIELDS = {"features": DEFAULT, "normalise": "none"}  # the probes' recipe fields and their defaults
_NAME = re.compile(r"^(pooled|cls|avg|proj|cls\+avg|last([1-9][0-9]*)(\+avg)?)$")
HELP = "pooled, cls, avg, cls+avg, lastN, lastN+avg (N blocks) or proj"


def parse(value) -> list[str]:
    """The sources a recipe's `features` names (a name, a comma-separated string or a list), checked, in order,
    each once. Raises UserError on a name that is none of them."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not _NAME.match(name):
            raise UserError(f"unknown feature source {item!r}; known: {HELP}")
        if name not in out:
            out.append(name)
    if not out:
        raise UserError(f"features: name at least one source ({HELP})")
    return out


def normalisation(value) -> str:
    name = str(value).strip().lower()
    if name not in NORMALISE:
        raise UserError(f"unknown feature normalisation {value!r}; known: {', '.join(NORMALISE)}")
    return name


def canonical(recipe: dict) -> dict:
    """The recipe with `features` and `normalise` checked and written one way: one source as a string, several as
    a list; a field at its default is left out, so a run that does not set them resolves to exactly the recipe
    (and so the protocol hash and the result key) it had before these fields existed."""
    out = dict(recipe)
    if "features" in out:
        names = parse(out["features"])
        out["features"] = names[0] if len(names) == 1 else names
    if "normalise" in out:
        out["normalise"] = normalisation(out["normalise"])
    return {k: v for k, v in out.items() if not (k in FIELDS and v == FIELDS[k])}


def of(recipe: dict) -> list[str]:
    """The sources a resolved recipe asks for (["pooled"] where it names none)."""
    return parse(recipe.get("features", DEFAULT))


def blocks(name: str) -> int:
    """The number of last blocks a source reads (`last4+avg`: 4; `cls`, `avg`, `cls+avg`: 1; pooled, proj: 0)."""
    m = re.match(r"^last(\d+)", name)
    return int(m.group(1)) if m else (1 if name.startswith(("cls", "avg")) else 0)


def check(model, names: list[str], checkpoint: str, projection: int | None = None) -> None:
    """Raise UserError (one line) where the model cannot give a source: more blocks than it has, a class token
    or patch tokens it does not have, a projection the registry does not give it."""
    depth = len(getattr(model, "blocks", ()))
    for name in names:
        if name == "pooled":
            continue
        if name == "proj":
            if not projection:
                raise UserError(
                    f"checkpoint {checkpoint!r} has no projection to an embedding space (the registry's "
                    f"probe.projection names one for CLIP towers); choose another source ({HELP})"
                )
            continue
        if not depth or not hasattr(model, "norm") or not hasattr(model, "forward_features"):
            raise UserError(f"checkpoint {checkpoint!r} is not a ViT with blocks and a final norm; use features=pooled")
        if blocks(name) > depth:
            raise UserError(f"features {name}: checkpoint {checkpoint!r} has {depth} blocks, not {blocks(name)}")
        if (name.startswith(("cls", "last"))) and getattr(model, "cls_token", None) is None:
            raise UserError(f"features {name}: checkpoint {checkpoint!r} has no class token; use avg or pooled")
        if "avg" in name and _prefix(model) >= _tokens(model):
            raise UserError(f"features {name}: checkpoint {checkpoint!r} has no patch tokens to average")


def _prefix(model) -> int:
    return int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))


def _tokens(model) -> int:
    grid = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    return _prefix(model) + (grid if grid is not None else 1)


def forward(model, names: list[str], projection: torch.nn.Module | None = None) -> Callable:
    """`f(x) -> {source: B x D tensor}` for every source of `names`, from one pass through the model."""
    depth = len(getattr(model, "blocks", ()))
    deepest = max((blocks(n) for n in names if n.startswith("last")), default=0)
    hooked = list(range(depth - deepest, depth - 1))  # the last block's output is forward_features' own
    only_pooled = all(n in ("pooled", "proj") for n in names)

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        kept: dict[int, torch.Tensor] = {}
        handles = [
            model.blocks[i].register_forward_hook(lambda _m, _in, out, i=i: kept.__setitem__(i, out)) for i in hooked
        ]
        try:
            tokens = model.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        out: dict[str, torch.Tensor] = {}
        pooled = model.forward_head(tokens, pre_logits=True) if {"pooled", "proj"} & set(names) else None
        if only_pooled:
            return _pooled(names, pooled, projection)
        cls = tokens[:, 0]
        avg = tokens[:, _prefix(model) :].mean(1)
        for name in names:
            if name in ("pooled", "proj"):
                out.update(_pooled([name], pooled, projection))
                continue
            n = blocks(name) if name.startswith("last") else 1
            parts = [model.norm(kept[i])[:, 0] for i in range(depth - n, depth - 1)] + [cls]
            if name == "avg":
                parts = []
            if name.endswith("avg"):
                parts.append(avg)
            out[name] = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return out

    return run


def _pooled(names, pooled, projection) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        out[name] = pooled if name == "pooled" else projection(pooled)
    return out


# ---------------------------------------------------------------------------------------------- normalisation

ROWS = 65536  # rows normalised at a time


def statistics(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (+1e-6) of `train`, in float64, chunk by chunk."""
    n, d = train.shape
    total, squares = np.zeros(d), np.zeros(d)
    for a in range(0, n, ROWS):
        part = np.asarray(train[a : a + ROWS], dtype=np.float64)
        total += part.sum(0)
        squares += (part * part).sum(0)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(squares / max(n, 1) - mean * mean, 0.0)) + 1e-6
    return mean, std


def normalise(how: str, x: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """`x` normalised (`none`: `x` itself, no copy; `l2`: rows to unit length; `standard`: (x - mean) / std with
    `stats`, the train statistics) as a float32 array, chunk by chunk."""
    if how == "none":
        return x
    out = np.empty(x.shape, np.float32)
    for a in range(0, len(x), ROWS):
        part = np.asarray(x[a : a + ROWS], dtype=np.float64)
        if how == "l2":
            part = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
        else:
            part = (part - stats[0]) / stats[1]
        out[a : a + ROWS] = part
    return out


class Normaliser:
    """A recipe's normalisation, with the statistics of the rows the probe is fitted on where it needs them:
    call it on every split. `tensors()`: what a stored delta keeps of it (the statistics of `standard`)."""

    def __init__(self, how: str, train: np.ndarray):
        self.how = how
        self.stats = statistics(train) if how == "standard" else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return normalise(self.how, x, self.stats)

    def tensors(self, prefix: str = "features") -> dict[str, torch.Tensor]:
        if self.stats is None:
            return {}
        mean, std = (
            torch.from_numpy(np.asarray(a, np.float64)) for a in self.stats
        )  # float64: as the run applied them
        return {f"{prefix}.mean": mean, f"{prefix}.std": std}


def describe(recipe: dict) -> str:
    """`features cls+avg, l2-normalised` for a log line; '' at the defaults."""
    names, how = of(recipe), recipe.get("normalise", "none")
    text = f"features {'|'.join(names)}" if names != [DEFAULT] else ""
    return ", ".join(t for t in (text, {"l2": "l2-normalised", "standard": "standardised"}.get(how, "")) if t)


# ---------------------------------------------------------------------------------- the registry's `probe` field

PROBE_MODES = ("linear", "knn", "fewshot")  # a registry `probe` entry's recipes, by mode


def registry_probe(value, where: str) -> dict:
    """A registry entry's `probe` (what its paper probed, for `--recipe paper`), checked: `about` (one line),
    `projection` (the width of the pretrained head where it projects to an embedding space, CLIP's) and, per probe
    mode, its recipe fields `features` and `normalise`. `where` names the entry in error messages."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: probe must be a mapping (about, projection, {', '.join(PROBE_MODES)})")
    unknown = sorted(set(value) - {"about", "projection", *PROBE_MODES})
    if unknown:
        raise UserError(
            f"{where}: unknown probe key(s) {', '.join(unknown)}; allowed: about, projection, {', '.join(PROBE_MODES)}"
        )
    out = dict(value)
    width = out.get("projection")
    if width is not None and not (isinstance(width, int) and not isinstance(width, bool) and width > 0):
        raise UserError(f"{where}: probe.projection must be the projection's width, a positive integer")
    for mode in PROBE_MODES:
        fields = out.get(mode)
        if fields is None:
            continue
        if not isinstance(fields, dict) or set(fields) - set(FIELDS):
            raise UserError(f"{where}: probe.{mode} must map {' and/or '.join(FIELDS)} to values")
        try:
            out[mode] = canonical({**FIELDS, **fields})
        except UserError as e:
            raise UserError(f"{where}: probe.{mode}: {e}") from None
    return out


def summary(probe: dict) -> str:
    """What a registry `probe` says, in a few words (`list checkpoints`): `linear cls|last4, knn cls (l2)`."""
    parts = []
    for mode in PROBE_MODES:
        if mode in probe:
            fields = {**FIELDS, **probe[mode]}
            how = f" ({fields['normalise']})" if fields["normalise"] != "none" else ""
            parts.append(f"{mode} {'|'.join(parse(fields['features']))}{how}")
    if probe.get("projection"):
        parts.append(f"proj {probe['projection']}-d")
    return ", ".join(parts)
