"""Paired comparison of checkpoints: per (task, mode), delta = B - A with a paired bootstrap CI and McNemar's exact
test on the stored per-sample predictions; one typed `Paired` row each."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from transfer_eval.errors import UserError, unknown_name
from transfer_eval.methods import inference
from transfer_eval.report import robustness, variants
from transfer_eval.report.leaderboard import Cell, _setup_note, build_cells, limited_note
from transfer_eval.report.paired import ALPHA, paired_stats, pick_runs
from transfer_eval.store.results import Store

# ------------------------------------------------------------------------------------------------- statistics
# McNemar's test, the paired bootstrap and which runs to pair are report/paired.py's (the leaderboard's ties use them
# too); ALPHA and paired_stats are imported from here as before.


def verdict(delta: float, p: float, alpha: float = ALPHA) -> str:
    """From B's side: win / loss where McNemar's p < alpha, tie otherwise."""
    if p < alpha and delta > 0:
        return "win"
    if p < alpha and delta < 0:
        return "loss"
    return "tie"


# ------------------------------------------------------------------------------------------------- comparison

_COSTS = (
    ("params_per_task", "d_params_per_task"),
    ("bytes_per_task", "d_bytes_per_task"),
    ("train_pflops_total", "d_train_pflops"),
    ("fwd_gflops_per_image", "d_fwd_gflops_per_image"),
)


@dataclass
class Paired:
    """One (B, task, mode) compared against the reference A. `verdict`: win / tie / loss (McNemar p < ALPHA), or
    refused / no predictions with the `reason`; d_*: B - A for the costs."""

    checkpoint_a: str
    checkpoint_b: str
    task: str
    mode: str
    run_a: int
    run_b: int
    seed_a: int
    seed_b: int
    n: int | None = None
    acc_a: float | None = None
    acc_b: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    b: int | None = None  # A right, B wrong
    c: int | None = None  # A wrong, B right
    verdict: str = "refused"
    reason: str | None = None
    note: str | None = None
    d_params_per_task: float | None = None
    d_bytes_per_task: float | None = None
    d_train_pflops: float | None = None
    d_fwd_gflops_per_image: float | None = None
    variant: str = ""  # what both sides chose beyond the mode ('10-shot', '@384'): like is paired with like
    # on a shift set: each side's effective robustness and B - A (report/robustness.py); fractions
    er_a: float | None = None
    er_b: float | None = None
    d_effective_robustness: float | None = None

    @property
    def label(self) -> str:
        return variants.mode_label(self.mode, self.variant)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Comparison:
    reference: str
    others: list[str]
    rows: list[Paired]  # one per (other, task, mode, variant)
    resamples: int
    notes: list[str] = field(default_factory=list)
    lines: dict = field(default_factory=dict)  # shift set -> its effective-robustness line (report/robustness.py)

    def to_frame(self):
        """One row per (B, task, mode) as a pandas DataFrame (pandas: the `pandas` extra)."""
        from transfer_eval.frames import pandas

        return pandas().DataFrame([r.to_dict() for r in self.rows])

    def rows_of(self, other: str) -> list[Paired]:
        return [r for r in self.rows if r.checkpoint_b == other]

    def summary(self, other: str) -> dict:
        rs = self.rows_of(other)
        out = {k: sum(r.verdict == k for r in rs) for k in ("win", "tie", "loss")}
        out["not compared"] = len(rs) - sum(out.values())
        return out


def compare(
    store: Store,
    checkpoints: list[str],
    tasks=(),
    modes=(),
    resamples: int = 10_000,
    seed: int = 0,
    include_limited: bool = False,
    line: str = "testbed",
) -> Comparison:
    """Each checkpoint after the first against the first (the reference), per (task, mode, variant) both were run
    on (the variants named over both sides' results: report/variants.py); on a shift set, the difference in
    effective robustness too, against `line` (report/robustness.py)."""
    checkpoints = list(dict.fromkeys(checkpoints))
    if len(checkpoints) < 2:
        raise UserError(
            "compare needs at least two different checkpoints, e.g. "
            "`transfer-eval compare deit3_s16_in1k augreg_s16_in21k_ft_in1k`"
        )
    if resamples < 1:
        raise UserError("--resamples must be at least 1 (default 10000)")
    stored = {r.checkpoint for r in store.query()}
    if not stored:
        raise UserError(f"no stored results in {store.path}; run `transfer-eval run ... --results {store.path}` first")
    for c in checkpoints:
        if c not in stored:
            raise _not_stored(c, stored, store)
    found = store.query(checkpoints=checkpoints, tasks=list(tasks), modes=list(modes))
    cells = build_cells(found, include_limited)
    ref, others = checkpoints[0], checkpoints[1:]
    rows, notes = [], []
    for other in others:
        mine = {(t, m, v): cell.variant_key for (c, m, v, t), cell in cells.items() if c == ref}
        theirs = {(t, m, v) for c, m, v, t in cells if c == other}
        common = sorted(set(mine) & theirs, key=lambda k: (k[0], k[1], mine[k]))
        if not common:
            filt = "".join(f" {k} {','.join(v)}" for k, v in (("tasks", tasks), ("modes", modes)) if v)
            raise UserError(
                f"{ref} and {other} have no task and mode in common with stored results{filt}; "
                f"run them on the same tasks and modes first"
            )
        for task, mode, variant in common:
            ca, cb = cells[(ref, mode, variant, task)], cells[(other, mode, variant, task)]
            rows.append(_compare_cells(store, ca, cb, resamples, seed))
            notes += [_setup_note(c) for c in (ca, cb) if c.n_setups > 1]
    if all(r.verdict == "refused" for r in rows):
        raise UserError(f"nothing to compare: {rows[0].reason} for every shared task and mode")
    notes = list(dict.fromkeys(notes))
    cmp = Comparison(ref, others, rows, resamples, notes + limited_note(found, include_limited))
    robustness.add_differences(store, cmp, {r.run_id: r for r in found}, line, include_limited, modes)
    return cmp


def _not_stored(name: str, stored: set[str], store: Store) -> UserError:
    """A checkpoint with no results in the store: one the registry (or timm) knows has none there yet; any other
    name is unknown, with the stored names closest to it."""
    from transfer_eval import checkpoints

    try:
        checkpoints.resolve(name, checkpoints.load_registry())
    except UserError:
        return unknown_name("checkpoint", name, stored, f"(no results stored for it in {store.path})")
    return UserError(
        f"no results for checkpoint {name} in {store.path} (it has: {', '.join(sorted(stored))}); run it first, "
        f"e.g. `transfer-eval run -c {name} -t TASK -m MODE --results {store.path}`"
    )


def _compare_cells(store: Store, ca: Cell, cb: Cell, resamples: int, seed: int) -> Paired:
    ra, rb, seed_note = pick_runs(ca, cb)
    row = Paired(
        ca.checkpoint,
        cb.checkpoint,
        ca.task,
        ca.mode,
        ra.run_id,
        rb.run_id,
        ra.seed,
        rb.seed,
        variant=ca.variant,
        acc_a=ra.top1,
        acc_b=rb.top1,
        note=seed_note,
    )
    for cost, key in _COSTS:
        x, y = getattr(ra, cost), getattr(rb, cost)
        setattr(row, key, None if x is None or y is None else y - x)
    if ra.split_manifest and rb.split_manifest and ra.split_manifest != rb.split_manifest:
        row.reason = "measured on different test examples (split_manifest differs)"
        return row
    pa, pb = store.predictions(ra.run_id), store.predictions(rb.run_id)
    if pa is None or pb is None:
        row.verdict, row.reason = "no predictions", "no per-sample predictions stored"
        row.delta = None if ra.top1 is None or rb.top1 is None else rb.top1 - ra.top1
        return row
    (la, ta), (lb, tb) = pa, pb
    if la.shape != lb.shape or not np.array_equal(la, lb):
        row.reason = "measured on different test examples (labels differ)"
        return row
    s = paired_stats(inference.hits(la, ta), inference.hits(lb, tb), resamples, seed)
    for k in ("n", "acc_a", "acc_b", "delta", "ci_low", "ci_high", "p_value", "b", "c"):
        setattr(row, k, s[k])
    row.verdict = verdict(s["delta"], s["p_value"])
    return row
