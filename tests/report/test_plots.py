"""The accuracy-against-cost plots of a crowded store (issue 34.5): labels clear of points, lines and each other
(or numbered in a legend below), one colour per mode in every panel, rows with 0 parameters or 0 training compute
shown."""

import numpy as np
import pytest
from conftest import leaderboard_of as _board

from transfer_eval.protocol import protocol_hash
from transfer_eval.store.results import Result, Store

N = 200
HEAD = 1_290  # the demo models' 10-class head
PARAMS = {"linear": HEAD, "fewshot": HEAD, "knn": 0, "pretrained": 0, "attention": 268_000, "full": 803_000}
PFLOPS = {"linear": 0.002, "fewshot": 0.0005, "knn": 0.001, "pretrained": 0.0, "attention": 0.2, "full": 0.3}


def put(store, checkpoint, task, mode, recipe, acc):
    correct = np.zeros(N, bool)
    correct[: round(acc * N)] = True
    labels = (np.arange(N) % 10).astype(np.int32)
    top5 = ((labels[:, None] + np.arange(1, 6)[None, :]) % 10).astype(np.int32)
    top5[correct, 0] = labels[correct]
    steps = recipe.get("steps", 500) / 500
    store.put(
        Result(
            checkpoint=checkpoint,
            weights_sha256="w" * 64,
            task=task,
            task_version=1,
            mode=mode,
            protocol_hash=protocol_hash(mode, 1, recipe, None, "auto"),
            seed=0,
            top1=float(correct.mean()),
            n_test=N,
            split_manifest=f"manifest-{task}",
            recipe=recipe,
            resolution=16,
            shots=recipe.get("shots"),
            params_total=930_920,
            params_trainable=PARAMS[mode],
            params_per_task=PARAMS[mode],
            bytes_per_task=4 * PARAMS[mode],
            train_pflops_total=PFLOPS[mode] * steps,
        ),
        labels,
        top5,
    )


def crowded_store(path):
    """19 rows as a new user's store holds them after a few runs of the two demo checkpoints on two tasks: every
    mode, few-shot's four shot counts, a k-NN k and a shorter fine-tuning schedule as variants (their labels are
    long), zero-parameter rows (k-NN, the pretrained mode), accuracies close together."""
    store = Store(path)
    rng = np.random.default_rng(0)
    for task, base in (("digits", 0.90), ("cifar10", 0.60)):
        for ck, lift in (("vit_demo", 0.0), ("vit_demo_shapes", 0.03)):
            acc = {"linear": 0.0, "knn": -0.01, "attention": 0.03, "full": 0.04}
            for mode, delta in acc.items():
                recipe = {"k": 20} if mode == "knn" else {"steps": 500, "warmup_steps": 100} if delta > 0 else {}
                put(store, ck, task, mode, recipe, base + lift + delta)
            for shots, a in ((1, -0.3), (5, -0.15), (10, -0.08), (25, -0.04)):
                put(store, ck, task, "fewshot", {"shots": shots}, base + lift + a + rng.uniform(-0.01, 0.01))
        put(store, "vit_demo_shapes", task, "knn", {"k": 100000}, base + 0.025)
        put(store, "vit_demo_shapes", task, "attention", {"steps": 200, "warmup_steps": 20}, base + 0.035)
        put(store, "vit_demo", task, "pretrained", {}, base - 0.2)
    store.close()
    return path


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    return crowded_store(tmp_path_factory.mktemp("crowded") / "r.sqlite")


def test_the_crowded_store_has_19_rows_with_variants(crowded):
    lb = _board(crowded)
    assert len(lb.rows) == 19, [f"{r.checkpoint} {r.label}" for r in lb.rows]
    labels = {f"{r.checkpoint} {r.label}" for r in lb.rows}
    assert {"vit_demo_shapes knn k=100000", "vit_demo_shapes attention steps=200 warmup_steps=20"} <= labels


@pytest.fixture(scope="module")
def drawn(crowded):
    """The figure plot_leaderboard saves for the crowded store, as it is when saved (caught at the save)."""
    from transfer_eval.report import plots

    caught = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(plots, "_save", lambda fig, path: caught.append(fig))
        plots.plot_leaderboard(_board(crowded), "unused.png")
    (fig,) = caught
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()  # closed by pyplot: drawn again on a canvas of its own
    return fig


