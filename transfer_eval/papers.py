"""Paper presets: a published table as transfer-eval runs, with the paper's numbers beside them.

A preset is a YAML file, one per paper table, shipped in `papers/` beside the task plugins (a wheel carries it
inside the package) or in a user's folder (`--papers-dir DIR`; a user's preset of the same name wins). It names
the paper (arXiv id) and table, the settings every cell shares, one or more parts (the sub-tables the paper
prints), each with rows and columns, and the published numbers (a number, [mean, std], or {value: V, printed: P}
where the paper printed a typo P and V is the corrected number, which is compared). Numbers published outside a
paper (timm's results tables) give `url: WHERE` instead of `arxiv`:

    name: three-things-table6            # the file's name without .yaml
    paper: Three things everyone should know about Vision Transformers
    arxiv: "2203.09795"
    table: Table 6
    caption: Transfer learning with full, attention-only and ffn-only fine-tuning.
    tolerance: 1.0                       # accuracy points: within it (or the paper's std) counts as reproduced
    std: null                            # the std the paper states for every number of the table, if any
    seeds: [0]                           # cell settings; a part, a row or a column may set each of them too:
    resolution: 224                      #   checkpoint, task, mode, resolution, recipe (vit|deit|vtab), set, seeds
    recipe: deit
    set: {}                              # recipe fields, as --set gives them
    choices: [...]                       # what the paper leaves unstated, what the preset chose, and why
    parts:
      - title: ImageNet val              # may be left out for a table of one part
        rows:    [{label: ViT-S full, checkpoint: deit3_s16_in1k, mode: full}, ...]
        columns: [{label: iNat-18, task: inat2018}, {label: Birds-5, unrunnable: no CUB-200 task}, ...]
        published:
          ViT-S full: {iNat-18: 68.0, CIFAR-10: [98.9, 0.1]}

A row may also give `params` (the paper's published Params (M) column: `paper plan` and `paper report` show each
row's trainable parameters outside the head beside it), `params_note` (why our count differs from it, where it
does: `paper plan` prints it beside the gap) and `per_column: {COLUMN: {FIELD: VALUE}}` (recipe fields of
that row's cell in one column only, applied last: VPT's prompt length on one task).

A row or column given `unrunnable: REASON` (no public weights, no such task) is listed with its published numbers
and the reason, and never planned. A cell is the row's settings, then the column's, over the part's and the
preset's; it must name a checkpoint, a task and a mode. Every cell resolves through the same code as `run`, so
a preset that names an unknown checkpoint, task, mode or recipe field is one line naming its file and entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from transfer_eval import paths
from transfer_eval.errors import UserError, unknown_name

SETTINGS = ("checkpoint", "task", "mode", "resolution", "recipe", "set", "seeds")
TOP_KEYS = {"name", "paper", "arxiv", "table", "caption", "tolerance", "std", "choices", "parts", "rows", "columns"}
TOP_KEYS |= {"published", "metric", "url", *SETTINGS}
PART_KEYS = {"title", "rows", "columns", "published", *SETTINGS}
LINE_KEYS = {"label", "unrunnable", "note", "params", "params_note", "per_column", *SETTINGS}
METRICS = {"top1": "top-1 accuracy (%) on each task's test split"}


@dataclass
class Cell:
    part: str
    row: str
    column: str
    published: float | None = None
    published_std: float | None = None
    published_printed: float | None = None  # the paper's printed number where it is a typo (published: corrected)
    unrunnable: str | None = None  # why the cell cannot be run
    checkpoint: str | None = None
    task: str | None = None
    mode: str | None = None
    resolution: int | None = None
    recipe: str = "vit"
    settings: dict = field(default_factory=dict)  # recipe fields (--set)
    seeds: list | None = None  # None: the mode's default seeds
    runs: list = field(default_factory=list)  # runs.Run, once resolved

    @property
    def label(self) -> str:
        return " / ".join(x for x in (self.part, self.row, self.column) if x)

    def describe(self) -> dict:
        """Where the cell stands in the table and what it runs (a record's first fields)."""
        keys = ("part", "row", "column", "checkpoint", "task", "mode", "resolution", "recipe")
        return {k: getattr(self, k) for k in keys}


@dataclass
class Part:
    title: str
    rows: list[str]
    columns: list[str]
    params: dict = field(default_factory=dict)  # row label -> the paper's published Params (M) column, if it has one
    params_notes: dict = field(default_factory=dict)  # row label -> why our count differs from it (`params_note`)


@dataclass
class Preset:
    name: str
    paper: str
    arxiv: str
    table: str
    caption: str
    tolerance: float
    std: float | None
    choices: list[str]
    parts: list[Part]
    cells: list[Cell]
    source: str
    metric: str = "top1"
    # (part, row) -> trainable backbone parameters (head excluded) of the row's runs, as count_params counts them
    backbone_params: dict = field(default_factory=dict)
    url: str = ""  # where the numbers are published, for a table that is no paper's (then `arxiv` is "")

    @property
    def where(self) -> str:
        return f"arXiv:{self.arxiv}" if self.arxiv else self.url

    def cell(self, part: str, row: str, column: str) -> Cell | None:
        for c in self.cells:
            if (c.part, c.row, c.column) == (part, row, column):
                return c
        return None

    @property
    def runnable(self) -> list[Cell]:
        return [c for c in self.cells if c.unrunnable is None]


# ------------------------------------------------------------------------------------------------- discovery


def folders(papers_dirs=()) -> list[Path]:
    return [paths.builtin("papers"), *(Path(d) for d in papers_dirs)]


def discover(papers_dirs=()) -> dict[str, Path]:
    """Every preset file by name: the shipped ones, then each user folder's (later ones win)."""
    found: dict[str, Path] = {}
    for folder in folders(papers_dirs):
        if not folder.is_dir():
            if folder != paths.builtin("papers"):
                raise UserError(f"--papers-dir {folder} does not exist or is not a folder")
            continue
        for f in sorted(folder.glob("*.yaml")):
            found[f.stem] = f
    return found


def load(name: str, papers_dirs=(), registries=(), tasks_dirs=()) -> Preset:
    """The preset called `name`, validated: every runnable cell resolved into its runs."""
    found = discover(papers_dirs)
    if name not in found:
        raise unknown_name("paper preset", name, found, hint="(see `transfer-eval paper list`)")
    return parse(found[name], registries, tasks_dirs)


def load_all(papers_dirs=(), registries=(), tasks_dirs=()) -> list[Preset]:
    return [parse(f, registries, tasks_dirs) for f in discover(papers_dirs).values()]


# --------------------------------------------------------------------------------------------------- parsing


def _number(value, where: str) -> tuple[float, float | None, float | None]:
    """(number, std, the number as printed where the paper misprinted it)."""
    if isinstance(value, dict) and set(value) == {"value", "printed"}:
        number, std, _ = _number(value["value"], where)
        printed, _, _ = _number(value["printed"], where)
        return number, std, printed
    number, std = _plain(value, where)
    return number, std, None


def _plain(value, where: str) -> tuple[float, float | None]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return float(value[0]), float(value[1])
    raise UserError(
        f"{where}: a published number must be a number, [mean, std] or {{value: CORRECTED, printed: AS PRINTED}}, "
        f"got {value!r}"
    )


def _check_keys(obj, allowed: set, where: str) -> dict:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return obj


def _lines(items, kind: str, where: str) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise UserError(f"{where}: `{kind}` must be a non-empty list of entries with a label")
    out, seen = [], set()
    for i, item in enumerate(items):
        item = _check_keys(item, LINE_KEYS, f"{where}, {kind} entry {i + 1}")
        label = item.get("label")
        if not isinstance(label, str) or not label:
            raise UserError(f"{where}, {kind} entry {i + 1}: needs a `label`")
        if label in seen:
            raise UserError(f"{where}: two {kind} are labelled {label!r}")
        seen.add(label)
        out.append(item)
    return out


def _merge(*layers: dict) -> dict:
    merged: dict = {"set": {}}
    for layer in layers:
        for k in SETTINGS:
            if k not in layer or layer[k] is None:
                continue
            if k == "set":
                if not isinstance(layer["set"], dict):
                    raise UserError(f"`set` must be a mapping of recipe fields, got {layer['set']!r}")
                merged["set"] = {**merged["set"], **layer["set"]}
            else:
                merged[k] = layer[k]
    return merged


def parse(path: Path, registries=(), tasks_dirs=()) -> Preset:
    """Read and validate a preset file; every error is one line naming the file and the entry."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"paper preset {path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except OSError as e:
        raise UserError(f"paper preset {path}: cannot be read ({e.strerror})") from None
    where = f"paper preset {path}"
    doc = _check_keys(doc, TOP_KEYS, where)
    for key in ("name", "paper", "arxiv" if not doc.get("url") else "url", "table"):
        if not isinstance(doc.get(key), (str, int, float)) or doc.get(key) in ("", None):
            raise UserError(f"{where}: needs `{key}`" + (" (or `url`, for numbers no paper prints)" * (key == "arxiv")))
    if str(doc["name"]) != path.stem:
        raise UserError(f"{where}: `name` is {doc['name']!r}, but the file is {path.name}; they must agree")
    metric = doc.get("metric", "top1")
    if metric not in METRICS:
        raise UserError(f"{where}: unknown metric {metric!r}; known: {', '.join(METRICS)}")
    tolerance = doc.get("tolerance", 0.5)
    if not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise UserError(f"{where}: `tolerance` must be a non-negative number of accuracy points")
    std = doc.get("std")
    if std is not None and (not isinstance(std, (int, float)) or std < 0):
        raise UserError(f"{where}: `std` must be a non-negative number or null")
    choices = doc.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: `choices` must be a list of sentences")
    if "parts" in doc and any(k in doc for k in ("rows", "columns", "published")):
        raise UserError(f"{where}: give either `parts` or top-level rows/columns/published, not both")
    raw_parts = doc["parts"] if "parts" in doc else [{k: doc[k] for k in ("rows", "columns", "published") if k in doc}]
    if not isinstance(raw_parts, list) or not raw_parts:
        raise UserError(f"{where}: `parts` must be a non-empty list")
    base = {k: doc[k] for k in SETTINGS if k in doc}
    parts, cells = [], []
    for i, raw in enumerate(raw_parts):
        raw = _check_keys(raw, PART_KEYS, f"{where}, part {i + 1}")
        title = str(raw.get("title") or "")
        pw = f"{where}, part {title!r}" if title else where
        rows, columns = _lines(raw.get("rows"), "rows", pw), _lines(raw.get("columns"), "columns", pw)
        published = raw.get("published") or {}
        if not isinstance(published, dict):
            raise UserError(f"{pw}: `published` must map row labels to {{column label: number}}")
        row_labels, col_labels = [r["label"] for r in rows], [c["label"] for c in columns]
        for r, by_col in published.items():
            if r not in row_labels:
                raise UserError(f"{pw}: published numbers for row {r!r}, which is not a row (rows: {row_labels})")
            if not isinstance(by_col, dict):
                raise UserError(f"{pw}, row {r!r}: published numbers must map column labels to numbers")
            for col in by_col:
                if col not in col_labels:
                    raise UserError(f"{pw}, row {r!r}: published number for column {col!r}, which is not a column")
        for row in rows:
            if row.get("params") is not None and not isinstance(row["params"], (int, float)):
                raise UserError(f"{pw}, row {row['label']!r}: `params` is the published Params (M), a number")
            if not isinstance(row.get("params_note", ""), str):
                raise UserError(f"{pw}, row {row['label']!r}: `params_note` is a sentence (why the counts differ)")
            per = row.get("per_column") or {}
            bad = [c for c in per if c not in col_labels or not isinstance(per[c], dict)]
            if not isinstance(per, dict) or bad:
                raise UserError(
                    f"{pw}, row {row['label']!r}: `per_column` maps column labels to recipe fields (--set); "
                    f"not columns or not mappings: {', '.join(map(str, bad))}"
                )
        notes = {r["label"]: r["params_note"] for r in rows if r.get("params_note")}
        parts.append(Part(title, row_labels, col_labels, {r["label"]: r.get("params") for r in rows}, notes))
        part_layer = {k: raw[k] for k in SETTINGS if k in raw}
        for row in rows:
            for col in columns:
                cw = f"{pw}, row {row['label']!r}, column {col['label']!r}"
                value = (published.get(row["label"]) or {}).get(col["label"])
                number, nstd, printed = _number(value, cw) if value is not None else (None, None, None)
                try:
                    # a row's settings for one column (VPT's prompt length on one task) come last
                    per = {"set": (row.get("per_column") or {}).get(col["label"], {})}
                    s = _merge(base, part_layer, row, col, per)
                except UserError as e:
                    raise UserError(f"{cw}: {e}") from None
                cell = Cell(
                    title,
                    row["label"],
                    col["label"],
                    published=number,
                    published_std=nstd if nstd is not None else (float(std) if std is not None else None),
                    published_printed=printed,
                    unrunnable=row.get("unrunnable") or col.get("unrunnable"),
                    checkpoint=s.get("checkpoint"),
                    task=s.get("task"),
                    mode=s.get("mode"),
                    resolution=s.get("resolution"),
                    recipe=s.get("recipe", "vit"),
                    settings=s["set"],
                    seeds=s.get("seeds"),
                )
                if cell.unrunnable is None:
                    missing = [k for k in ("checkpoint", "task", "mode") if not getattr(cell, k)]
                    if missing:
                        raise UserError(f"{cw}: names no {', '.join(missing)} (or mark the row or column unrunnable)")
                cells.append(cell)
    preset = Preset(
        name=path.stem,
        paper=str(doc["paper"]),
        arxiv=str(doc.get("arxiv") or ""),
        table=str(doc["table"]),
        caption=str(doc.get("caption") or ""),
        tolerance=float(tolerance),
        std=float(std) if std is not None else None,
        choices=list(choices),
        parts=parts,
        cells=cells,
        source=str(path),
        metric=metric,
        url=str(doc.get("url") or ""),
    )
    resolve(preset, registries, tasks_dirs)
    return preset


def resolve(preset: Preset, registries=(), tasks_dirs=()) -> None:
    """Each runnable cell's runs, through the planner `run` uses: names, recipe fields and seeds are checked."""
    from transfer_eval import checkpoints, tasks
    from transfer_eval.methods import modes, presets
    from transfer_eval.run import runner
    from transfer_eval.tasks import names

    registry, found = checkpoints.load_registry(registries), tasks.discover(tasks_dirs)
    for cell in preset.runnable:
        part = f", part {cell.part!r}" if cell.part else ""
        where = f"paper preset {preset.source}{part}, row {cell.row!r}, column {cell.column!r}"
        try:
            seeds = cell.seeds
            if seeds is not None and (
                not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            ):
                raise UserError(f"seeds must be a list of integers, got {seeds!r}")
            if cell.recipe not in presets.PRESETS:
                raise UserError(f"unknown recipe preset {cell.recipe!r}; known: {', '.join(presets.PRESETS)}")
            cell.runs = runner.plan(
                [checkpoints.resolve(str(cell.checkpoint), registry)],
                [names.resolve(str(cell.task), found)],
                [modes.resolve(str(cell.mode))],
                seeds,
                dict(cell.settings),
                cell.resolution,
                cell.recipe,
            )
        except UserError as e:
            raise UserError(f"{where}: {e}") from None


def count_params(preset: Preset) -> dict:
    """Fill and return preset.backbone_params: for each row, the trainable parameters of its first runnable cell's
    model outside the head (what the PEFT tables' Params column counts), built on the meta device (no weights,
    no memory) and adapted as its runs are (their recipe's structural fields: rank, targets, prompt length)."""
    import copy

    import torch

    from transfer_eval import checkpoints
    from transfer_eval.methods import costs, modes

    built: dict = {}
    for part in preset.parts:
        for row in part.rows:
            cell = next((c for c in preset.cells if (c.part, c.row) == (part.title, row) and c.runs), None)
            if cell is None:
                continue
            run = cell.runs[0]
            with torch.device("meta"):
                key = (run.checkpoint.name, run.recipe.get("resolution"))
                if key not in built:
                    built[key] = checkpoints.build_model(run.checkpoint, 10, key[1], load_weights=False)[0]
                model = modes.prepare(run.mode, copy.deepcopy(built[key]), run.recipe)
            names = modes.trainable_names(run.mode, model)
            preset.backbone_params[(part.title, row)] = costs.count(model, names - modes.head_names(model))
    return preset.backbone_params


def with_seeds(preset: Preset, seeds: list[int], registries=(), tasks_dirs=()) -> Preset:
    """The preset with every runnable cell run over `seeds` (`paper plan|run|report --seeds`)."""
    for cell in preset.runnable:
        cell.seeds = list(seeds)
    resolve(preset, registries, tasks_dirs)
    return preset


# ------------------------------------------------------------------------------------------------- verdicts


@dataclass
class Outcome:
    """A cell's result against the paper: ours (mean and std over the seeds stored, in points), the difference."""

    cell: Cell
    values: list[float]  # our metric per stored seed, in points (%)
    planned: int  # runs the cell plans (seeds, shot counts)
    failed: int
    run_ids: list[int]
    verdict: str
    limit: float | None  # the allowed |difference|
    n_test: int | None = None  # test images of the first stored run (one seed's Wilson interval)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    @property
    def difference(self) -> float | None:
        if self.mean is None or self.cell.published is None:
            return None
        return self.mean - self.cell.published


VERDICTS = ("within", "outside", "missing", "no published number", "cannot be run")


def verdict(mean: float | None, published: float | None, published_std: float | None, tolerance: float) -> str:
    """within: |ours - paper| <= max(tolerance, the paper's std); outside otherwise; missing without a result."""
    if mean is None:
        return "missing"
    if published is None:
        return "no published number"
    return "within" if abs(mean - published) <= max(tolerance, published_std or 0.0) + 1e-9 else "outside"


def outcomes(preset: Preset, store) -> list[Outcome]:
    """Every cell's outcome from the store (None: no store yet, every cell missing)."""
    out = []
    for cell in preset.cells:
        limit = max(preset.tolerance, cell.published_std or 0.0) if cell.published is not None else None
        if cell.unrunnable is not None:
            out.append(Outcome(cell, [], 0, 0, [], "cannot be run", limit))
            continue
        values, ids, failed, n_test = [], [], 0, None
        for run in cell.runs:
            r = store.get_key(run.key) if store is not None else None
            if r is None:
                continue
            if r.status != "ok" or r.top1 is None:
                failed += 1
                continue
            values.append(100 * r.top1)
            ids.append(r.run_id)
            n_test = n_test or r.n_test
        mean = sum(values) / len(values) if values else None
        v = verdict(mean, cell.published, cell.published_std, preset.tolerance)
        out.append(Outcome(cell, values, len(cell.runs), failed, ids, v, limit, n_test))
    return out


def rule(preset: Preset) -> str:
    std = f"; the paper's std: {preset.std:g}" if preset.std is not None else ""
    return (
        f"within: |ours - paper| <= max({preset.tolerance:g} points, the paper's std where it gives one){std}; "
        f"ours = mean over the seeds stored (n), +- their std"
    )
