"""JSON and JSONL files: atomic writes (all or nothing), torn-tail repair, errors naming the line."""

import json

import pytest

from medsss.io import JSONLError, atomic_writer, read_json, read_jsonl, write_json, write_jsonl


def test_write_json_is_sorted_indented_and_reads_back(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"
    assert read_json(path) == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"id": "a"}])
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write('{"id": "b"}\n')
        raise RuntimeError("died mid-write")
    assert list(read_jsonl(path)) == [{"id": "a"}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_jsonl_keeps_non_ascii_text_and_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"q": "Fièvre?"}, {"q": "β-blocker"}])
    assert "Fièvre" in path.read_text(encoding="utf-8")
    path.write_text(path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert [r["q"] for r in read_jsonl(path)] == ["Fièvre?", "β-blocker"]
    assert list(read_jsonl(tmp_path / "missing.jsonl")) == []


def test_a_torn_final_line_is_an_error_or_cut_off_on_request(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "ans')
    with pytest.raises(JSONLError, match=r"cache\.jsonl: line 2: record not terminated"):
        list(read_jsonl(path))
    assert list(read_jsonl(path, repair_tail=True)) == [{"id": "a"}]
    assert path.read_text() == '{"id": "a"}\n'


def test_a_corrupt_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "trees.jsonl"
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(JSONLError, match=r"trees\.jsonl: line 2: not valid JSON"):
        list(read_jsonl(path, repair_tail=True))