def _circles(ax, renderer):
    """Every marker drawn in `ax` (points and Pareto rings) as (x, y, radius) in pixels."""
    from matplotlib.collections import PathCollection

    out = []
    for c in ax.collections:
        if isinstance(c, PathCollection):
            sizes = c.get_sizes()
            for k, xy in enumerate(ax.transData.transform(c.get_offsets())):
                radius_pt = (float(sizes[k % len(sizes)]) ** 0.5) / 2 + float(np.max(c.get_linewidths())) / 2
                out.append((float(xy[0]), float(xy[1]), radius_pt * ax.figure.dpi / 72))
    return out


def _hits(box, circle) -> bool:
    x, y, r = circle
    nx, ny = min(max(x, box.x0), box.x1), min(max(y, box.y0), box.y1)
    return (nx - x) ** 2 + (ny - y) ** 2 < r * r


def test_labels_clear_of_points_lines_and_each_other_else_numbered(drawn):
    from matplotlib.text import Annotation

    fig = drawn
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == 6  # two tasks and their mean, each against params/task and training compute
    footnote = "\n".join(t.get_text() for t in fig.texts).replace("\n", " ")
    numbered = 0
    for ax in panels:
        texts = [t for t in ax.texts if isinstance(t, Annotation)]
        boxes = [t.get_window_extent(renderer) for t in texts]
        for i in range(len(boxes)):
            for j in range(i):
                assert not boxes[i].overlaps(boxes[j]), (ax.get_title(), texts[i].get_text(), texts[j].get_text())
        for t, b in zip(texts, boxes):
            assert not any(_hits(b, c) for c in _circles(ax, renderer)), (ax.get_title(), t.get_text())
            for line in ax.lines:  # the Pareto front's steps, as drawn
                path = line.get_transform().transform_path(line._get_transformed_path().get_fully_transformed_path())
                assert not path.intersects_bbox(b, filled=False), (ax.get_title(), t.get_text())
        shown = {t.get_text() for t in texts}
        for label, mode in [(p[2], p[3]) for p in ax.te_labels]:
            if label in shown:
                continue
            number = [n for n in shown if n.isdigit() and f"{n} {label} ({mode})" in footnote]
            assert number or f"{label} ({mode})" in footnote.split("Not labelled", 1)[-1], (ax.get_title(), label)
            numbered += bool(number)
    assert numbered > 0  # the store is crowded enough that some labels are numbers


def test_one_colour_per_mode_in_every_panel_and_zero_cost_rows_shown(drawn):
    from matplotlib.colors import to_hex

    fig = drawn
    colours, zero_x = {}, {}
    for ax in [ax for ax in fig.axes if ax.collections]:
        for c in ax.collections:
            mode = c.get_label()
            if mode.startswith("_"):  # the Pareto rings
                continue
            colours.setdefault(mode, set()).add(to_hex(c.get_facecolor()[0]))
            zero_x.setdefault(mode, set()).update(
                ax.get_title().split(": ")[-1] for x in c.get_offsets()[:, 0] if x == 0
            )
    assert set(colours) == {"linear", "knn", "attention", "full", "fewshot", "pretrained"}
    assert all(len(c) == 1 for c in colours.values()), colours  # the same colour in every panel
    assert len({c for cs in colours.values() for c in cs}) == len(colours)  # and no two modes share one
    assert zero_x["knn"] == {"accuracy vs params/task"}  # 0 parameters: drawn, at 0
    assert zero_x["pretrained"] == {"accuracy vs params/task", "accuracy vs training compute"}  # 0 training too


def test_mode_colours_are_fixed_and_distinct():
    from transfer_eval.report.plots import mode_colors

    one, other = mode_colors({"linear", "knn", "zeta"}), mode_colors({"knn", "full", "zeta", "alpha", "beta"})
    assert one["knn"] == other["knn"] and one["zeta"] == other["zeta"]  # the same in every report
    assert len(set(other.values())) == 5  # modes of one report never share a colour
    many = mode_colors({f"mode{i}" for i in range(25)})  # more modes than colours: still a colour each
    assert len(many) == 25
