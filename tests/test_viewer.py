"""The tree viewer: the page builder (embedded data, escaping, summaries, errors), the view stage,
and the page itself in headless Chromium (skipped, with the reason, where Playwright or Chromium is
missing: `make browser-deps` installs both)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import compose
from helpers import build_tree

from medsss.run import run_stage
from medsss.viewer.html import (
    DATA_ELEMENT_ID,
    ViewerError,
    ViewerRun,
    load_run,
    problem_order,
    render_viewer,
    summary,
    viewer_data,
)

CHROMIUM = Path(os.environ.get("MEDSSS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
HOSTILE = "</script><script>document.title='pwned'</script><!-- <img src=x onerror=alert(1)>"


def searched_tree():
    """Six nodes: a correct finish under one reason step, a wrong finish under the other, and a
    reflection below the wrong finish."""
    return build_tree({
        "root": {"visits": 4, "value": 0.5},
        "Look at the labs.": {"parent": "root", "visits": 2, "value": 0.6, "rollout_total": 5, "rollout_correct": 3},
        HOSTILE: {"parent": "root", "visits": 2, "value": 0.2, "rollout_total": 5, "rollout_correct": 1},
        "So the answer is A. The answer is A.": {"parent": "Look at the labs.", "kind": "finish", "visits": 1,
                                                 "value": 1.0, "correct": True, "answer": "A"},
        "The answer is B.": {"parent": HOSTILE, "kind": "finish", "visits": 1, "value": 0.0, "correct": False,
                             "answer": "B"},
        "But wait, the labs say otherwise.": {"parent": "The answer is B.", "kind": "reflect", "visits": 1,
                                              "value": 0.4, "rollout_total": 5, "rollout_correct": 2,
                                              "reflection": True},
    })


def only_wrong_tree():
    return build_tree({
        "root": {"visits": 1, "value": 0.0},
        "The answer is C.": {"parent": "root", "kind": "finish", "visits": 1, "value": 0.0, "correct": False,
                             "answer": "C"},
    })


def record(problem_id, tree, stop_reason="correct_nodes"):
    return {"id": problem_id, "question": f"Case {problem_id}?\nA. yes\nB. no\nC. maybe", "answer": "A",
            "kind": "choice", "model": "tiny", "stop_reason": stop_reason, "iterations": 3,
            "search_hash": "abc", **tree.to_dict()}


def write_run(run_dir: Path, records) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "trees.jsonl", "w") as handle:
        for item in records:
            handle.write(json.dumps(item) + "\n")
    return run_dir


@pytest.fixture
def runs(tmp_path):
    """Two runs (two rounds, say): p1 and p2 in the first, p1 only in the second."""
    first = write_run(tmp_path / "round_1" / "synthesize",
                      [record("p1", searched_tree()), record("p2", only_wrong_tree(), "max_nodes")])
    second = write_run(tmp_path / "round_2" / "synthesize", [record("p1", searched_tree())])
    return first, second


def embedded(page: str):
    match = re.search(rf'<script type="application/json" id="{DATA_ELEMENT_ID}">(.*?)</script>', page, re.S)
    assert match, "no embedded data element"
    return json.loads(match.group(1))


# --- the page builder -----------------------------------------------------------------------------


def test_the_embedded_json_round_trips_to_the_viewer_data(runs):
    loaded = [load_run(d) for d in runs]
    page = render_viewer(loaded)
    assert embedded(page) == viewer_data(loaded)
    data = embedded(page)
    assert data["order"] == ["p1", "p2"]
    assert [r["label"] for r in data["runs"]] == ["round_1/synthesize", "round_2/synthesize"]
    assert data["runs"][0]["problems"]["p1"]["nodes"] == searched_tree().to_dict()["nodes"]
    assert set(data["runs"][1]["problems"]) == {"p1"}


def test_script_tags_and_comments_in_node_texts_cannot_leave_the_data_element(runs):
    page = render_viewer([load_run(runs[0])])
    template_closers = render_viewer([]).count("</script>")
    assert page.count("</script>") == template_closers  # only the template's own
    assert "<!--" not in page.split(f'id="{DATA_ELEMENT_ID}">')[1].split("</script>")[0]
    texts = [n["text"] for n in embedded(page)["runs"][0]["problems"]["p1"]["nodes"]]
    assert HOSTILE in texts  # intact after the round trip


def test_the_title_is_escaped():
    page = render_viewer([], title="<b>trees</b> & more")
    assert "<title>&lt;b&gt;trees&lt;/b&gt; &amp; more</title>" in page and "<b>trees</b>" not in page


@pytest.mark.parametrize("tree, expected", [
    (searched_tree(), {"nodes": 6, "correct": 1, "wrong": 1, "outcome": "both"}),
    (only_wrong_tree(), {"nodes": 2, "correct": 0, "wrong": 1, "outcome": "wrong"}),
    (build_tree({"a": {"parent": "root"}}), {"nodes": 2, "correct": 0, "wrong": 0, "outcome": "none"}),
    (build_tree({"The answer is A.": {"parent": "root", "kind": "finish", "correct": True}}),
     {"nodes": 2, "correct": 1, "wrong": 0, "outcome": "correct"}),
])
def test_summary_counts_finish_nodes_by_correctness(tree, expected):
    assert summary(record("p", tree)) == expected


def test_problems_are_listed_first_run_first_and_limit_keeps_the_same_ids_in_every_run():
    runs = [ViewerRun("a", "a", [record("p2", only_wrong_tree()), record("p1", only_wrong_tree())]),
            ViewerRun("b", "b", [record("p3", only_wrong_tree()), record("p2", only_wrong_tree())])]
    assert problem_order(runs) == ["p2", "p1", "p3"]
    data = viewer_data(runs, limit=1)
    assert data["order"] == ["p2"] and [set(r["problems"]) for r in data["runs"]] == [{"p2"}, {"p2"}]


def test_a_missing_store_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(ViewerError, match=re.escape(f"{tmp_path / 'nowhere'}: no tree store here")):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewerError, match=re.escape(f"{tmp_path / 'empty' / 'trees.jsonl'}: no tree store here")):
        load_run(tmp_path / "empty")


@pytest.mark.parametrize("bad, message", [
    ({"id": "p9", "pos": []}, r"record 2: no 'nodes' field \(is this a tree store\?"),
    ({"id": "p9", "nodes": [{"index": 0, "parent": None, "text": "x", "kind": "root", "depth": 0,
                             "children": [5]}]}, "record 2: node 0 lists child 5, whose parent is not it"),
    ({"id": "p9", "nodes": [{"index": 0, "parent": None, "text": "x", "kind": "root", "depth": 0,
                             "colour": "red"}]}, "record 2: a node does not match the tree format"),
    ({"id": "p1", "nodes": only_wrong_tree().to_dict()["nodes"]}, "record 2: problem id 'p1' is stored twice"),
])
def test_a_bad_record_is_an_error_naming_the_file_and_record(tmp_path, bad, message):
    run = write_run(tmp_path / "run", [record("p1", only_wrong_tree()), bad])
    with pytest.raises(ViewerError, match=re.escape(str(run / "trees.jsonl")) + ": " + message):
        load_run(run)


def test_the_view_stage_writes_the_page_into_its_run_dir(runs, tmp_path):
    out = tmp_path / "view"
    metrics = run_stage(compose(["stage=view", f"stage.runs=[{runs[0]},{runs[1]}]", "stage.labels=[r1,r2]"]),
                        out)
    page = (out / "trees.html").read_text()
    assert [r["label"] for r in embedded(page)["runs"]] == ["r1", "r2"]
    assert metrics["trees_stored"] == 3 and metrics["problems_shown"] == 2
    assert json.loads((out / "metrics.json").read_text())["page"] == str(out / "trees.html")


def test_the_view_stage_takes_one_run_and_an_output_path(runs, tmp_path):
    page_path = tmp_path / "pages" / "one.html"
    run_stage(compose(["stage=view", f"stage.runs={runs[1]}", f"stage.out={page_path}"]), tmp_path / "view")
    assert embedded(page_path.read_text())["order"] == ["p1"]


# --- the page in a browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (make browser-deps)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser-deps, or set MEDSSS_CHROMIUM)")
    with sync_playwright() as playwright:
        # Debian's Chromium, never a downloaded one (`playwright install` cannot fetch here).
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser, tmp_path):
    """Open a rendered page; the test fails on any console error or uncaught exception."""
    opened = []

    def open_(runs, **kwargs):
        path = tmp_path / "page.html"
        path.write_text(render_viewer([load_run(d) for d in runs], **kwargs), encoding="utf-8")
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(path.as_uri())
        page.wait_for_selector("svg.tree .node")
        opened.append((page, errors))
        return page

    yield open_
    for page, errors in opened:
        assert errors == [], f"console errors: {errors}"
        page.close()


@pytest.mark.integration
def test_the_page_loads_and_draws_every_node_of_the_tree(open_page, runs):
    page = open_page([runs[0]])
    assert page.locator("svg.tree .node").count() == 6  # the fixture's six nodes
    assert page.locator(".column .node-count").text_content() == "6 nodes"
    assert page.locator('svg.tree .node[data-kind="finish"]').count() == 2
    assert page.locator("svg.tree .node.correct .mark").text_content() == "✓"
    assert page.locator("svg.tree .node.wrong .mark").text_content() == "✗"
    rollouts = page.locator("svg.tree .node .rollouts").all_text_contents()
    assert sorted(rollouts) == ["1/5", "2/5", "3/5"]
    assert page.title() == "medsss search trees"  # the hostile text ran nothing


@pytest.mark.integration
def test_clicking_a_finish_node_shows_its_answer_and_path(open_page, runs):
    page = open_page([runs[0]])
    page.locator("svg.tree .node.wrong").click()
    assert page.locator('#node-fields tr[data-field="answer"] td.value').text_content() == "B"
    assert page.locator('#node-fields tr[data-field="correct"] td.value').text_content() == "✗ wrong"
    steps = page.locator("#node-path .step .text").all_text_contents()
    assert steps == ["Let's break down this problem step by step.", HOSTILE, "The answer is B."]
    assert page.locator("#node-path img, #node-path script").count() == 0  # model text stays text
    page.locator("svg.tree .node.correct").click()
    assert page.locator('#node-fields tr[data-field="answer"] td.value').text_content() == "A"


@pytest.mark.integration
def test_runs_are_side_by_side_and_filters_narrow_the_problem_list(open_page, runs):
    page = open_page(list(runs))
    assert page.locator("#columns .column").count() == 2
    assert page.locator("#columns .column svg.tree .node").count() == 12  # p1 in both runs
    assert page.locator("#problem-list li").count() == 2
    page.select_option("#filter-outcome", "only-wrong")
    assert page.locator("#problem-list li").all_text_contents()[0].startswith("p2")
    assert page.locator("#problem-list li").count() == 1
    assert page.locator("#columns .column").nth(1).locator(".absent").text_content() == (
        "this problem is not in this run")
    page.select_option("#filter-outcome", "")
    page.select_option("#filter-stop", "max_nodes")
    assert [li.get_attribute("data-problem") for li in page.locator("#problem-list li").all()] == ["p2"]
    page.select_option("#filter-stop", "")
    page.locator("header h1").click()  # keys move through the list unless a form field has focus
    page.keyboard.press("k")
    assert page.locator("#problem-list li.active").get_attribute("data-problem") == "p1"
    assert page.locator("#problem-header .pid").text_content() == "p1"
