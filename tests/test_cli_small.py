"""The small things a new user met on the command line (issue 34, item 10): compare takes -c as every command
does, help texts that name real things (every mode, real checkpoints) and explain every option, and `list
checkpoints` saying what the 16 px demo models are."""

import json
import re

from conftest import cli, digits_results, json_lines

from transfer_eval.checkpoints import load_registry
from transfer_eval.methods.modes import MODES


def test_compare_takes_checkpoints_with_c_as_well_as_positionally(tmp_path):
    db = digits_results(tmp_path / "r.sqlite", {"vit_demo": 60, "vit_demo_shapes": 90})
    common = ("-m", "linear", "--resamples", "200", "--json", "--results", db)
    positional = cli("compare", "vit_demo", "vit_demo_shapes", *common)
    with_c = cli("compare", "-c", "vit_demo,vit_demo_shapes", *common)
    mixed = cli("compare", "vit_demo", "-c", "vit_demo_shapes", *common)
    for proc in (positional, with_c, mixed):
        assert proc.returncode == 0, proc.stderr
    (row,) = json_lines(with_c.stdout)
    assert json_lines(positional.stdout) == json_lines(mixed.stdout) == [row]
    assert round(row["delta"], 6) == 0.3  # B (vit_demo_shapes) - A (vit_demo): the order given is kept


def test_compare_help_names_registered_checkpoints():
    proc = cli("compare", "--help")
    assert proc.returncode == 0, proc.stderr
    examples = re.findall(r"transfer-eval compare (.*)", proc.stdout)
    named = {w for line in examples for w in re.split(r"[ ,]", line) if w and not w.startswith("-") and "_" in w}
    assert len(examples) >= 2 and {"vit_demo", "vit_demo_shapes"} <= named
    assert named <= set(load_registry()), named - set(load_registry())


def test_run_help_lists_every_mode():
    proc = cli("run", "--help")
    assert proc.returncode == 0, proc.stderr
    listed = re.search(r"Modes, comma-separated: (.*?) \(see", " ".join(proc.stdout.split()))
    assert listed and [m.strip() for m in listed.group(1).split(",")] == list(MODES)


def test_report_resamples_has_help():
    for command in ("report", "compare"):
        proc = cli(command, "--help")
        assert proc.returncode == 0, proc.stderr
        entry = " ".join(proc.stdout.split("--resamples", 1)[1].split("\n  -", 1)[0].split())
        text = re.sub(r"INTEGER RANGE|\[default: 10000; x>=1\]", "", entry).strip()
        assert text.startswith("Bootstrap resamples for the confidence intervals"), (command, entry)


def test_list_checkpoints_says_what_the_demo_models_are():
    proc = cli("list", "checkpoints")
    assert proc.returncode == 0, proc.stderr
    (demo,) = [line for line in proc.stdout.splitlines() if line.split()[:1] == ["vit_demo"]]
    assert "16 px" in demo and "patch 4" in demo and "0.8M params" in demo
    plain = [line for line in proc.stdout.splitlines() if line.split()[:1] == ["vit_b16_in21k"]]
    assert plain and "vit_base_patch16_224.orig_in21k" in plain[0] and "params" not in plain[0]
    rows = {r["name"]: r for r in map(json.loads, cli("list", "checkpoints", "--json").stdout.splitlines())}
    assert rows["vit_demo_shapes"]["architecture"].endswith("0.8M params")
    assert rows["vit_b16_in21k"]["architecture"] == "vit_base_patch16_224.orig_in21k"


def test_show_writes_a_runs_predictions_as_csv_or_json_lines(tmp_path):
    """`show RUN --predictions FILE` (issue 42): one row per test sample in the split's order, the same as the store
    holds; CSV, or JSON Lines where the name ends in .jsonl; a run that is not stored is one line, exit 2."""
    import csv

    from transfer_eval.store.results import Store

    db = digits_results(tmp_path / "r.sqlite", {"vit_demo": 60}, n=20)
    store = Store(db)
    labels, top5 = store.predictions(1)
    store.close()
    as_csv, as_jsonl = tmp_path / "p.csv", tmp_path / "p.jsonl"
    for path in (as_csv, as_jsonl):
        proc = cli("show", "1", "--results", db, "--predictions", path)
        assert proc.returncode == 0 and "wrote 20 test predictions" in proc.stderr, proc.stderr
    rows = list(csv.DictReader(as_csv.open()))
    assert list(rows[0]) == ["id", "label", "top5_1", "top5_2", "top5_3", "top5_4", "top5_5"]
    assert [[int(v) for v in r.values()] for r in rows] == [[i, labels[i], *top5[i]] for i in range(20)]
    assert json_lines(as_jsonl.read_text()) == [
        {"id": i, "label": int(labels[i]), "top5": top5[i].tolist()} for i in range(20)
    ]
    missing = cli("show", "2", "--results", db, "--predictions", tmp_path / "q.csv")
    assert missing.returncode == 2 and "no run 2" in missing.stderr and not (tmp_path / "q.csv").exists()


def test_show_predictions_carry_the_stored_probabilities_and_label_sets(tmp_path):
    """Where a run stored probabilities (schema 4) they follow the top-5; a label set (ReaL) is a matrix of labels
    and its true-class probability is empty."""
    import csv

    import numpy as np

    from transfer_eval.store.results import Result, Store

    db = tmp_path / "r.sqlite"
    store = Store(db)
    probs = np.array([[0.5, 0.25, 0.125, 0.0625, 0.0, 0.25], [0.75, 0.125, 0.0625, 0.0, 0.0, np.nan]])
    sets = np.array([[1, -1], [0, 3]])
    rid = store.put(
        Result("c", "w", "t", 1, "linear", "p", 0, top1=0.5), sets, [[0, 1, 2, 3, 4], [3, 1, 0, 2, 4]], probs
    )
    store.close()
    path = tmp_path / "p.csv"
    assert cli("show", str(rid), "--results", db, "--predictions", path).returncode == 0
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0])[:3] == ["id", "label_1", "label_2"] and list(rows[0])[-6:] == [
        *(f"top5_prob_{i}" for i in range(1, 6)),
        "label_prob",
    ]
    assert [float(rows[0][f"top5_prob_{i}"]) for i in range(1, 6)] == probs[0, :5].tolist()
    assert rows[0]["label_prob"] == "0.25" and rows[1]["label_prob"] == ""
    lines = json_lines(
        cli("show", str(rid), "--results", db, "--predictions", tmp_path / "p.jsonl").stderr
        and (tmp_path / "p.jsonl").read_text()
    )
    assert lines[1]["label"] == [0, 3] and lines[1]["label_prob"] is None and lines[1]["top5_prob"][0] == 0.75
