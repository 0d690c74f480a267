"""Leaderboard rows per variant (what a user chose on purpose), superseded setups still superseded, compare pairing
like with like, plot labels that stay readable, and one JSON convention (JSON Lines) for every command."""

import json

import numpy as np
import pytest
from conftest import cli, json_lines
from conftest import leaderboard_of as _board

from transfer_eval import report
from transfer_eval.protocol import identify, protocol_hash
from transfer_eval.store.results import Result, Store

N = 50


def put(store, checkpoint, mode, recipe, acc, seed=0, task="digits", version=1, precision="auto", resolution=16):
    correct = np.zeros(N, bool)
    correct[: round(acc * N)] = True
    labels = (np.arange(N) % 10).astype(np.int32)
    top5 = ((labels[:, None] + np.arange(1, 6)[None, :]) % 10).astype(np.int32)
    top5[correct, 0] = labels[correct]
    r = Result(
        checkpoint=checkpoint,
        weights_sha256="w" * 64,
        task=task,
        task_version=1,
        mode=mode,
        protocol_hash=protocol_hash(mode, version, recipe, None, precision),
        seed=seed,
        top1=float(correct.mean()),
        n_test=N,
        split_manifest=f"manifest-{task}",
        recipe=recipe,
        resolution=resolution,
        shots=recipe.get("shots"),
        params_total=1000,
        params_per_task=100,
        bytes_per_task=400,
        train_pflops_total=1.0,
    )
    store.put(r, labels, top5)
    return r


FT = {"steps": 200, "lr": 0.002, "preset": "vit"}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("variants") / "r.sqlite"
    store = Store(path)
    for ck, base in (("a", 0.5), ("b", 0.6)):
        for shots, acc in ((1, 0.2), (5, 0.4), (10, 0.5), (25, 0.6)):
            for seed in (0, 1, 2):
                put(store, ck, "fewshot", {"shots": shots, "l2": 1024.0}, acc + (ck == "b") / 10 + seed / 50, seed)
        put(store, ck, "full", FT, base)  # 16 px
        put(store, ck, "full", {**FT, "resolution": 32}, base + 0.1, resolution=32)  # 32 px, on purpose
        put(store, ck, "lora", {**FT, "lora_rank": 8}, base + 0.02)
        put(store, ck, "linear", {"c_grid": [1.0]}, base)
    put(store, "a", "lora", {**FT, "lora_rank": 4}, 0.48)  # only a has rank 4
    put(store, "a", "linear", {"c_grid": [1.0]}, 0.30, version=1, task="cifar10")  # an old protocol version ...
    put(store, "a", "linear", {"c_grid": [1.0]}, 0.40, version=2, task="cifar10")  # ... superseded by version 2
    put(store, "a", "linear", {"c_grid": [1.0]}, 0.44, precision="bf16")  # a precision chosen on purpose
    store.close()
    return path


def test_identify_reads_version_and_precision_back():
    r = Result("a", "w", "t", 1, "linear", protocol_hash("linear", 2, {"x": 1}, None, "bf16"), 0, recipe={"x": 1})
    assert identify(r) == (2, "bf16")
    r.protocol_hash = "0" * 16
    assert identify(r) == (None, None)


def test_one_row_per_shot_count_resolution_rank_and_precision(db):
    lb = _board(db, tasks=["digits"])
    labels = [(r.checkpoint, r.label) for r in lb.rows]
    for ck in ("a", "b"):
        assert {lab for c, lab in labels if c == ck and lab.startswith("fewshot")} == {
            f"fewshot {k}-shot" for k in (1, 5, 10, 25)
        }
        assert (ck, "full @16") in labels and (ck, "full @32") in labels
        assert (ck, "lora r=8") in labels  # b has only rank 8, named as a's rank-8 row is: they line up
    assert ("a", "lora r=4") in labels and ("a", "linear bf16") in labels and ("a", "linear auto") in labels
    rows = {(r.checkpoint, r.label): r for r in lb.rows}
    few = rows[("a", "fewshot 10-shot")].cells["digits"]
    assert few.n == 3 and few.top1 == pytest.approx(np.mean([0.50, 0.52, 0.54]))
    assert rows[("a", "full @32")].cells["digits"].top1 == pytest.approx(0.6)
    assert rows[("a", "full @16")].cells["digits"].top1 == pytest.approx(0.5)
    assert not any("digits" in n for n in lb.notes)  # variants are not superseded setups
    ordered = [r.label for r in _board(db, checkpoints=["a"], modes=["fewshot"], sort="mode").rows]
    assert ordered == ["fewshot 1-shot", "fewshot 5-shot", "fewshot 10-shot", "fewshot 25-shot"]


