"""Variants: what a user chose on purpose beyond checkpoint and mode, so that each gets its own leaderboard row.

The runs of one (checkpoint, mode, task) fall in two ways:

- *superseded*: runs of an older setup than the newest run's (other weights, another task version, an older
  protocol version of the mode's code) do not count; a note says which of the three changed;
- *variants*: the counting runs whose choices differ (few-shot's shot count, k-NN's k, LoRA's rank, the
  resolution, the recipe preset, a --set field, a chosen --precision) are each their own cell.

A variant is named by the fields that differ between the variants of any (checkpoint, mode, task) of a mode, over
every result shown, so that one label means the same recipe in every task column and for every checkpoint (the
columns of a row line up, and `compare` pairs like with like): `fewshot 10-shot`, `full @384`, `lora r=4`,
`full steps=20`. Few-shot always names its shot count (its protocol runs four).
"""

from __future__ import annotations

import json

from transfer_eval.protocol import identify

# fields shown first, in this order, and how; any other differing field shows as name=value
_FIRST = ("shots", "resolution", "preset", "features", "normalise", "lora_rank", "k", "temperature", "precision")
_FORMS = {"shots": "{}-shot", "resolution": "@{}", "preset": "{}", "lora_rank": "r={}", "precision": "{}"}
ALWAYS = {"fewshot": ("shots",)}  # modes whose variants are always named by these fields
NAMED_WHEN_SET = ("features", "normalise")  # fields that name a mode's variants wherever a shown run sets them


def mode_label(mode: str, variant: str) -> str:
    """A mode and its variant as every table, plot and note shows them: `fewshot 10-shot`, `full @384`, `linear`."""
    return f"{mode} {variant}".strip()


def setup(r) -> tuple:
    """What supersedes: the weights, the task version and the mode's protocol version (where the hash names no
    known version, the hash itself: any other protocol then supersedes it)."""
    version = identify(r)[0]
    return (r.weights_sha256, r.task_version, version if version is not None else f"hash {r.protocol_hash}")


def choices(r) -> dict:
    """The choices a run was made with: its recipe, its resolution in pixels and its --precision."""
    out = {k: v for k, v in (r.recipe or {}).items()}
    out["resolution"] = r.resolution
    out["precision"] = identify(r)[1] or "auto"
    if r.limit_per_split is not None:  # shown beside full runs only with --include-limited
        out["limit"] = r.limit_per_split
    return out


def _key(values: dict) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def superseded_note(runs: list, newest) -> str:
    """Which of weights, task version or protocol version differ between `runs` and the newest run."""
    what = []
    if any(r.weights_sha256 != newest.weights_sha256 for r in runs):
        what.append("weights changed")
    if any(r.task_version != newest.task_version for r in runs):
        versions = sorted({r.task_version for r in runs} | {newest.task_version})
        what.append("task version " + " -> ".join(map(str, versions)))
    same = [r for r in runs if (r.weights_sha256, r.task_version) == setup(newest)[:2]]
    mine, theirs = identify(newest)[0], {identify(r)[0] for r in same}
    if mine is not None and None not in theirs and theirs - {mine}:
        what.append(f"protocol version {', '.join(map(str, sorted(theirs - {mine})))} -> {mine}")
    elif same:
        what.append("protocol hash differs")
    return "; ".join(what) or "setup changed"


def fields(groups: dict[tuple, list[list]]) -> dict[str, tuple[str, ...]]:
    """The fields naming each mode's variants: those whose values differ between the variants of one (checkpoint,
    mode, task), in any of them. `groups`: (checkpoint, mode, task) -> its variants, each a list of runs."""
    differ: dict[str, set[str]] = {}
    for (_, mode, _), variants in groups.items():
        found = differ.setdefault(mode, set(ALWAYS.get(mode, ())))
        values = [choices(v[0]) for v in variants]
        found.update(f for f in NAMED_WHEN_SET if any(f in v for v in values))  # the probe's features are said
        for name in set().union(*values) if values else ():
            if len({_key(v.get(name)) for v in values}) > 1:
                found.add(name)
    return {m: tuple(sorted(f, key=_order)) for m, f in differ.items()}


def _order(name: str) -> tuple:
    return (_FIRST.index(name) if name in _FIRST else len(_FIRST), name)


def label(r, names: tuple[str, ...]) -> str:
    """The variant's name from a run's values of `names` (`10-shot @384`); '' where there are none."""
    values = choices(r)
    parts = []
    for name in names:
        v = values.get(name)
        if isinstance(v, list):
            v = ("|" if name == "features" else ",").join(map(str, v))
        elif v is None and name in NAMED_WHEN_SET:
            v = {"features": "pooled", "normalise": "none"}[name]  # the default, which a recipe leaves out
        elif isinstance(v, float):
            v = f"{v:g}"
        parts.append(_FORMS.get(name, f"{name}={{}}").format(v))
    return " ".join(parts)


def chosen_note(cell) -> str | None:
    """`ck / mode variant / task: features last4+avg chosen on val` where the cell's newest run chose its feature
    source from a list (a probe's grid), else None."""
    picked = ((cell.newest.selection or {}).get("chosen") or {}).get("features")
    if picked is None or not isinstance((cell.newest.recipe or {}).get("features"), list):
        return None
    return f"{cell.checkpoint} / {mode_label(cell.mode, cell.variant)} / {cell.task}: features {picked} chosen on val"


def sort_key(r, names: tuple[str, ...]) -> tuple:
    """Variants in the order of their values (1-shot before 10-shot), missing values last."""
    values = choices(r)
    out = []
    for name in names:
        v = values.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((0, v, ""))
        else:
            out.append((1 if v is not None else 2, 0, _key(v)))
    return tuple(out)


def split_cell(runs: list) -> tuple[list[list], list]:
    """A (checkpoint, mode, task)'s runs as (its variants of the newest setup, each a list of runs by seed; the
    runs of older setups). Within a variant, runs of the same seed keep the newest."""
    newest = max(runs, key=lambda r: r.run_id)
    current = [r for r in runs if setup(r) == setup(newest)]
    old = [r for r in runs if setup(r) != setup(newest)]
    by: dict[str, dict[int, object]] = {}
    for r in sorted(current, key=lambda r: r.run_id):
        by.setdefault(_key(choices(r)), {})[r.seed] = r
    return [sorted(v.values(), key=lambda r: r.seed) for v in by.values()], old
