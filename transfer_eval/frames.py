"""pandas, optional (the `pandas` extra): imported where a DataFrame is asked for, with one clear line if absent."""

from __future__ import annotations

from dataclasses import fields

from transfer_eval.errors import UserError
from transfer_eval.store.results import Result


def pandas():
    try:
        import pandas
    except ImportError:
        raise UserError("DataFrames need pandas: pip install 'transfer-eval[pandas]'") from None
    return pandas


def results_frame(results, predictions=None):
    """One row per Result, its record's fields as columns (recipe, selection and curves stay dicts); with
    `predictions` (run_id -> (labels, top5) or None), the per-sample test `labels` and `top5_predictions`
    (N x 5 class indices) too."""
    rows = []
    for r in results:
        row = r.to_dict()
        if predictions is not None:
            labels, top5 = predictions.get(r.run_id) or (None, None)
            row["labels"], row["top5_predictions"] = labels, top5
        rows.append(row)
    columns = [f.name for f in fields(Result)] + (["labels", "top5_predictions"] if predictions is not None else [])
    return pandas().DataFrame(rows, columns=columns)
