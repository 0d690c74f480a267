"""A run's per-sample test predictions, as a file (`transfer-eval show RUN --predictions FILE`): CSV, or JSON Lines
where FILE ends in .jsonl. One row per test sample, in the test split's order, as the store keeps them.

The store keeps the labels and top-5 class indices of each sample in the split's order, not the samples' ids
(paths, dataset indices): a row's `id` is its position in the run's test split, the order `load_results(...,
predictions=True)` gives and a task's loader reads (with `--bad-images skip`, the readable images' order).
"""

from __future__ import annotations

import csv
import io as text_io
import json
from pathlib import Path

import numpy as np

from transfer_eval import io


def columns(labels: np.ndarray, top5: np.ndarray) -> dict[str, np.ndarray]:
    """The per-sample fields of a run, in column order, each an array with one row per sample (a matrix: one
    column per rank in CSV, `top5_1` ... `top5_5`, a list in JSON Lines). A field the store comes to keep per
    sample (their scores, ...) is one more entry here."""
    return {"id": np.arange(len(labels)), "label": np.asarray(labels), "top5": np.asarray(top5)}


def write(path: str | Path, fields: dict[str, np.ndarray]) -> int:
    """`fields` (see `columns`) to `path`, written whole or not at all: JSON Lines where the name ends in .jsonl,
    else CSV. Returns the number of rows."""
    n = len(next(iter(fields.values())))
    rows = [{k: v[i].tolist() for k, v in fields.items()} for i in range(n)]
    if str(path).endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        out = text_io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow([name for k, v in fields.items() for name in _csv_names(k, v)])
        w.writerows([x for v in r.values() for x in (v if isinstance(v, list) else [v])] for r in rows)
        text = out.getvalue()
    io.write_text(path, text, what="the predictions file")
    return n


def _csv_names(name: str, v: np.ndarray) -> list[str]:
    return [f"{name}_{j + 1}" for j in range(v.shape[1])] if v.ndim > 1 else [name]
