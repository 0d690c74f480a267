"""The report site of a new user's store (issue 34.7): ad-hoc tasks described from their names, `report -c/-t/-m`
as leaderboard's filters, the tables inside the page at 1400 px, paper pages linking back to the index."""

import re

import pytest
from conftest import assert_one_line_error, cli
from test_plots import crowded_store, put
from test_report import _browser, _Tables

from transfer_eval.store.results import Store


def _store(path, folder):
    """The crowded store (19 rows, long variant labels) and, as after a first run on one's own data, a folder task
    and a Hugging Face dataset with a result or two (every other row then reads incomplete)."""
    crowded_store(path)
    store = Store(path)
    for ck, acc in (("vit_demo", 0.7), ("vit_demo_shapes", 0.75)):
        put(store, ck, f"folder:{folder}", "linear", {}, acc)
    put(store, "vit_demo", "hf:/data/beans:label=labels", "linear", {}, 0.8)
    put(store, "vit_demo", "hf:someone/beans", "linear", {}, 0.8)
    store.close()
    return path


@pytest.fixture(scope="module")
def adhoc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adhoc")
    folder = (tmp / "data" / "birds").resolve()
    db = _store(tmp / "r.sqlite", folder)
    out = tmp / "site"
    proc = cli("report", "--html", out, "--resamples", "50", "--results", db)
    assert proc.returncode == 0, proc.stderr
    return tmp, db, folder, out


def _tables(html: str) -> dict:
    p = _Tables()
    p.feed(html)
    return {t["attrs"].get("id") or t["attrs"].get("class"): [[c[0] for c in r] for r in t["rows"]] for t in p.tables}


def test_ad_hoc_tasks_are_described_from_their_names(adhoc):
    _, _, folder, out = adhoc
    tasks = {r[0]: r for r in _tables((out / "index.html").read_text())["tasks"][1:]}
    assert tasks[f"folder:{folder}"][3] == f"an image folder at {folder}"
    assert tasks["hf:/data/beans:label=labels"][3] == "a Hugging Face dataset at /data/beans, label column 'labels'"
    assert tasks["hf:someone/beans"][3] == "a Hugging Face dataset someone/beans (the Hugging Face Hub)"
    assert tasks["digits"][3].startswith("scikit-learn's handwritten digits")  # a plugin's own words
    assert not any("not among the task plugins" in r[3] for r in tasks.values())


def test_paper_pages_link_back_to_the_index(adhoc):
    pages = sorted(adhoc[3].glob("paper-*.html"))
    assert pages
    for page in pages:
        assert re.search(r'<a href="index.html">[^<]+</a>', page.read_text()), page.name


def test_report_takes_leaderboards_filters(adhoc):
    tmp, db, folder, _ = adhoc
    out = tmp / "filtered"
    proc = cli(
        "report", "--html", out, "-c", "vit_demo_shapes,vit_demo", "-t", "folder:data/birds", "-m", "linear",
        "--resamples", "50", "--results", db, cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    tables = _tables((out / "index.html").read_text())
    board = tables["leaderboard"]
    assert [(r[0], r[1]) for r in board[1:]] == [("vit_demo_shapes", "linear"), ("vit_demo", "linear")]
    assert board[0][2] == f"folder:{folder}" and "cifar10" not in board[0]  # the one task column asked for
    assert not any("incomplete" in c for r in board[1:] for c in r)
    assert [r[0] for r in tables["tasks"][1:]] == [f"folder:{folder}"]
    compared = {(r[0], r[1]) for r in tables["compare"][1:]}
    assert compared == {(f"folder:{folder}", "linear")}  # the comparisons filtered alike
    for bad, fragment in (("-c", "unknown checkpoint 'nope'"), ("-m", "unknown mode 'nope'")):
        assert_one_line_error(cli("report", "--html", tmp / "bad", bad, "nope", "--results", db), fragment)
        assert not (tmp / "bad").exists()  # nothing written


MEASURE = """<script>(function(){var out=[];
Array.prototype.forEach.call(document.querySelectorAll('table'),function(t){var box=t.parentNode;
out.push((t.id||t.className)+':'+box.scrollWidth+':'+box.clientWidth+':'+Math.round(t.getBoundingClientRect().right)
+':'+document.documentElement.clientWidth);});document.body.setAttribute('data-widths',out.join(' '));})();</script>"""


def test_every_table_fits_the_page_at_1400_px(adhoc, tmp_path):
    """At 1400 px every column (the cost columns last) is on the page: no table wider than its container (which
    would scroll, hiding columns behind a scroll bar some systems never show) nor than the window."""
    out = adhoc[3]
    measured = out.parent / "measured.html"
    measured.write_text((out / "index.html").read_text().replace("</body>", MEASURE + "</body>"))
    proc = _browser(measured.resolve().as_uri(), tmp_path, "--dump-dom", "--window-size=1400,900")
    found = re.search(r'data-widths="([^"]*)"', proc.stdout)
    assert found, proc.stderr[-2000:]
    widths = {}
    for item in found.group(1).split():
        name, scroll, client, right, page = item.rsplit(":", 4)
        widths[name] = (int(scroll), int(client), int(right), int(page))
    assert {"leaderboard", "compare", "checkpoints", "tasks"} <= set(widths)
    for name, (scroll, client, right, page) in widths.items():
        assert scroll <= client and right <= page, (name, widths[name])