def test_a_new_protocol_version_still_supersedes_and_the_note_says_so(db):
    lb = _board(db, tasks=["cifar10"], modes=["linear"])
    (row,) = [r for r in lb.rows if r.cells["cifar10"] is not None]
    cell = row.cells["cifar10"]
    assert cell.top1 == pytest.approx(0.40) and cell.n_setups == 2 and report.acc_text(cell).endswith("*")
    (note,) = [n for n in lb.notes if "cifar10" in n]
    assert "protocol version 1 -> 2" in note and "a / linear / cifar10: 2 setups" in note


def test_every_format_shows_the_variant(db):
    store = Store(db)
    lb = report.leaderboard(store, tasks=["digits"], modes=["fewshot"])
    text = report.render(lb, "table")
    assert "fewshot 10-shot" in text and "fewshot 25-shot" in text
    rows = json_lines(report.render(lb, "json"))
    assert {(r["checkpoint"], r["variant"]) for r in rows} == {(c, f"{k}-shot") for c in "ab" for k in (1, 5, 10, 25)}
    assert "variant" in report.render(lb, "csv").splitlines()[0].split(",")
    assert "fewshot 10-shot" in report.render(lb, "markdown") and "fewshot 10-shot" in report.render(lb, "latex")
    store.close()


def test_compare_pairs_the_same_variant(db):
    store = Store(db)
    cmp = report.compare(store, ["a", "b"], tasks=["digits"], resamples=100)
    store.close()
    pairs = {(r.mode, r.variant) for r in cmp.rows}
    assert {("fewshot", f"{k}-shot") for k in (1, 5, 10, 25)} <= pairs
    assert ("full", "@16") in pairs and ("full", "@32") in pairs and ("lora", "r=8") in pairs
    assert ("lora", "r=4") not in pairs  # b has no rank 4: nothing to pair it with
    full32 = next(r for r in cmp.rows if (r.mode, r.variant) == ("full", "@32"))
    assert full32.acc_a == pytest.approx(0.6) and full32.acc_b == pytest.approx(0.7)
    assert "full @32" in report.compare_text(cmp)


def test_plot_labels_stay_inside_and_apart():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transfer_eval.report import plots

    rng = np.random.default_rng(0)
    pts = [
        (float(10 ** rng.uniform(4, 7)), float(rng.uniform(70, 72)), f"checkpoint_{i:02d} lora r={i}", "lora")
        for i in range(12)
    ]  # a dozen points in a narrow band, long labels, one at the right edge
    pts.append((1e7, 71.0, "augreg_b16_in21k_ft_in1k full @384", "full"))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    plots._scatter(ax, pts, "params/task", "cifar100")
    fig.tight_layout()
    plots.place_all(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    texts = list(ax.texts)  # each point's label, or its number where the label found no clear place
    assert len(texts) == len(pts)
    footnote = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    for label, mode in [(p[2], p[3]) for p in pts]:
        numbers = [t.get_text() for t in texts if t.get_text().isdigit()]
        assert label in {t.get_text() for t in texts} or any(f"{n} {label} ({mode})" in footnote for n in numbers)
    extents = [t.get_window_extent(renderer) for t in texts]
    for t, e in zip(texts, extents):
        assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, t.get_text()
    for i in range(len(extents)):
        for j in range(i):
            assert not extents[i].overlaps(extents[j]), (texts[i].get_text(), texts[j].get_text())
    plt.close(fig)


def test_every_json_output_is_json_lines(db, tmp_path):
    outputs = {
        "leaderboard": cli("leaderboard", "--results", db, "--format", "json"),
        "compare": cli("compare", "a", "b", "--results", db, "--json", "--resamples", "10"),
        "show": cli("show", "1", "--results", db, "--json"),
        "list tasks": cli("list", "tasks", "--json"),
        "list modes": cli("list", "modes", "--json"),
        "list checkpoints": cli("list", "checkpoints", "--json"),
        "list groups": cli("list", "groups", "--json"),
        "cost": cli("cost", "-c", "vit_demo", "-m", "linear,knn", "--json"),
        "cache list": cli("cache", "list", "--json"),
    }
    for name, proc in outputs.items():
        assert proc.returncode == 0, (name, proc.stderr)
        lines = proc.stdout.splitlines()
        assert lines or name == "cache list", name
        for line in lines:
            assert isinstance(json.loads(line), dict), (name, line)
