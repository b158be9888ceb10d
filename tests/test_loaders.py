"""Loaders (docs/data-formats.md#input-problem-formats): every supported format becomes validated
problem records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medsss.data.loaders import DataError, DataSpec, load_problems, options_from_question

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "medical_benchmarks"

# An option line in a question: "A. text" or "A) text" or "(A) text" at the start of a line.
OPTION_LINE = re.compile(r"(?m)^\s*\(?([A-Z])[.)]\s+\S")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def load(path: Path, fmt: str, **kwargs):
    return load_problems(DataSpec(format=fmt, path=str(path), **kwargs))


def medqa_row(pid: str, gold: str = "B", question: str = "Which drug?") -> dict:
    return {
        "id": pid,
        "question": question,
        "options": {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Alteplase"},
        "answer_idx": gold,
    }


def medmcqa_row(pid: str, cop) -> dict:
    return {"id": pid, "question": f"Question {pid}?", "opa": "one", "opb": "two", "opc": "three", "opd": "four", "cop": cop}


# --- options parsed from the question text ---------------------------------------------------


@pytest.mark.parametrize(
    "question",
    [
        "Which?\nA. Aspirin\nB. Heparin\nC. Warfarin",
        "Which?\nA) Aspirin\nB) Heparin\nC) Warfarin",
        "Which?\n(A) Aspirin\n(B) Heparin\n(C) Warfarin",
        "Which?\n\n  A. Aspirin  \n\nB. Heparin\nC.\tWarfarin\n",
    ],
    ids=["dot", "bracket", "parentheses", "blank-lines-and-spaces"],
)
def test_options_are_parsed_from_lettered_lines(question):
    assert options_from_question(question) == {"A": "Aspirin", "B": "Heparin", "C": "Warfarin"}


def test_option_text_keeps_its_own_punctuation():
    question = "Infer.\nA. true, text1 is a fact.\nB. false, text1 is not a fact."
    assert options_from_question(question) == {"A": "true, text1 is a fact.", "B": "false, text1 is not a fact."}


def test_roman_numeral_lines_in_the_stem_are_not_options():
    question = "Which is chemical?\nI. Gustatory\nII. Auditory\nIII. Olfactory\nA. I only\nB. II only\nC. I and III only"
    assert options_from_question(question) == {"A": "I only", "B": "II only", "C": "I and III only"}


def test_a_stray_lettered_line_before_the_options_is_not_an_option():
    question = "V) hich of the following changes gene expression?\nA. Epigenetics\nB. Translocation"
    assert options_from_question(question) == {"A": "Epigenetics", "B": "Translocation"}


def test_the_last_run_of_option_lines_is_the_options():
    question = "Earlier list:\nA. old\nB. older\nNow choose:\nA. new\nB. newer\nC. newest"
    assert options_from_question(question) == {"A": "new", "B": "newer", "C": "newest"}


@pytest.mark.parametrize(
    "question",
    ["No options here.", "Only one:\nA. alone", "Out of order:\nB. two\nC. three", "", "A.B. no space"],
)
def test_no_run_of_two_lettered_lines_gives_none(question):
    assert options_from_question(question) is None


def test_a_run_stops_at_a_skipped_letter():
    assert options_from_question("Q\nA. x\nB. y\nD. z") == {"A": "x", "B": "y"}


# --- medqa ------------------------------------------------------------------------------------


def test_medqa_prompt_is_the_question_then_lettered_option_lines(tmp_path):
    path = write_jsonl(tmp_path / "medqa.jsonl", [medqa_row("q1", "C", "A 60-year-old man has chest pain.  ")])
    (problem,) = load(path, "medqa").problems
    assert problem.question == (
        "A 60-year-old man has chest pain.\nA. Aspirin\nB. Heparin\nC. Warfarin\nD. Alteplase"
    )
    assert problem.id == "q1"
    assert problem.answer == "C"
    assert problem.kind == "choice"
    assert problem.source == "medqa"
    assert problem.options == {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Alteplase"}


def test_medqa_keeps_five_options_and_an_e_gold(tmp_path):
    row = medqa_row("q1", "E")
    row["options"]["E"] = "Clopidogrel"
    (problem,) = load(write_jsonl(tmp_path / "m.jsonl", [row]), "medqa").problems
    assert problem.answer == "E"
    assert problem.question.endswith("\nD. Alteplase\nE. Clopidogrel")
    assert list(problem.options) == ["A", "B", "C", "D", "E"]


def test_medqa_lower_case_gold_letter_is_upper_cased(tmp_path):
    (problem,) = load(write_jsonl(tmp_path / "m.jsonl", [medqa_row("q1", "d")]), "medqa").problems
    assert problem.answer == "D"


def test_medqa_rows_without_id_get_file_stem_and_row_number(tmp_path):
    rows = [medqa_row("x"), medqa_row("y")]
    for row in rows:
        del row["id"]
    problems = load(write_jsonl(tmp_path / "usmle.jsonl", rows), "medqa").problems
    assert [p.id for p in problems] == ["usmle-1", "usmle-2"]


def test_medqa_as_a_json_list_loads_the_same(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps([medqa_row("q1"), medqa_row("q2", "A")], indent=2), encoding="utf-8")
    problems = load(path, "medqa").problems
    assert [(p.id, p.answer) for p in problems] == [("q1", "B"), ("q2", "A")]


# --- medmcqa ----------------------------------------------------------------------------------


def test_medmcqa_cop_is_one_based_when_the_file_has_a_4(tmp_path):
    path = write_jsonl(tmp_path / "mm.jsonl", [medmcqa_row("a", 1), medmcqa_row("b", 2), medmcqa_row("c", 4)])
    problems = load(path, "medmcqa").problems
    assert [p.answer for p in problems] == ["A", "B", "D"]
    assert problems[0].question == "Question a?\nA. one\nB. two\nC. three\nD. four"
    assert problems[0].options == {"A": "one", "B": "two", "C": "three", "D": "four"}
    assert {p.kind for p in problems} == {"choice"}
    assert {p.source for p in problems} == {"medmcqa"}


def test_medmcqa_cop_is_zero_based_when_the_file_has_a_0(tmp_path):
    path = write_jsonl(tmp_path / "mm.jsonl", [medmcqa_row("a", 0), medmcqa_row("b", 2), medmcqa_row("c", 3)])
    assert [p.answer for p in load(path, "medmcqa").problems] == ["A", "C", "D"]


@pytest.mark.parametrize(("cop_base", "expected"), [(1, ["A", "B", "C"]), (0, ["B", "C", "D"]), ("1", ["A", "B", "C"])])
def test_medmcqa_explicit_cop_base_decides(tmp_path, cop_base, expected):
    path = write_jsonl(tmp_path / "mm.jsonl", [medmcqa_row("a", 1), medmcqa_row("b", 2), medmcqa_row("c", 3)])
    assert [p.answer for p in load(path, "medmcqa", cop_base=cop_base).problems] == expected


def test_medmcqa_explicit_cop_base_overrides_the_evidence_in_the_file(tmp_path):
    path = write_jsonl(tmp_path / "mm.jsonl", [medmcqa_row("a", 0), medmcqa_row("b", 3)])
    assert [p.answer for p in load(path, "medmcqa", cop_base=0).problems] == ["A", "D"]
    with pytest.raises(DataError, match=r"row 1\b"):
        load(path, "medmcqa", cop_base=1)  # cop 0 is out of range when 1-based


def test_medmcqa_ambiguous_cops_with_auto_base_raise_naming_cop_base(tmp_path):
    path = write_jsonl(tmp_path / "mm.jsonl", [medmcqa_row("a", 1), medmcqa_row("b", 2), medmcqa_row("c", 3)])
    with pytest.raises(DataError, match="cop_base") as info:
        load(path, "medmcqa")
    assert str(path) in str(info.value)


def test_medmcqa_ambiguous_cops_raise_even_with_skip_invalid(tmp_path):
    path = write_jsonl(tmp_path / "mm.jsonl", [medmcqa_row("a", 1), medmcqa_row("b", 2)])
    with pytest.raises(DataError, match="cop_base"):
        load(path, "medmcqa", skip_invalid=True)


def test_medmcqa_out_of_range_cop_names_file_and_row(tmp_path):
    path = write_jsonl(tmp_path / "mm.jsonl", [medmcqa_row("a", 1), medmcqa_row("b", 4), medmcqa_row("c", 5)])
    with pytest.raises(DataError, match=r"row 3\b") as info:
        load(path, "medmcqa")
    assert str(path) in str(info.value)


# --- pubmedqa ---------------------------------------------------------------------------------

PUBMEDQA_TABLE = {
    "21645374": {
        "QUESTION": "Do mitochondria play a role in cell death?",
        "CONTEXTS": ["Mitochondria matter.", "Cells die."],
        "final_decision": "yes",
    },
    "16418930": {
        "QUESTION": "Is the landmark reliable?",
        "CONTEXTS": ["Landmarks vary."],
        "final_decision": "no",
    },
    "9488747": {
        "QUESTION": "Does the drug help?",
        "CONTEXTS": ["Mixed results."],
        "final_decision": "maybe",
    },
}


@pytest.mark.parametrize("indent", [None, 2])
def test_pubmedqa_original_json_keyed_by_pmid(tmp_path, indent):
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(PUBMEDQA_TABLE, indent=indent), encoding="utf-8")
    problems = load(path, "pubmedqa").problems
    assert [p.id for p in problems] == ["21645374", "16418930", "9488747"]
    assert [p.answer for p in problems] == ["A", "B", "C"]
    assert problems[0].question == "Do mitochondria play a role in cell death?\nA. yes\nB. no\nC. maybe"
    assert problems[0].options == {"A": "yes", "B": "no", "C": "maybe"}
    assert {p.kind for p in problems} == {"choice"}
    assert {p.source for p in problems} == {"pubmedqa"}


def test_pubmedqa_include_context_prepends_the_contexts(tmp_path):
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(PUBMEDQA_TABLE), encoding="utf-8")
    problem = load(path, "pubmedqa", include_context=True).problems[0]
    assert problem.question == (
        "Mitochondria matter.\nCells die.\nDo mitochondria play a role in cell death?\nA. yes\nB. no\nC. maybe"
    )


def test_pubmedqa_without_include_context_leaves_contexts_out(tmp_path):
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps(PUBMEDQA_TABLE), encoding="utf-8")
    assert all("Mitochondria matter." not in p.question for p in load(path, "pubmedqa").problems)


def test_pubmedqa_jsonl_rows(tmp_path):
    rows = [
        {"pubid": 101, "question": "Is it safe?", "context": {"contexts": ["Trial data."]}, "final_decision": "no"},
        {"pubid": 102, "question": "Does it work?", "context": {"contexts": ["Cohort."]}, "final_decision": "Maybe"},
        {"id": "p3", "question": "Is X Y?", "final_decision": "yes"},
    ]
    path = write_jsonl(tmp_path / "pqa.jsonl", rows)
    problems = load(path, "pubmedqa").problems
    assert [(p.id, p.answer) for p in problems] == [("101", "B"), ("102", "C"), ("p3", "A")]
    assert problems[0].question == "Is it safe?\nA. yes\nB. no\nC. maybe"
    with_context = load(path, "pubmedqa", include_context=True).problems
    assert with_context[0].question == "Trial data.\nIs it safe?\nA. yes\nB. no\nC. maybe"
    assert with_context[2].question == "Is X Y?\nA. yes\nB. no\nC. maybe"


def test_pubmedqa_decision_outside_yes_no_maybe_names_file_and_row(tmp_path):
    rows = [{"id": "a", "question": "Q?", "final_decision": "yes"}, {"id": "b", "question": "Q?", "final_decision": "perhaps"}]
    path = write_jsonl(tmp_path / "pqa.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2\b") as info:
        load(path, "pubmedqa")
    assert str(path) in str(info.value)


def test_pubmedqa_jsonl_with_a_single_row_loads_that_row(tmp_path):
    path = write_jsonl(tmp_path / "pqa.jsonl", [{"id": "p1", "question": "Is X Y?", "final_decision": "yes"}])
    problems = load(path, "pubmedqa").problems
    assert [(p.id, p.answer) for p in problems] == [("p1", "A")]


# --- plain jsonl ------------------------------------------------------------------------------


def test_jsonl_plain_record_with_defaults(tmp_path):
    question = "Which is right?\nA. this\nB. that"
    path = write_jsonl(tmp_path / "mine.jsonl", [{"id": 7, "question": question, "answer": "B"}])
    (problem,) = load(path, "jsonl").problems
    assert problem.id == "7"
    assert problem.question == question
    assert problem.answer == "B"
    assert problem.kind == "choice"
    assert problem.source == "mine"
    assert problem.options == {"A": "this", "B": "that"}  # parsed from the question's option lines
    assert problem.meta == {}


def test_jsonl_optional_fields_are_kept(tmp_path):
    row = {
        "id": "r1",
        "question": "Pick one.\nA. x\nB. y",
        "answer": "A",
        "kind": "choice",
        "options": {"a": "x", "b": "y"},
        "source": "handmade",
        "meta": {"topic": "renal"},
    }
    (problem,) = load(write_jsonl(tmp_path / "mine.jsonl", [row]), "jsonl").problems
    assert problem.options == {"A": "x", "B": "y"}
    assert problem.source == "handmade"
    assert problem.meta == {"topic": "renal"}
    assert problem.kind == "choice"


def test_jsonl_free_text_gold_is_free_text(tmp_path):
    row = {"id": "d1", "question": "What dose of drug X?", "answer": " 10 mg/kg "}
    (problem,) = load(write_jsonl(tmp_path / "mine.jsonl", [row]), "jsonl").problems
    assert problem.kind == "free_text"
    assert problem.answer == "10 mg/kg"


def test_jsonl_free_text_row_gets_no_options_even_with_lettered_lines(tmp_path):
    row = {"id": "d1", "question": "Dose?\nA. first\nB. second", "answer": "10 mg"}
    (problem,) = load(write_jsonl(tmp_path / "mine.jsonl", [row]), "jsonl").problems
    assert problem.kind == "free_text"
    assert problem.options is None


def test_jsonl_choice_row_without_option_lines_keeps_options_none(tmp_path):
    row = {"id": "c1", "question": "Which one, A or B?", "answer": "B"}
    (problem,) = load(write_jsonl(tmp_path / "mine.jsonl", [row]), "jsonl").problems
    assert problem.options is None


def test_jsonl_gold_letter_not_among_question_option_lines_is_an_error(tmp_path):
    row = {"id": "r1", "question": "Pick.\nA. x\nB. y", "answer": "C"}
    path = write_jsonl(tmp_path / "mine.jsonl", [row])
    with pytest.raises(DataError, match=r"row 1\b.*not among the options") as info:
        load(path, "jsonl")
    assert str(path) in str(info.value)


def test_jsonl_unknown_kind_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"id": "r1", "question": "Q", "answer": "x y", "kind": "essay"}])
    with pytest.raises(DataError, match=r"row 1\b.*kind"):
        load(path, "jsonl")


# --- MedS3 conversations format: the real benchmark files -------------------------------------

BENCHMARK_COUNTS = [
    ("MedQA.json", 1273),
    ("MedMCQA.json", 4183),
    ("med_mmlu.json", 1561),
    ("pubmedqa.json", 500),
    ("bioasq.json", 618),
    ("pubhealth.json", 1231),
    ("drugdose.json", 23),
]


@pytest.fixture(scope="module")
def benchmarks() -> Path:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"benchmark folder {BENCHMARKS} is absent")
    return BENCHMARKS


@pytest.mark.parametrize(("name", "count"), BENCHMARK_COUNTS, ids=[n for n, _ in BENCHMARK_COUNTS])
def test_medsss_benchmark_file_loads_every_item(benchmarks, name, count):
    result = load(benchmarks / name, "medsss")
    assert len(result.problems) == count
    assert result.skipped == []
    assert len({p.id for p in result.problems}) == count
    assert all(p.question.strip() for p in result.problems)


@pytest.mark.parametrize(("name", "count"), BENCHMARK_COUNTS[:-1], ids=[n for n, _ in BENCHMARK_COUNTS[:-1]])
def test_medsss_choice_golds_are_letters_among_the_question_option_lines(benchmarks, name, count):
    problems = load(benchmarks / name, "medsss").problems
    assert {p.kind for p in problems} == {"choice"}
    for p in problems:
        assert len(p.answer) == 1 and p.answer.isalpha() and p.answer.isupper(), p.id
        assert p.answer in OPTION_LINE.findall(p.question), p.id


@pytest.mark.parametrize(("name", "count"), BENCHMARK_COUNTS[:-1], ids=[n for n, _ in BENCHMARK_COUNTS[:-1]])
def test_medsss_every_choice_item_gets_options_holding_its_gold(benchmarks, name, count):
    problems = load(benchmarks / name, "medsss").problems
    for p in problems:
        assert p.options is not None and p.answer in p.options, p.id
        assert list(p.options) == [chr(ord("A") + i) for i in range(len(p.options))], p.id
        assert all(text.strip() for text in p.options.values()), p.id


@pytest.mark.parametrize(
    ("name", "index", "expected"),
    [
        ("pubmedqa.json", 0, {"A": "yes", "B": "no", "C": "maybe"}),
        ("bioasq.json", 0, {"A": "yes", "B": "no"}),
        (
            "pubhealth.json",
            0,
            {
                "A": "true, text1 is a fact.",
                "B": "false, text1 is not a fact.",
                "C": "mixture, text1 contains both fact and non-fact information.",
            },
        ),
        (
            "MedQA.json",
            1,
            {
                "A": "Inhibition of thymidine synthesis",
                "B": "Inhibition of proteasome",
                "C": "Hyperstabilization of microtubules",
                "D": "Generation of free radicals",
                "E": "Cross-linking of DNA",
            },
        ),
    ],
)
def test_medsss_option_texts_are_the_question_option_lines(benchmarks, name, index, expected):
    assert load(benchmarks / name, "medsss").problems[index].options == expected


def test_medsss_roman_numeral_stem_keeps_only_the_lettered_options(benchmarks):
    problems = {p.id: p for p in load(benchmarks / "med_mmlu.json", "medsss").problems}
    assert problems["mmlu_308"].options == {"A": "I only", "B": "II only", "C": "III only", "D": "I and III only"}


def test_medsss_drugdose_items_have_no_options(benchmarks):
    assert all(p.options is None for p in load(benchmarks / "drugdose.json", "medsss").problems)


def test_medsss_prompt_is_the_first_conversation_turn_and_gold_is_eval_answer(benchmarks):
    raw = json.loads((benchmarks / "bioasq.json").read_text(encoding="utf-8"))
    problems = load(benchmarks / "bioasq.json", "medsss").problems
    assert problems[0].question == raw[0]["conversations"][0]["value"]
    assert problems[0].answer == str(raw[0]["eval"]["answer"]).strip()
    assert problems[0].id == str(raw[0]["id"])


def test_medsss_drugdose_golds_are_free_text(benchmarks):
    problems = load(benchmarks / "drugdose.json", "medsss").problems
    assert len(problems) == 23
    assert {p.kind for p in problems} == {"free_text"}
    assert all(len(p.answer) > 1 for p in problems)


def test_medsss_small_file_written_by_hand(tmp_path):
    items = [
        {"id": 1, "conversations": [{"from": "human", "value": "Q?\nA. x\nB. y"}], "eval": {"answer": "B", "type": "t"}},
        {"id": 2, "conversations": [{"from": "human", "value": "Dose?"}], "eval": {"answer": "5 mg"}, "dataset": "dd"},
    ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    first, second = load(path, "medsss").problems
    assert (first.id, first.question, first.answer, first.kind, first.source) == ("1", "Q?\nA. x\nB. y", "B", "choice", "bench")
    assert first.options == {"A": "x", "B": "y"}
    assert first.meta == {"type": "t"}
    assert (second.answer, second.kind, second.source, second.options) == ("5 mg", "free_text", "dd", None)


# --- the bundled default ----------------------------------------------------------------------


def test_default_spec_loads_the_bundled_medqa_file():
    result = load_problems(DataSpec())
    problems = result.problems
    assert result.path.is_file()
    assert len(problems) >= 40
    assert len({p.id for p in problems}) == len(problems)
    assert result.skipped == []
    for p in problems:
        assert p.kind == "choice"
        assert p.answer in p.options, p.id
        assert p.answer in OPTION_LINE.findall(p.question), p.id


def test_a_non_medqa_format_without_a_path_is_an_error():
    with pytest.raises(DataError, match="data.path"):
        load_problems(DataSpec(format="jsonl"))


# --- bad input --------------------------------------------------------------------------------

GOOD = medqa_row("good-1")


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ('{"id": "x", "question": "Q", ', "bad JSON"),
        ({**medqa_row("x"), "question": ""}, "no question"),
        ({k: v for k, v in medqa_row("x").items() if k != "question"}, "no question"),
        ({**medqa_row("x"), "answer_idx": ""}, "no gold answer"),
        ({k: v for k, v in medqa_row("x").items() if k != "answer_idx"}, "no gold answer"),
        ({**medqa_row("x"), "answer_idx": "E"}, "not among the options"),
        (medqa_row("good-1"), "duplicate id 'good-1'"),
        ([1, 2, 3], "JSON object"),
    ],
    ids=["bad-json", "empty-question", "no-question", "empty-gold", "no-gold", "gold-not-an-option", "duplicate-id", "not-an-object"],
)
def test_a_bad_row_raises_naming_the_file_and_its_1_based_row(tmp_path, bad_row, message):
    row = bad_row if isinstance(bad_row, str) else json.dumps(bad_row)
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, medqa_row("good-2"), row, medqa_row("good-3")])
    with pytest.raises(DataError) as info:
        load(path, "medqa")
    text = str(info.value)
    assert str(path) in text
    assert re.search(r"\brow 3\b", text), text
    assert message in text


def test_the_duplicate_id_error_names_the_first_row(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [medqa_row("a"), medqa_row("b"), medqa_row("a")])
    with pytest.raises(DataError, match=r"row 3: duplicate id 'a' \(first seen in row 1\)"):
        load(path, "medqa")


def test_a_missing_file_raises_naming_the_path(tmp_path):
    path = tmp_path / "nowhere" / "missing.jsonl"
    with pytest.raises(DataError, match="not found") as info:
        load(path, "medqa")
    assert str(path) in str(info.value)


def test_an_unknown_format_raises_naming_the_format_and_the_choices(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [GOOD])
    with pytest.raises(DataError, match="unknown data.format 'csv'") as info:
        load(path, "csv")
    for known in ("medsss", "medqa", "medmcqa", "pubmedqa", "jsonl"):
        assert known in str(info.value)


def test_an_invalid_json_list_raises_naming_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"id": "a", ', encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as info:
        load(path, "medsss")
    assert str(path) in str(info.value)


def test_skip_invalid_loads_the_good_rows_and_reports_each_bad_row(tmp_path):
    rows = [
        medqa_row("a"),
        "{not json",  # row 2
        {**medqa_row("b"), "question": ""},  # row 3
        medqa_row("c"),
        {**medqa_row("d"), "answer_idx": ""},  # row 5
        {**medqa_row("e"), "answer_idx": "Z"},  # row 6
        medqa_row("a"),  # row 7: duplicate
        medqa_row("f"),
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    result = load(path, "medqa", skip_invalid=True)
    assert [p.id for p in result.problems] == ["a", "c", "f"]
    assert len(result.skipped) == 5
    for message, row in zip(result.skipped, [2, 3, 5, 6, 7], strict=True):
        assert str(path) in message
        assert re.search(rf"\brow {row}\b", message), message


def test_without_skip_invalid_the_first_bad_row_is_the_error(tmp_path):
    rows = [medqa_row("a"), "{not json", {**medqa_row("b"), "question": ""}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2\b.*bad JSON"):
        load(path, "medqa")


# --- limit and sharding -----------------------------------------------------------------------


@pytest.fixture
def ten_problems(tmp_path) -> Path:
    return write_jsonl(tmp_path / "ten.jsonl", [medqa_row(f"p{i}") for i in range(10)])


def test_limit_keeps_the_first_problems_in_file_order(ten_problems):
    assert [p.id for p in load(ten_problems, "medqa", limit=4).problems] == ["p0", "p1", "p2", "p3"]


def test_limit_zero_loads_nothing_and_limit_above_the_count_loads_everything(ten_problems):
    assert load(ten_problems, "medqa", limit=0).problems == []
    assert len(load(ten_problems, "medqa", limit=100).problems) == 10


def test_shard_takes_every_num_shards_th_problem(ten_problems):
    assert [p.id for p in load(ten_problems, "medqa", shard=1, num_shards=3).problems] == ["p1", "p4", "p7"]


def test_limit_applies_before_sharding(ten_problems):
    assert [p.id for p in load(ten_problems, "medqa", limit=5, shard=0, num_shards=2).problems] == ["p0", "p2", "p4"]
    assert [p.id for p in load(ten_problems, "medqa", limit=5, shard=1, num_shards=2).problems] == ["p1", "p3"]


@pytest.mark.parametrize(("limit", "num_shards"), [(None, 1), (None, 3), (7, 3), (7, 4), (2, 5), (10, 10)])
def test_shards_partition_the_limited_set_exactly(ten_problems, limit, num_shards):
    limited = [p.id for p in load(ten_problems, "medqa", limit=limit).problems]
    shards = [[p.id for p in load(ten_problems, "medqa", limit=limit, shard=i, num_shards=num_shards).problems] for i in range(num_shards)]
    together = [pid for shard in shards for pid in shard]
    assert sorted(together) == sorted(limited)
    assert len(together) == len(set(together))


@pytest.mark.parametrize(("shard", "num_shards"), [(2, 2), (-1, 2), (0, 0), (5, 3), (0, -1)])
def test_an_invalid_shard_raises(ten_problems, shard, num_shards):
    with pytest.raises(DataError, match="shard"):
        load(ten_problems, "medqa", shard=shard, num_shards=num_shards)


def test_medmcqa_letter_cops_need_no_base(tmp_path):
    rows = [{"id": "m1", "question": "Q?", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": "c"}]
    path = write_jsonl(tmp_path / "letters.jsonl", rows)
    assert [p.answer for p in load(path, "medmcqa").problems] == ["C"]


def test_a_file_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"id": "x", "question": "caf\xe9", "answer": "A"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="latin1.jsonl: not UTF-8"):
        load(path, "jsonl")
