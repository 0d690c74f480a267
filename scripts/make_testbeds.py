"""Regenerate the effective-robustness testbeds the package ships, and the `timm-imagenet` paper preset from them.

    python scripts/make_testbeds.py --timm-results DIR --taori-testbed DIR

- `--timm-results`: timm's `results/` folder (github.com/huggingface/pytorch-image-models; the copy used was at commit
  aa4b5850, 2026-08-08): results-imagenet.csv, -real, -imagenetv2-matched-frequency, sketch, -a, -a-clean, -r,
  -r-clean. Written to transfer_eval/report/testbeds/timm.csv: one row per (model, img_size), the top-1 (%) on each
  set. timm prints a model evaluated at two sizes twice: each row is its own point.
- `--taori-testbed`: a checkout of github.com/modestyachts/imagenet-testbed (Taori et al. 2020; the copy used was at
  commit 0170eec6, whose robustness_top1s.csv and plotting/model_types.py last changed in f4083a29, 2021-09-15).
  timm publishes no ObjectNet results, so ObjectNet's line is fitted over Taori et al.'s own testbed, by their rule
  (plotting/paper_objectnet.py, use_for_line_fit): the models of type "standard training" whose names hold none of
  aws, batch64, subsample. Written to transfer_eval/report/testbeds/objectnet.csv: those models' val and
  objectnet-1.0-beta top-1 (%).
- papers/timm-imagenet.yaml: the registry's ImageNet-1k classifiers (checkpoints.yaml entries whose timm weights
  carry a 1000-class head) that timm's results list at the checkpoint's own input size, `pretrained` on each set,
  against timm's numbers (from the testbed just written).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "transfer_eval" / "report" / "testbeds"
TIMM_COMMIT, TIMM_DATE = "aa4b5850", "2026-08-08"
TAORI_COMMIT, TAORI_DATE = "f4083a29524fe9a9e029bf34d1476cea5a497132", "2021-09-15"
# testbed column -> timm's results file
TIMM_FILES = {
    "val": "results-imagenet.csv",
    "real": "results-imagenet-real.csv",
    "v2": "results-imagenetv2-matched-frequency.csv",
    "sketch": "results-sketch.csv",
    "a": "results-imagenet-a.csv",
    "a_clean": "results-imagenet-a-clean.csv",
    "r": "results-imagenet-r.csv",
    "r_clean": "results-imagenet-r-clean.csv",
}
# the preset's columns: label -> (task, testbed column)
PRESET_COLUMNS = {
    "val": ("imagenet1k", "val"),
    "ReaL": ("imagenet_real", "real"),
    "v2": ("imagenetv2_matched_frequency", "v2"),
    "Sketch": ("imagenet_sketch", "sketch"),
    "A": ("imagenet_a", "a"),
    "R": ("imagenet_r", "r"),
}


def _read(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def timm_testbed(folder: Path) -> list[dict]:
    """One row per (model, img_size) of timm's val results, with the top-1 of every set ('' where timm has none)."""
    by_set = {
        col: {(r["model"], r["img_size"]): r["top1"] for r in _read(folder / name)} for col, name in TIMM_FILES.items()
    }
    rows = []
    for r in _read(folder / TIMM_FILES["val"]):
        key = (r["model"], r["img_size"])
        row = {k: r[k] for k in ("model", "img_size", "param_count", "crop_pct", "interpolation")}
        row["param_count"] = row["param_count"].replace(",", "")  # millions; timm prints 1,014.45
        row.update({col: by_set[col].get(key, "") for col in TIMM_FILES})
        rows.append(row)
    return rows


def taori_standard(checkout: Path) -> list[dict]:
    """Taori et al.'s line-fit models for ObjectNet: standard training, not aws / batch64 / subsample."""
    types = (checkout / "plotting" / "model_types.py").read_text(encoding="utf-8")
    head = types.split("class NatModelTypes")[0]  # model_types_map: name -> ModelTypes.X
    standard = set(re.findall(r"'([^']+)':\s*ModelTypes\.STANDARD\b", head))
    rows = []
    for r in _read(checkout / "robustness_top1s.csv"):
        name = r["model"]
        if name not in standard or any(s in name.lower() for s in ("aws", "batch64", "subsample")):
            continue
        if r.get("val") and r.get("objectnet-1.0-beta"):
            rows.append(
                {"model": name, "val": f"{float(r['val']):.3f}", "objectnet": f"{float(r['objectnet-1.0-beta']):.3f}"}
            )
    return sorted(rows, key=lambda r: -float(r["val"]))


def write_csv(path: Path, header: list[str], rows: list[dict]):
    buf = io.StringIO()
    buf.writelines(f"# {line}\n" for line in header)
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


