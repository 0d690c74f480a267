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


def columns(labels: np.ndarray, top5: np.ndarray, probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The per-sample fields of a run, in column order, each an array with one row per sample (a matrix: one
    column per rank in CSV, `top5_1` ... `top5_5`, a list in JSON Lines). `label` is a matrix too where the truth
    is a label set (ImageNet ReaL, ObjectNet: the right classes, padded with -1). `probs` (Store.probabilities,
    where the mode gives them): `top5_prob`, the five classes' probabilities, and `label_prob`, the true class's
    (empty for a label set), as stored (float16, written to 4 decimals)."""
    out = {"id": np.arange(len(labels)), "label": np.asarray(labels), "top5": np.asarray(top5)}
    if probs is not None:
        p = np.round(np.asarray(probs, np.float64), 4)
        out["top5_prob"], out["label_prob"] = p[:, :5], p[:, 5]
    return out


def write(path: str | Path, fields: dict[str, np.ndarray]) -> int:
    """`fields` (see `columns`) to `path`, written whole or not at all: JSON Lines where the name ends in .jsonl,
    else CSV. Returns the number of rows."""
    n = len(next(iter(fields.values())))
    rows = [{k: _plain(v[i].tolist()) for k, v in fields.items()} for i in range(n)]
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


def _plain(x):
    """A value as JSON and CSV write it: NaN (a label set's true-class probability) as empty."""
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def _csv_names(name: str, v: np.ndarray) -> list[str]:
    return [f"{name}_{j + 1}" for j in range(v.shape[1])] if v.ndim > 1 else [name]
