"""The leaderboard model: task groups, cells (the runs of one checkpoint x mode x task that count), rows and their
means, storage and compute, sorting. The definitions are in transfer_eval/report/__init__.py's docstring."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from transfer_eval.errors import UserError, unknown_name
from transfer_eval.report import intervals, metrics, robustness, ties, variants
from transfer_eval.store.results import Result, Store
from transfer_eval.tasks.groups import GROUPS, Group

BYTES_PER_PARAM = 4  # fp32: the dtype the suite stores deltas in (runner -> costs.delta_bytes)


# ----------------------------------------------------------------------------------------------------- groups


ALL = "all"  # not a fixed list: the task columns shown


def resolve_group(name: str | None, shown_tasks: list[str]) -> Group:
    if name is None or name == ALL:
        return Group(ALL, tuple(shown_tasks), "the tasks shown")
    if name not in GROUPS:
        raise unknown_name("task group", name, [*GROUPS, ALL], "(see `transfer-eval list groups`)")
    return GROUPS[name]


# ------------------------------------------------------------------------------------------------------ cells


@dataclass
class Cell:
    """The runs of one (checkpoint, mode, variant, task) that count: those of the newest setup (report/variants.py)."""

    checkpoint: str
    mode: str
    task: str
    runs: list[Result]
    n_setups: int = 1
    variant: str = ""  # what the user chose beyond the mode ('10-shot', '@384', 'r=4'); '' where nothing differs
    variant_key: tuple = ()  # orders variants by their values
    superseded: list[Result] = field(default_factory=list)  # runs of older setups, which do not count
    # --- trust (issue 40): what the cell shows (report/metrics.py) and how it stands against its column's best
    metric: str = metrics.DEFAULT
    tie: ties.Tie | None = None  # set by `leaderboard` (report/ties.py); None: not decided for this metric

    @property
    def label(self) -> str:
        return variants.mode_label(self.mode, self.variant)

    @property
    def accs(self) -> list[float]:
        return [r.top1 for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def top1(self) -> float:
        return float(np.mean(self.accs))

    @property
    def values(self) -> list[float]:
        """The shown metric of each run that has it (every run for top-1; none stored before schema 4 for ECE)."""
        m = metrics.get(self.metric)
        return [v for r in self.runs if (v := metrics.value(r, m)) is not None]

    @property
    def value(self) -> float | None:
        """The mean of the shown metric over the runs that have it: what the cell shows and sorts by."""
        vals = self.values
        return float(np.mean(vals)) if vals else None

    @property
    def std(self) -> float | None:
        vals = self.values
        return float(np.std(vals, ddof=1)) if len(vals) > 1 else None

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def newest(self) -> Result:
        return max(self.runs, key=lambda r: r.run_id)

    def cost(self, name: str) -> float | None:
        vals = [getattr(r, name) for r in self.runs if getattr(r, name) is not None]
        return float(np.mean(vals)) if vals else None

    def to_dict(self) -> dict:
        new = self.newest
        return {
            "top1": self.top1,
            "std": self.std,
            "n": self.n,
            "seeds": self.seeds,
            "run_ids": [r.run_id for r in self.runs],
            "variant": self.variant,
            "protocol_hash": new.protocol_hash,
            "n_setups": self.n_setups,
            "params_per_task": new.params_per_task,
            "bytes_per_task": new.bytes_per_task,
            "params_total": new.params_total,
            "train_pflops_total": self.cost("train_pflops_total"),
            "fwd_gflops_per_image": new.fwd_gflops_per_image,
            "params_backbone": new.params_backbone,  # trainable outside the head (the PEFT tables' Params column)
            "params_head": new.params_head,
            "deployed_gflops_per_image": new.deployed_gflops_per_image,  # after merging, where the mode merges
            # --- trust (issue 40): the metric shown, its 95% interval, the tie with the column's best, calibration
            "metric": self.metric,
            "value": self.value,
            **intervals.cell_fields(self),
            **ties.cell_fields(self),
            **{k: self.cost(k) for k in metrics.CALIBRATION},
        }


def build_cells(results: list[Result], include_limited: bool = False) -> dict[tuple[str, str, str, str], Cell]:
    """The cells of these results, keyed (checkpoint, mode, variant, task); runs made with --limit (a quick look)
    only with `include_limited`. Each (checkpoint, mode, task) keeps its newest setup's runs, one cell per
    variant (report/variants.py); the runs of older setups are kept on each cell as `superseded`."""
    by: dict[tuple, list[Result]] = {}
    for r in results:
        if r.status == "ok" and r.top1 is not None and (include_limited or r.limit_per_split is None):
            by.setdefault((r.checkpoint, r.mode, r.task), []).append(r)
    split = {key: variants.split_cell(runs) for key, runs in by.items()}
    names = variants.fields({key: kept for key, (kept, _) in split.items()})
    out = {}
    for (ck, mode, task), (kept, old) in split.items():
        n_setups = 1 + len({variants.setup(r) for r in old})
        for runs in kept:
            name = variants.label(runs[0], names[mode])
            out[(ck, mode, name, task)] = Cell(
                ck, mode, task, runs, n_setups, name, variants.sort_key(runs[0], names[mode]), old
            )
    return out


def limited_note(results: list[Result], include_limited: bool) -> list[str]:
    n = sum(r.limit_per_split is not None for r in results)
    if not n:
        return []
    if include_limited:
        return [f"{n} result(s) from --limit runs (at most N examples per split) are included"]
    return [f"{n} result(s) from --limit runs left out (--include-limited shows them)"]


def _setup_note(c: Cell) -> str:
    return (
        f"{c.checkpoint} / {c.mode} / {c.task}: {c.n_setups} setups stored "
        f"({variants.superseded_note(c.superseded, c.newest)}); only the newest counts (protocol "
        f"{c.newest.protocol_hash[:12]}, run {c.newest.run_id})"
    )


# ------------------------------------------------------------------------------------------------ leaderboard


@dataclass
class Row:
    checkpoint: str
    mode: str
    cells: dict[str, Cell | None]  # every shown task and every group task
    group: Group
    variant: str = ""  # what the user chose beyond the mode (report/variants.py)
    variant_key: tuple = ()
    mean_rule: str = "tasks"  # MEAN_RULES: what `mean` is for a group of parts (VTAB-1k)
    robustness: dict = field(default_factory=dict)  # shift set -> report.robustness.Effective | None

    @property
    def label(self) -> str:
        return variants.mode_label(self.mode, self.variant)

    @property
    def notes(self) -> list[str]:
        """The superseded-setup notes of the row's cells, each once (a note belongs to a checkpoint, mode and task,
        whose variants are rows of their own)."""
        setups = [_setup_note(c) for c in self.cells.values() if c and c.n_setups > 1]
        chosen = [variants.chosen_note(c) for c in self.cells.values() if c and variants.chosen_note(c)]
        return list(dict.fromkeys(setups + chosen))

    @property
    def group_cells(self) -> list[Cell]:
        return [self.cells[t] for t in self.group.tasks if self.cells.get(t) is not None]

    @property
    def present(self) -> int:
        return len(self.group_cells)

    @property
    def complete(self) -> bool:
        return len(self.group.tasks) > 0 and self.present == len(self.group.tasks)

    @property
    def mean_partial(self) -> float | None:
        vals = [c.value for c in self.group_cells if c.value is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def mean_tasks(self) -> float | None:
        """The mean over the group's tasks (SSF's and V-PETL Bench's VTAB-1k mean), where every task has one."""
        return self.mean_partial if self.complete and all(c.value is not None for c in self.group_cells) else None

    @property
    def part_means(self) -> dict[str, float | None]:
        """Each part's mean over its tasks (None where one is missing): VTAB-1k's Natural, Specialized, Structured."""
        out = {}
        for part, tasks in self.group.parts:
            cs = [self.cells.get(t) for t in tasks]
            out[part] = float(np.mean([c.value for c in cs])) if all(c and c.value is not None for c in cs) else None
        return out

    @property
    def mean_of_groups(self) -> float | None:
        """The mean of the parts' means (NOAH's VTAB-1k "Average"), where every part is complete."""
        means = list(self.part_means.values())
        return float(np.mean(means)) if means and all(m is not None for m in means) else None

    @property
    def mean(self) -> float | None:
        return self.mean_of_groups if self.mean_rule == "groups" and self.group.parts else self.mean_tasks

    @property
    def params_per_task(self) -> float | None:
        vals = [c.newest.params_per_task for c in self.group_cells if c.newest.params_per_task is not None]
        return float(np.mean(vals)) if vals else None

    def mean_of(self, name: str) -> float | None:
        vals = [getattr(c.newest, name) for c in self.group_cells if getattr(c.newest, name) is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def params_backbone(self) -> float | None:
        """The mean over the group's tasks of the trainable parameters outside the head (None: stored before the
        record kept them apart)."""
        return self.mean_of("params_backbone")

    @property
    def deployed_gflops_per_image(self) -> float | None:
        """The mean over the group's tasks of a deployed task's forward GFLOPs per image (after merging)."""
        return self.mean_of("deployed_gflops_per_image")

    def _storage(self):
        if not self.complete:
            return None
        cs = self.group_cells
        first = cs[0].newest
        if (
            any(c.newest.bytes_per_task is None or c.newest.params_total is None for c in cs)
            or first.params_per_task is None
        ):
            return None
        shared = (first.params_total - first.params_per_task) * BYTES_PER_PARAM
        suite = shared + sum(c.newest.bytes_per_task for c in cs)
        full = sum(c.newest.params_total * BYTES_PER_PARAM for c in cs)
        return suite, full

    @property
    def suite_bytes(self) -> int | None:
        s = self._storage()
        return s and s[0]

    @property
    def full_copies_bytes(self) -> int | None:
        s = self._storage()
        return s and s[1]

    @property
    def storage_ratio(self) -> float | None:
        s = self._storage()
        return s[0] / s[1] if s and s[1] else None

    @property
    def train_pflops(self) -> float | None:
        if not self.complete:
            return None
        vals = [c.cost("train_pflops_total") for c in self.group_cells]
        return None if any(v is None for v in vals) else float(sum(vals))

    def value(self, column: str):
        """The raw value a column sorts by (None where missing)."""
        if column == "checkpoint":
            return self.checkpoint
        if column == "mode":
            return self.label
        if column in NUMERIC_COLUMNS or column == "mean_of_groups":
            return getattr(self, column)
        if column in self.part_means:
            return self.part_means[column]
        shift = column.removesuffix(robustness.SUFFIX)  # an effective-robustness column (report/robustness.py)
        if shift != column and shift in self.robustness:
            return self.robustness[shift] and self.robustness[shift].value
        c = self.cells.get(column)
        return None if c is None else c.value


NUMERIC_COLUMNS = (
    "mean", "params_per_task", "params_backbone", "deployed_gflops_per_image", "suite_bytes", "storage_ratio",
    "train_pflops",
)  # fmt: skip
# a group of parts (VTAB-1k) has two means in use: over its tasks (SSF, V-PETL Bench) or over its parts' means (NOAH)
MEAN_RULES = ("tasks", "groups", "both")
# Accuracy sorts best first; cost columns cheapest first; names alphabetically.
_DESCENDING = {"mean", "mean_of_groups"}


@dataclass
class Leaderboard:
    tasks: list[str]  # the task columns shown
    group: Group
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    mean_rule: str = "tasks"
    metric: str = metrics.DEFAULT  # what the cells show (report/metrics.py)
    robustness: dict = field(default_factory=dict)  # shift set shown -> its report.robustness.Line

    @property
    def er_columns(self) -> list[str]:
        """An effective-robustness column per shift set shown, after the task columns (report/robustness.py)."""
        return [robustness.column(t) for t in self.robustness]

    @property
    def mean_columns(self) -> list[str]:
        """The part means, then the mean(s) the rule asks for, after the task columns."""
        if not self.group.parts:
            return ["mean"]
        return [*self.group.part_names, *(["mean", "mean_of_groups"] if self.mean_rule == "both" else ["mean"])]

    @property
    def columns(self) -> list[str]:
        return ["checkpoint", "mode", *self.tasks, *self.er_columns, *self.mean_columns, *NUMERIC_COLUMNS[1:]]

    def best_first(self, column: str) -> bool:
        """Whether `column` sorts descending by default: accuracies and their means (not ECE, NLL); costs and names
        ascend."""
        if column in self.er_columns:  # effective robustness (report/robustness.py): higher first
            return True
        shown = column in _DESCENDING or column in self.tasks or column in self.mean_columns
        return shown and not metrics.get(self.metric).lower_better

    def row_dict(self, row: Row) -> dict:
        """One row as plain data (what --format json writes): accuracies as fractions, None where missing."""
        tasks = dict.fromkeys([*self.tasks, *self.group.tasks])
        return {
            "checkpoint": row.checkpoint,
            "mode": row.mode,
            "variant": row.variant,
            "group": self.group.name,
            "group_tasks": list(self.group.tasks),
            "tasks": {t: (row.cells[t].to_dict() if row.cells.get(t) else None) for t in tasks},
            "mean": row.mean,
            "mean_rule": self.mean_rule if self.group.parts else "tasks",
            "part_means": row.part_means,
            "mean_of_groups": row.mean_of_groups,
            "mean_tasks": row.mean_tasks,
            "complete": row.complete,
            "mean_partial": row.mean_partial,
            "tasks_present": row.present,
            "tasks_total": len(self.group.tasks),
            "params_per_task": row.params_per_task,
            "params_backbone": row.params_backbone,
            "params_head": row.mean_of("params_head"),
            "deployed_gflops_per_image": row.mean_of("deployed_gflops_per_image"),
            "suite_bytes": row.suite_bytes,
            "full_copies_bytes": row.full_copies_bytes,
            "storage_ratio": row.storage_ratio,
            "train_pflops": row.train_pflops,
            "notes": row.notes,
            # --- trust (issue 40): what the cells show, the means' 95% intervals (report/intervals.py)
            "metric": self.metric,
            **intervals.row_fields(row),
            **robustness.row_fields(self, row),
        }

    def to_frame(self):
        """The rows as a pandas DataFrame (pandas: the `pandas` extra), one column per figure, task accuracies as
        `<task>` (fractions) with `<task>_std` and `<task>_n`."""
        from transfer_eval.frames import pandas

        rows = []
        for row in self.rows:
            d = self.row_dict(row)
            for t, cell in d.pop("tasks").items():
                d[t], d[f"{t}_std"], d[f"{t}_n"] = (cell["value"], cell["std"], cell["n"]) if cell else (None, None, 0)
                d[f"{t}_ci_low"], d[f"{t}_ci_high"] = (cell["ci_low"], cell["ci_high"]) if cell else (None, None)
                d[f"{t}_tied_with_best"] = cell and cell["tied_with_best"]
            d.pop("effective_robustness_line")
            d.update({robustness.column(t): v for t, v in d.pop("effective_robustness").items()})
            rows.append(d)
        return pandas().DataFrame(rows)


def leaderboard(
    store: Store,
    checkpoints=(),
    tasks=(),
    modes=(),
    group: str | None = None,
    sort: str | None = None,
    include_limited: bool = False,
    mean: str = "tasks",
    metric: str = metrics.DEFAULT,
    line: str = "testbed",
) -> Leaderboard:
    """Rows checkpoint x mode x variant (report/variants.py). `tasks` picks the task columns (default: the group's
    tasks, else every stored task); `group` is what the mean, storage and compute are over (default: the task
    columns shown). Runs made with --limit count only with `include_limited`. `mean`, for a group of parts
    (VTAB-1k): over its tasks, over its parts' means, or both (MEAN_RULES). `metric`: what the cells show and
    sort by (report/metrics.py); each task column's ties with its best are decided from the stored predictions.
    `line`: the effective-robustness line of each shift set shown, the shipped testbed's or fitted on the store's
    pretrained results (report/robustness.py)."""
    if mean not in MEAN_RULES:
        raise UserError(f"--mean {mean!r}: use {', '.join(MEAN_RULES)}")
    metrics.get(metric)
    named = group not in (None, ALL)
    grp = resolve_group(group, []) if named else None
    everything = store.query()
    if not everything:
        raise UserError(
            f"no stored results in {store.path}; run `transfer-eval run -c CHECKPOINT -t TASK "
            f"-m MODE --results {store.path}` first"
        )
    for kind, names, attr in (
        ("checkpoint", checkpoints, "checkpoint"),
        ("task", tasks, "task"),
        ("mode", modes, "mode"),
    ):
        known = {getattr(r, attr) for r in everything}
        for n in names:
            if n not in known:
                raise unknown_name(kind, n, known, f"(no successful result stored for it in {store.path})")
    found = store.query(checkpoints=list(checkpoints), modes=list(modes))
    cells = build_cells(found, include_limited)
    for cell in cells.values():
        cell.metric = metric
    shown = list(dict.fromkeys(tasks)) or (list(grp.tasks) if grp else sorted({k[3] for k in cells}))
    grp = grp or resolve_group(None, shown)
    wanted = set(shown) | set(grp.tasks)
    keys = {(c, m, v): cell.variant_key for (c, m, v, t), cell in cells.items() if t in wanted}
    if not keys:
        raise UserError(
            f"no stored results for the tasks {', '.join(sorted(wanted))} with these filters in {store.path}"
        )
    columns = list(dict.fromkeys([*shown, *grp.tasks]))
    rows = [
        Row(c, m, {t: cells.get((c, m, v, t)) for t in columns}, grp, v, keys[(c, m, v)], mean)
        for c, m, v in sorted(keys, key=lambda k: (k[0], k[1], keys[k]))
    ]
    notes = list(dict.fromkeys(n for row in rows for n in row.notes)) + limited_note(found, include_limited)
    lb = Leaderboard(shown, grp, rows, notes, mean, metric=metric)
    lb.notes += ties.mark(lb, store)
    robustness.attach(lb, found, robustness.lines(store, shown, line, include_limited))  # report/robustness.py
    sort_rows(lb, sort)
    return lb


def sort_rows(lb: Leaderboard, sort: str | None):
    """`COLUMN` or `COLUMN:asc|desc`; missing values always last; ties keep checkpoint, mode order."""
    if sort is None:
        column, direction = "mean", None
    else:
        column, _, direction = sort.partition(":")
        direction = direction or None
        if column not in lb.columns:
            raise unknown_name("sort column", column, lb.columns)
        if direction not in (None, "asc", "desc"):
            raise UserError(f"--sort {sort!r}: the direction after ':' is asc or desc")
    if direction is None:
        direction = "desc" if lb.best_first(column) else "asc"
    rows = sorted(lb.rows, key=lambda r: (r.checkpoint, r.mode, r.variant_key))

    def present_first(r):
        v = r.value(column)
        if column == "mean" and v is None and r.mean_partial is not None:
            return 1  # incomplete means after complete ones, before rows with nothing in the group
        return 0 if v is not None else 2

    have = [r for r in rows if r.value(column) is not None]
    if column == "mode":  # a mode's variants in the order of their values: 1-shot, 5-shot, 10-shot, 25-shot
        have.sort(key=lambda r: (r.mode, r.variant_key), reverse=direction == "desc")
    else:
        have.sort(key=lambda r: r.value(column), reverse=direction == "desc")
    rest = sorted((r for r in rows if r.value(column) is None), key=present_first)
    lb.rows = have + rest