TIMM_HEADER = [
    "source: timm (github.com/huggingface/pytorch-image-models) results/*.csv, Apache-2.0",
    f"commit: {TIMM_COMMIT}",
    f"date: {TIMM_DATE}",
    "Top-1 (%) of each pretrained model as timm's validate.py measured it, one row per (model, img_size): ImageNet-1k",
    "val, ReaL, ImageNet-v2 matched frequency, ImageNet-Sketch, ImageNet-A and -R (masked to their 200 classes), and",
    "val restricted and masked to those classes (a_clean, r_clean); empty where timm has no result. Regenerate with",
    "scripts/make_testbeds.py.",
]
TAORI_HEADER = [
    "source: Taori et al. 2020 (arXiv 2007.00644), github.com/modestyachts/imagenet-testbed robustness_top1s.csv, MIT",
    "license, Copyright (c) 2020 Rohan Taori, Achal Dave, Vaishaal Shankar, Nicholas Carlini, Benjamin Recht,",
    "Ludwig Schmidt",
    f"commit: {TAORI_COMMIT[:8]}",
    f"date: {TAORI_DATE}",
    "The models Taori et al. fit ObjectNet's line on (plotting/paper_objectnet.py: standard training; not aws,",
    "batch64, subsample): top-1 (%) on ImageNet-1k val and on ObjectNet's 113 ImageNet classes (objectnet-1.0-beta).",
    "Regenerate with scripts/make_testbeds.py.",
]


def classifiers(testbed: list[dict]) -> list[tuple[str, str, dict]]:
    """(registry name, timm model, testbed row) of each ImageNet-1k classifier in checkpoints.yaml timm lists."""
    import timm

    registry = yaml.safe_load((ROOT / "checkpoints.yaml").read_text(encoding="utf-8"))
    rows = {(r["model"], r["img_size"]): r for r in testbed}
    out = []
    for name, entry in registry.items():
        model = entry["model"]
        if entry.get("weights", "timm") != "timm" or "." not in model or entry.get("data_config"):
            continue
        cfg = timm.models.get_pretrained_cfg(model).to_dict()
        row = rows.get((model, str(cfg["input_size"][-1])))
        if cfg.get("num_classes") == 1000 and row is not None:
            out.append((name, model, row))
    return out


PRESET_HEAD = """\
# timm's published ImageNet results for the registry's ImageNet-1k classifiers: each checkpoint's own head
# (`pretrained`) on ImageNet-1k val, ReaL, ImageNet-v2, -Sketch, -A and -R, at its own data config. Generated by
# scripts/make_testbeds.py from the shipped testbed (transfer_eval/report/testbeds/timm.csv): edit the script, not
# this file.
name: timm-imagenet
paper: PyTorch Image Models (timm), ImageNet results of its pretrained models
url: https://github.com/huggingface/pytorch-image-models/tree/main/results
table: results/*.csv at commit {commit} ({date})
caption: >-
  Top-1 accuracy (%) of each checkpoint's own ImageNet-1k classifier on ImageNet-1k val and its shifted test sets,
  as timm's validate.py measured it.
tolerance: 0.3
std: null
mode: pretrained
seeds: [0]
choices:
  - >-
    Data config: each checkpoint's own, as timm's validate.py resolves it from the weights' pretrained_cfg (input
    size, crop_pct, interpolation, mean and std), which is what `pretrained` uses; every row is timm's result at
    that input size (img_size in timm's tables; a model timm also lists at another size is that other row).
  - >-
    Scoring: ImageNet-A and -R restricted to their 200 classes before top-k (timm's --valid-labels); ReaL: the
    46,837 val images with a label set, right when the prediction is in it (timm's --real-labels); ImageNet-v2:
    the matched-frequency variant.
  - >-
    Tolerance: 0.3 points, stated (timm prints no std): the same weights and preprocessing give the same
    predictions up to resizing and numeric precision (timm's tables are run with mixed precision on a GPU).
"""


def preset(testbed: list[dict]) -> str:
    rows = classifiers(testbed)
    doc = {
        "rows": [{"label": name, "checkpoint": name} for name, _, _ in rows],
        "columns": [{"label": label, "task": task} for label, (task, _) in PRESET_COLUMNS.items()],
        "published": {
            name: {label: float(row[col]) for label, (_, col) in PRESET_COLUMNS.items() if row[col]}
            for name, _, row in rows
        },
    }
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=200)
    return PRESET_HEAD.format(commit=TIMM_COMMIT, date=TIMM_DATE) + body


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timm-results", type=Path, required=True, help="timm's results/ folder")
    p.add_argument("--taori-testbed", type=Path, required=True, help="a checkout of modestyachts/imagenet-testbed")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    timm_rows = timm_testbed(args.timm_results)
    write_csv(OUT / "timm.csv", TIMM_HEADER, timm_rows)
    taori = taori_standard(args.taori_testbed)
    write_csv(OUT / "objectnet.csv", TAORI_HEADER, taori)
    (ROOT / "papers" / "timm-imagenet.yaml").write_text(preset(timm_rows), encoding="utf-8")
    print(f"wrote {len(timm_rows)} timm rows, {len(taori)} ObjectNet rows and papers/timm-imagenet.yaml")


if __name__ == "__main__":
    main()
