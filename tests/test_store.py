"""The tree store: append-only, resumable, torn-write safe, refuses mixed settings."""

import json

import pytest

from medsss.search.store import StoreError, TreeStore


def record(pid: str) -> dict:
    return {"id": pid, "question": "q", "answer": "A", "nodes": []}


def test_stored_ids_survive_reopening(tmp_path):
    store = TreeStore(tmp_path, "h1")
    store.append(record("a"))
    store.append(record("b"))
    reopened = TreeStore(tmp_path, "h1")
    assert "a" in reopened and "b" in reopened and "c" not in reopened and len(reopened) == 2
    assert [r["id"] for r in reopened.records()] == ["a", "b"]
    assert all(r["search_hash"] == "h1" for r in reopened.records())


def test_an_id_is_never_stored_twice(tmp_path):
    store = TreeStore(tmp_path, "h1")
    store.append(record("a"))
    with pytest.raises(StoreError, match="already stored"):
        store.append(record("a"))


def test_a_torn_final_line_is_cut_off_and_its_tree_searched_again(tmp_path):
    store = TreeStore(tmp_path, "h1")
    store.append(record("a"))
    with open(store.path, "a") as handle:  # the process died while writing tree "b"
        handle.write('{"id": "b", "question": "q", "ans')
    reopened = TreeStore(tmp_path, "h1")
    assert "a" in reopened and "b" not in reopened
    assert store.path.read_text().count("\n") == 1
    reopened.append(record("b"))
    assert [r["id"] for r in TreeStore(tmp_path, "h1").records()] == ["a", "b"]


def test_a_corrupt_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    store = TreeStore(tmp_path, "h1")
    store.append(record("a"))
    with open(store.path, "a") as handle:
        handle.write("not json\n")
        handle.write(json.dumps({**record("c"), "search_hash": "h1"}) + "\n")
    with pytest.raises(StoreError, match=r"trees\.jsonl: line 2"):
        TreeStore(tmp_path, "h1")


def test_trees_searched_with_other_settings_are_refused_unless_allowed(tmp_path):
    TreeStore(tmp_path, "h1").append(record("a"))
    with pytest.raises(StoreError, match="other settings"):
        TreeStore(tmp_path, "h2")
    assert "a" in TreeStore(tmp_path, "h2", allow_config_change=True)


def test_failures_are_remembered_until_the_problem_succeeds(tmp_path):
    store = TreeStore(tmp_path, "h1")
    store.record_failure("x", "RuntimeError: out of memory")
    store.record_failure("y", "boom")
    store.append(record("y"))
    reopened = TreeStore(tmp_path, "h1")
    assert reopened.earlier_failures == {"x": "RuntimeError: out of memory"}
