"""Bad input (docs/data-formats.md#bad-input): loaders and the answer checker over random and
adversarial rows.

Every row of a data file either loads as a valid Problem or is refused with a DataError naming the
file and the row; nothing else is raised. The answer checker takes any text and any options and
grades within its outcomes. The hypothesis properties are derandomized (the same examples on every
run) and sized to finish in seconds; the examples after them pin each adversarial case with the
exact Problem or the exact message. ``pytest -s`` prints how many rows of each kind the properties
tried.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import compose
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsss.data.loaders import DataError, DataSpec, LoadResult, load_problems
from medsss.data.records import Problem
from medsss.data.verify import extract_answer, is_correct, option_of

FORMATS = ("medsss", "medqa", "medmcqa", "pubmedqa", "jsonl")
BOM = b"\xef\xbb\xbf"
MEGABYTE = 1 << 20

PROPERTY = settings(
    max_examples=20,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Rows the properties tried, by kind (one row can be of several kinds).
ROWS_TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_rows_tried():
    yield
    if ROWS_TRIED:
        print(
            "\nrows tried by the properties, by kind: "
            + ", ".join(f"{kind}: {count}" for kind, count in sorted(ROWS_TRIED.items()))
        )


# --- strategies ---------------------------------------------------------------------------------

# Any code point but surrogates (UTF-8 cannot hold them): astral planes, RTL marks, controls.
CHARACTERS = st.characters(exclude_categories=("Cs",))
ADVERSARIAL_TEXTS = [
    "שלום עולם",
    "مرحبا بالعالم",
    "\u202eright-to-left override\u202c",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🧬",
    "\u2028",
    "\u2029",
    "\x85",
    "\x00",
    "\ufeff",
    "\r",
    "\t",
    " ",
    "A. x\nB. y",
    "é",
    "ß",
    "İ",
    "E. coli",
    "\\ud800",
]
TEXT = st.one_of(st.text(CHARACTERS, max_size=30), st.sampled_from(ADVERSARIAL_TEXTS))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
# Any JSON value: what a field of the wrong type holds.
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def mostly(usual: st.SearchStrategy, odd: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` 8 times in 10, else ``odd``: rows valid often enough that loading is tried too."""
    return st.integers(0, 9).flatmap(lambda dice: usual if dice <= 7 else odd)  # small dice: usual


STEMS = mostly(
    st.text(CHARACTERS, min_size=1, max_size=30) | st.sampled_from(ADVERSARIAL_TEXTS[:4]),
    st.sampled_from(["", " ", "\n", "\u2028", "\ufeff"]),
)
IDS = mostly(
    st.sampled_from(["a", "b", "c"]) | st.integers(0, 3), st.sampled_from(["", " ", "a "])
)  # ids repeat
LETTERS = mostly(st.sampled_from("ABCD"), st.sampled_from([*"abcdeEFZ", "", " B ", "AB", "1", "é"]))
OPTIONS = st.dictionaries(LETTERS, TEXT, min_size=1, max_size=6)
QUESTIONS = st.builds(
    lambda stem, options, newline: stem + "".join(f"{newline}{letter}. {text}" for letter, text in options),
    STEMS,
    st.lists(st.tuples(st.sampled_from("ABCDE"), TEXT), max_size=5),
    st.sampled_from(["\n", "\r\n", "\n\n"]),
)
DECISIONS = mostly(
    st.sampled_from(["yes", "no", "maybe", "Maybe", "A", "c"]), st.sampled_from(["perhaps", "", "D"])
)
ABSENT = object()  # a field left out of its row
FIELD_DEFECTS = {"missing field", "null field", "list field", "object field", "wrong-type field"}


def field(valid: st.SearchStrategy, may_be_absent: bool = True) -> st.SearchStrategy:
    """A field's value with the kind of row it makes: valid 8 times in 10 (so that whole rows are
    often valid), else any JSON value, or absent."""

    @st.composite
    def drawn(draw: st.DrawFn) -> tuple[str, Any]:
        dice = draw(st.integers(0, 9))  # hypothesis favours small numbers: 0 to 7 are valid
        if dice <= 7:
            return "valid", draw(valid)
        if dice == 9 and may_be_absent:
            return "missing field", ABSENT
        value = draw(JSON_VALUES)
        return _kind_of_value(value), value

    return drawn()


def _kind_of_value(value: Any) -> str:
    if value is None:
        return "null field"
    if isinstance(value, list):
        return "list field"
    return "object field" if isinstance(value, dict) else "wrong-type field"


FIELDS: dict[str, dict[str, st.SearchStrategy]] = {
    "medsss": {
        "id": field(IDS),
        "conversations": field(
            st.lists(
                st.fixed_dictionaries({"from": st.just("human"), "value": QUESTIONS}), min_size=1, max_size=2
            )
        ),
        "eval": field(st.fixed_dictionaries({"answer": mostly(LETTERS, TEXT)})),
        "dataset": field(TEXT),
    },
    "medqa": {
        "id": field(IDS),
        "question": field(STEMS),
        "options": field(OPTIONS),
        "answer_idx": field(LETTERS),
    },
    "medmcqa": {
        "id": field(IDS),
        "question": field(STEMS),
        **{key: field(TEXT) for key in ("opa", "opb", "opc", "opd")},
        "cop": field(mostly(st.integers(0, 4), st.integers(-1, 5) | LETTERS)),
    },
    "pubmedqa": {
        # Present first: a JSONL row's first key is a row field, never a PMID.
        "question": field(STEMS, may_be_absent=False),
        "pubid": field(IDS),
        "final_decision": field(DECISIONS),
        "context": field(st.fixed_dictionaries({"contexts": st.lists(TEXT, max_size=3)})),
    },
    "jsonl": {
        "id": field(IDS),
        "question": field(QUESTIONS),
        "answer": field(mostly(LETTERS, TEXT)),
        "kind": field(
            mostly(st.sampled_from(["choice", "free_text"]), st.sampled_from(["essay", "", "Choice"]))
        ),
        "options": field(OPTIONS),
        "source": field(TEXT),
        "meta": field(st.dictionaries(TEXT, JSON_VALUES, max_size=2)),
    },
}

# Lines that are no row: truncated, not JSON, not an object, too deep, an integer json refuses.
RAW_LINES = st.sampled_from(
    [
        '{"id": "a", "question": ',
        "{",
        "}",
        "[1, 2]",
        "null",
        '"text"',
        "3",
        '{"A": 1, "A": 2}',
        "[" * 5000,
        '{"id": 1' + "0" * 5000 + "}",
        "not json at all",
        "\u00a0{}",
        "{'id': 'single quotes'}",
        '{"id": "s", "question": "Q \\ud800", "answer": "x y", "final_decision": "yes"}',
    ]
)


@st.composite
def rows(draw: st.DrawFn, fmt: str) -> tuple[dict[str, Any], set[str]]:
    """A row of a format with the kinds it is: its fields drawn by ``field``, plus extra keys."""
    row: dict[str, Any] = {}
    kinds: set[str] = set()
    for key, strategy in FIELDS[fmt].items():
        kind, value = draw(strategy)
        kinds.add(kind)
        if value is not ABSENT:
            row[key] = value
    extra = draw(st.dictionaries(TEXT, JSON_VALUES, max_size=2))
    if extra.keys() - row.keys():
        kinds.add("extra fields")
    row = {**row, **{k: v for k, v in extra.items() if k not in row}}
    if any(ord(c) > 127 for c in json.dumps(row, ensure_ascii=False)):
        kinds.add("unicode")
    kinds.discard("valid")
    if not kinds & FIELD_DEFECTS:
        kinds.add("every field present and well typed")
    return row, kinds


@st.composite
def jsonl_files(draw: st.DrawFn, fmt: str) -> tuple[list[str], list[set[str]]]:
    """The lines of a JSON Lines file (each a row or a raw line) and each line's kinds."""
    lines: list[str] = []
    kinds: list[set[str]] = []
    seen_ids: set[str] = set()
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 5)) == 0:
            raw = draw(
                st.one_of(
                    RAW_LINES,
                    rows(fmt)
                    .map(lambda r: json.dumps(r[0]))
                    .flatmap(
                        lambda text: st.integers(0, max(0, len(text) - 1)).map(lambda cut: text[:cut] or "{")
                    ),
                )
            )
            lines.append(raw)
            kinds.append({"not a JSON object"})
            continue
        row, row_kinds = draw(rows(fmt))
        row_id = row.get("id", row.get("pubid"))
        if isinstance(row_id, str | int) and not isinstance(row_id, bool):
            if str(row_id) in seen_ids:
                row_kinds = row_kinds | {"duplicate id"}
            seen_ids.add(str(row_id))
        lines.append(json.dumps(row, ensure_ascii=draw(st.booleans())))
        kinds.append(row_kinds)
    return lines, kinds


# --- checks -------------------------------------------------------------------------------------

ROW_NAMED = re.compile(r": row (\d+): ")


def outcome(path: Path, fmt: str, **kwargs: Any) -> LoadResult | DataError:
    """The load's result, or the DataError it raised after checking that it names the file; any
    other exception fails the test."""
    try:
        result = load_problems(DataSpec(format=fmt, path=str(path), **kwargs))
    except DataError as error:
        assert str(error).startswith(f"{path}: "), str(error)
        return error
    for problem in result.problems:
        check_problem(problem)
    assert len({p.id for p in result.problems}) == len(result.problems)
    for message in result.skipped:
        assert message.startswith(f"{path}: row "), message
    return result


def check_problem(problem: Problem) -> None:
    """What every stage may rely on in a loaded problem."""
    assert isinstance(problem.id, str) and problem.id.strip()
    assert isinstance(problem.question, str) and problem.question.strip()
    assert isinstance(problem.answer, str) and problem.answer and problem.answer == problem.answer.strip()
    assert problem.kind in ("choice", "free_text")
    if problem.kind == "choice":
        assert len(problem.answer) == 1
    if problem.options is not None:
        assert all(len(letter) == 1 and "A" <= letter <= "Z" for letter in problem.options)
        assert all(isinstance(text, str) for text in problem.options.values())
        if problem.kind == "choice" and problem.options:
            assert problem.answer.upper() in problem.options
    # The stages write it as JSON Lines, UTF-8.
    json.dumps(problem.to_dict(), ensure_ascii=False).encode("utf-8")


def row_of(message: str) -> int:
    match = ROW_NAMED.search(message)
    assert match, message
    return int(match.group(1))


def write(folder: Path, name: str, lines: list[str], bom: bool = False, crlf: bool = False) -> Path:
    path = folder / name
    newline = "\r\n" if crlf else "\n"
    path.write_bytes((BOM if bom else b"") + "".join(line + newline for line in lines).encode("utf-8"))
    return path


def load_options(fmt: str, data: st.DataObject) -> dict[str, Any]:
    options: dict[str, Any] = {"dedupe": data.draw(st.sampled_from(["error", "first"]))}
    if fmt == "medmcqa":
        options["cop_base"] = data.draw(st.sampled_from(["auto", 0, 1]))
    if fmt == "pubmedqa":
        options["include_context"] = data.draw(st.booleans())
    return options


def same(a: LoadResult | DataError, b: LoadResult | DataError, a_path: Path, b_path: Path) -> bool:
    """Whether two outcomes agree, the files' paths aside."""
    if isinstance(a, DataError) or isinstance(b, DataError):
        return str(a).replace(str(a_path), "<file>") == str(b).replace(str(b_path), "<file>")
    skipped = [m.replace(str(a_path), "<file>") for m in a.skipped]
    return (a.problems, skipped, a.duplicates) == (
        b.problems,
        [m.replace(str(b_path), "<file>") for m in b.skipped],
        b.duplicates,
    )


# --- properties: loaders ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@PROPERTY
@given(data=st.data())
def test_every_row_loads_or_is_refused_naming_file_and_row(fmt, data):
    lines, kinds = data.draw(jsonl_files(fmt))
    bom, crlf = data.draw(st.booleans()), data.draw(st.booleans())
    options = load_options(fmt, data)
    for row_kinds in kinds:
        ROWS_TRIED.update(
            row_kinds | {f"{fmt} row"} | ({"BOM file"} if bom else set()) | ({"CRLF file"} if crlf else set())
        )
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "rows.jsonl", lines, bom, crlf)
        lenient = outcome(path, fmt, skip_invalid=True, **options)
        strict = outcome(path, fmt, **options)

    if lines[0].startswith("["):  # read as one JSON list (documented): a file-level outcome
        return
    if isinstance(lenient, DataError):  # the only file-level refusal of JSON Lines rows
        assert fmt == "medmcqa" and "data.cop_base" in str(lenient) and same(lenient, strict, path, path)
        return
    # Each row is accounted for: loaded, skipped with its row named, or dropped as a duplicate.
    refused = [row_of(message) for message in lenient.skipped]
    ROWS_TRIED.update(
        {
            "-> loaded": len(lenient.problems),
            "-> refused naming file and row": len(refused),
            "-> dropped by dedupe=first": lenient.duplicates,
        }
    )
    assert refused == sorted(set(refused)) and all(1 <= row <= len(lines) for row in refused)
    assert len(lenient.problems) + len(refused) + lenient.duplicates == len(lines)
    if options["dedupe"] == "error":
        assert lenient.duplicates == 0
    # Without skip_invalid, the first row skip_invalid reports is the error.
    if refused:
        assert isinstance(strict, DataError) and str(strict).startswith(lenient.skipped[0] + " (")
    else:
        assert isinstance(strict, LoadResult) and strict.problems == lenient.problems


@pytest.mark.parametrize("fmt", FORMATS)
@settings(PROPERTY, max_examples=12)  # eight loads an example
@given(data=st.data())
def test_a_bom_and_crlf_line_ends_load_as_if_absent(fmt, data):
    lines, _ = data.draw(jsonl_files(fmt))
    options = load_options(fmt, data)
    with tempfile.TemporaryDirectory() as folder:
        outcomes = []
        for bom, crlf in [(False, False), (True, False), (False, True), (True, True)]:
            (Path(folder) / f"{bom}{crlf}").mkdir()
            path = write(Path(folder) / f"{bom}{crlf}", "rows.jsonl", lines, bom, crlf)
            outcomes.append((outcome(path, fmt, skip_invalid=False, **options), path))
            outcomes.append((outcome(path, fmt, skip_invalid=True, **options), path))
    ROWS_TRIED.update({"BOM x CRLF row": 4 * len(lines)})
    plain = outcomes[:2]
    for index, (result, path) in enumerate(outcomes[2:]):
        reference, reference_path = plain[index % 2]
        assert same(reference, result, reference_path, path)


@pytest.mark.parametrize("fmt", FORMATS)
@PROPERTY
@given(data=st.data())
def test_a_json_list_loads_as_its_rows_as_json_lines_do(fmt, data):
    drawn = [data.draw(rows(fmt)) for _ in range(data.draw(st.integers(1, 5)))]
    items = [row for row, _ in drawn]
    options = load_options(fmt, data)
    for _, row_kinds in drawn:
        ROWS_TRIED.update(row_kinds | {"JSON list row"})
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "list").mkdir()
        (Path(folder) / "lines").mkdir()
        listed = Path(folder) / "list" / "rows.json"
        listed.write_text(json.dumps(items, indent=data.draw(st.sampled_from([None, 1]))), encoding="utf-8")
        lines = write(Path(folder) / "lines", "rows.json", [json.dumps(item) for item in items])
        for skip_invalid in (False, True):
            assert same(
                outcome(listed, fmt, skip_invalid=skip_invalid, **options),
                outcome(lines, fmt, skip_invalid=skip_invalid, **options),
                listed,
                lines,
            )


@pytest.mark.parametrize("fmt", FORMATS)
@PROPERTY
@given(data=st.data())
def test_a_truncated_json_list_is_refused_whole_naming_the_file(fmt, data):
    items = [data.draw(rows(fmt))[0] for _ in range(data.draw(st.integers(1, 4)))]
    text = json.dumps(items, indent=data.draw(st.sampled_from([None, 1])))
    cut = data.draw(st.integers(0, len(text) - 1))
    ROWS_TRIED.update({"truncated JSON list": 1})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cut.json"
        path.write_text(text[:cut], encoding="utf-8")
        error = outcome(path, fmt, skip_invalid=True, **load_options(fmt, data))
    assert isinstance(error, DataError)
    assert re.match(
        rf"{re.escape(str(path))}: (not valid JSON at row \d+ \(line \d+ column \d+\): .*; the file "
        r"cannot be read past this point|no rows \(an empty file or an empty JSON list\))$",
        str(error),
    )


# --- properties: the answer checker ---------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        "The answer is ",
        "the correct option is",
        "Final answer:",
        "**Answer:** ",
        "\nAnswer: ",
        "<think>",
        "</think>",
        "\\boxed{",
        "}",
        "$",
        "(",
        ")",
        "[",
        "]",
        "not ",
        " or ",
        " and ",
        ", ",
        ".",
        "\n",
        "\r\n",
        "option ",
        "likely ",
        "A",
        "B",
        "C",
        "a",
        "I",
        "E. coli",
        "true, text1 is a fact.",
        "25 mg",
        "2.5 mg",
        "–",
        "\u00a0",
        "\u200b",
        "**",
    ]
)
COMPLETIONS = st.one_of(st.none(), TEXT, st.lists(st.one_of(FRAGMENTS, TEXT), max_size=12).map("".join))
ANY_OPTIONS = st.one_of(
    st.none(),
    OPTIONS,
    st.dictionaries(st.sampled_from("ABCD"), st.sampled_from(["E. coli", "A", "", "25 mg", "true, x"])),
    st.dictionaries(TEXT, JSON_VALUES, max_size=4),
    JSON_VALUES,  # wrong types: never a reason to raise
)
GOLDS = st.one_of(st.none(), LETTERS, TEXT, st.sampled_from(["0", "1", "25 mg", "E. coli"]), JSON_VALUES)


@settings(PROPERTY, max_examples=400)
@given(COMPLETIONS, ANY_OPTIONS, GOLDS)
def test_the_answer_checker_never_raises_and_grades_within_its_outcomes(text, options, gold):
    ROWS_TRIED.update({"completion": 1})
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and answer)
    letters = (
        {str(k).strip().upper() for k in options}
        if isinstance(options, Mapping) and options
        else {chr(c) for c in range(ord("A"), ord("Z") + 1)}
    )
    for named in (option_of(answer, options), option_of(text, options)):
        assert named is None or named in letters
    for graded in (is_correct(answer, gold, options), is_correct(text, gold, options)):
        assert graded is True or graded is False


# --- examples: each adversarial case, exact ------------------------------------------------------

OPTIONS_ABCD = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Alteplase"}
HINT = "set data.skip_invalid=true to skip such rows"


def medqa_row(pid: Any = "q1", **fields: Any) -> dict[str, Any]:
    return {"id": pid, "question": "Which drug?", "options": dict(OPTIONS_ABCD), "answer_idx": "B", **fields}


def medqa_problem(pid: str = "q1", question: str = "Which drug?", **fields: Any) -> Problem:
    lines = "\n".join(f"{letter}. {text}" for letter, text in OPTIONS_ABCD.items())
    return Problem(
        id=pid,
        question=f"{question}\n{lines}",
        answer="B",
        kind="choice",
        source="medqa",
        options=dict(OPTIONS_ABCD),
        **fields,
    )


def refusal(path: Path, row: int, reason: str) -> str:
    return f"{path}: row {row}: {reason} ({HINT})"


def load(path: Path, fmt: str, **kwargs: Any) -> LoadResult:
    return load_problems(DataSpec(format=fmt, path=str(path), **kwargs))


def refused(path: Path, fmt: str, **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        load(path, fmt, **kwargs)
    return str(info.value)


def lines_file(tmp_path: Path, rows: list[Any], name: str = "rows.jsonl") -> Path:
    return write(
        tmp_path, name, [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    )


def test_unicode_rtl_astral_and_combining_text_loads_unchanged(tmp_path):
    question = "Which is right? שלום مرحبا 𝔘𝔫𝔦 🧬 e\u0301\nA. \u202eevil\u202c\nB. 𝔟"
    path = lines_file(tmp_path, [{"id": "ü-1", "question": question, "answer": "B", "source": "קובץ"}])
    assert load(path, "jsonl").problems == [
        Problem(
            id="ü-1",
            question=question,
            answer="B",
            kind="choice",
            source="קובץ",
            options={"A": "\u202eevil\u202c", "B": "𝔟"},
        )
    ]


def test_line_separators_inside_a_json_lines_string_keep_the_row_whole(tmp_path):
    # json.dumps(ensure_ascii=False) leaves U+2028, U+2029 and U+0085 raw; str.splitlines breaks at them.
    question = "Dose?\u2028Per day\u2029in mg\x85exactly"
    path = lines_file(
        tmp_path,
        [{"id": "a", "question": question, "answer": "10 mg"}, {"id": "b", "question": "Q", "answer": "x y"}],
    )
    assert [(p.id, p.question) for p in load(path, "jsonl").problems] == [("a", question), ("b", "Q")]


def test_a_lone_surrogate_is_refused_naming_the_field(tmp_path):
    path = lines_file(tmp_path, ['{"id": "a", "question": "Q \\ud800", "answer": "x y"}'])
    assert refused(path, "jsonl") == refusal(
        path, 1, "question holds a lone surrogate '\\ud800' at character 2 (not valid Unicode)"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_one_megabyte_question_loads_in_every_format(tmp_path, fmt):
    stem = "x" * MEGABYTE
    row = {
        "medsss": {
            "id": "m",
            "conversations": [{"from": "human", "value": f"{stem}\nA. yes\nB. no"}],
            "eval": {"answer": "A"},
        },
        "medqa": {"id": "m", "question": stem, "options": {"A": "yes", "B": "no"}, "answer_idx": "A"},
        "medmcqa": {
            "id": "m",
            "question": stem,
            "opa": "yes",
            "opb": "no",
            "opc": "c",
            "opd": "d",
            "cop": "A",
        },
        "pubmedqa": {"id": "m", "question": stem, "final_decision": "yes"},
        "jsonl": {"id": "m", "question": f"{stem}\nA. yes\nB. no", "answer": "A"},
    }[fmt]
    (problem,) = load(lines_file(tmp_path, [row]), fmt).problems
    assert problem.answer == "A" and problem.question.startswith(stem) and len(problem.question) > MEGABYTE


@pytest.mark.timeout(60)
def test_a_one_megabyte_run_of_spaces_in_an_option_line_is_read_in_linear_time(tmp_path):
    # The option-line pattern once ended in a lazy "(\S.*?)\s*$": quadratic here, it never finished.
    question = "Which?\nA. x" + " " * MEGABYTE + "y\nB. z"
    path = write(
        tmp_path,
        "big.json",
        [json.dumps([{"id": 1, "conversations": [{"value": question}], "eval": {"answer": "B"}}])],
    )
    (problem,) = load(path, "medsss").problems
    assert problem.options == {"A": "x" + " " * MEGABYTE + "y", "B": "z"}


def test_a_one_megabyte_gold_is_refused_with_a_short_message(tmp_path):
    path = lines_file(tmp_path, [{"id": "a", "question": "Q", "answer": "y" * MEGABYTE, "kind": "choice"}])
    assert refused(path, "jsonl") == refusal(
        path,
        1,
        f"choice question with a gold answer {'y' * 60!r}... ({MEGABYTE} characters) that is not one letter",
    )


@pytest.mark.parametrize(
    ("fmt", "row", "reason"),
    [
        ("medqa", medqa_row(question=["Which drug?"]), "'question' must be text, got a list"),
        (
            "medqa",
            medqa_row(options=["Aspirin", "Heparin"]),
            "'options' must be an object mapping letters to option texts, got a list",
        ),
        ("medqa", medqa_row(options={"A": "Aspirin", "B": None}), "option B must be text, got null"),
        ("medqa", medqa_row(answer_idx=["B"]), "'answer_idx' must be text, got a list"),
        ("medqa", medqa_row(answer_idx=True), "'answer_idx' must be text, got true/false"),
        ("medqa", medqa_row(pid=["q1"]), "'id' must be a string or an integer, got a list"),
        ("medqa", medqa_row(pid=1.5), "'id' must be a string or an integer, got a number"),
        ("medqa", medqa_row(pid=False), "'id' must be a string or an integer, got true/false"),
        ("medqa", medqa_row(pid=" "), "'id' is empty"),
        ("medqa", medqa_row(question="   "), "no question text"),
        (
            "medmcqa",
            {"id": "m", "question": "Q", "opa": None, "opb": "b", "opc": "c", "opd": "d", "cop": 1},
            "'opa' must be text, got null",
        ),
        (
            "medmcqa",
            {"id": "m", "question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": True},
            "gold answer 'cop'=True is not among the options A-D",
        ),
        (
            "medmcqa",
            {"id": "m", "question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": [1]},
            "gold answer 'cop'=[1] is not among the options A-D",
        ),
        (
            "pubmedqa",
            {"id": "p", "question": "Q?", "final_decision": ["yes"]},
            "'final_decision' must be text, got a list",
        ),
        (
            "pubmedqa",
            {"id": "p", "question": "Q?", "final_decision": "yes", "context": ["c"]},
            "'context' must be an object holding 'contexts', got a list",
        ),
        (
            "pubmedqa",
            {"id": "p", "question": "Q?", "final_decision": "yes", "CONTEXTS": "c"},
            "the contexts must be a list of texts, got text",
        ),
        (
            "pubmedqa",
            {"id": "p", "question": "Q?", "final_decision": "yes", "CONTEXTS": ["c", None]},
            "each context must be text, got null",
        ),
        (
            "medsss",
            {"id": 1, "conversations": {"from": "human", "value": "Q"}, "eval": {"answer": "A"}},
            '\'conversations\' must be a list of turns {"from", "value"}',
        ),
        (
            "medsss",
            {"id": 1, "conversations": ["Q"], "eval": {"answer": "A"}},
            '\'conversations\' must be a list of turns {"from", "value"}',
        ),
        ("medsss", {"id": 1, "conversations": [], "eval": {"answer": "A"}}, "no conversations"),
        (
            "medsss",
            {"id": 1, "conversations": [{"value": "Q"}], "eval": ["A"]},
            "'eval' must be an object holding the gold 'answer', got a list",
        ),
        (
            "medsss",
            {"id": 1, "conversations": [{"value": "Q"}], "eval": {"answer": {"letter": "A"}}},
            "'answer' must be text, got an object",
        ),
        (
            "medsss",
            {"id": 1, "conversations": [{"value": "Q"}], "eval": {"answer": "x y"}, "dataset": ["d"]},
            "'dataset' must be text, got a list",
        ),
        (
            "jsonl",
            {"id": "j", "question": "Q", "answer": "x y", "meta": ["m"]},
            "'meta' must be an object, got a list",
        ),
        (
            "jsonl",
            {"id": "j", "question": "Q", "answer": "x y", "kind": ["choice"]},
            "kind ['choice'] must be 'choice' or 'free_text'",
        ),
        (
            "jsonl",
            {"id": "j", "question": "Q", "answer": "B", "options": "A. x B. y"},
            "'options' must be an object mapping letters to option texts, got text",
        ),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_naming_file_row_and_field(tmp_path, fmt, row, reason):
    path = lines_file(tmp_path, [row])
    assert refused(path, fmt, cop_base=1, include_context=True) == refusal(path, 1, reason)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_row_that_is_a_list_or_a_scalar_is_refused(tmp_path, fmt):
    # Not the first row: a file starting with "[" is one JSON list.
    good = {"id": "g", "question": "Q", "answer": "x y", "final_decision": "yes"}
    path = lines_file(tmp_path, [good, [good], "null", '"text"'])
    result = load(path, fmt, skip_invalid=True)
    assert [m.removeprefix(f"{path}: ") for m in result.skipped[-3:]] == [
        "row 2: expected a JSON object, got a list",
        "row 3: expected a JSON object, got null",
        "row 4: expected a JSON object, got text",
    ]


def test_a_list_of_cops_no_longer_breaks_the_base_detection(tmp_path):
    # auto cop_base collected the cops in a set: an unhashable [1] raised TypeError for the file.
    rows = [
        {"id": "a", "question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": [1]},
        {"id": "b", "question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 4},
    ]
    path = lines_file(tmp_path, rows)
    assert refused(path, "medmcqa") == refusal(path, 1, "gold answer 'cop'=[1] is not among the options A-D")
    assert [(p.id, p.answer) for p in load(path, "medmcqa", skip_invalid=True).problems] == [("b", "D")]


@pytest.mark.parametrize(
    ("fmt", "row", "expected"),
    [
        ("medqa", medqa_row(pid=None), medqa_problem(pid="rows-1")),
        ("medqa", medqa_row(topic=None, extra={"any": [1]}), medqa_problem(meta={"topic": None})),
        (
            "jsonl",
            {
                "id": "j",
                "question": "Q",
                "answer": "x y",
                "meta": None,
                "source": None,
                "kind": None,
                "options": None,
            },
            Problem(id="j", question="Q", answer="x y", kind="free_text", source="rows"),
        ),
        (
            "pubmedqa",
            {"id": None, "pubid": 7, "question": "Q?", "final_decision": "no", "context": None},
            Problem(
                id="7",
                question="Q?\nA. yes\nB. no\nC. maybe",
                answer="B",
                kind="choice",
                source="pubmedqa",
                options={"A": "yes", "B": "no", "C": "maybe"},
            ),
        ),
        (
            "medsss",
            {
                "id": 5,
                "conversations": [{"value": "Dose?"}],
                "eval": {"answer": "5 mg", "type": None},
                "dataset": None,
            },
            Problem(
                id="5", question="Dose?", answer="5 mg", kind="free_text", source="rows", meta={"type": None}
            ),
        ),
    ],
)
def test_a_null_optional_field_is_read_as_absent(tmp_path, fmt, row, expected):
    assert load(lines_file(tmp_path, [row]), fmt, include_context=True).problems == [expected]


@pytest.mark.parametrize(
    ("fmt", "row", "reason"),
    [
        ("jsonl", {"id": None, "question": "Q", "answer": "x y"}, "missing field 'id'"),
        ("medqa", medqa_row(question=None), "no question text"),
        ("medqa", medqa_row(options=None), "no options"),
        ("medqa", medqa_row(answer_idx=None), "no gold answer"),
        (
            "medsss",
            {"id": 1, "conversations": [{"value": None}], "eval": {"answer": "A"}},
            "no question text",
        ),
        ("medsss", {"id": 1, "conversations": [{"value": "Q"}], "eval": None}, "no gold answer"),
        (
            "pubmedqa",
            {"id": "p", "question": "Q?", "final_decision": None},
            "gold answer '' is not one of yes / no / maybe",
        ),
    ],
)
def test_a_null_required_field_is_refused(tmp_path, fmt, row, reason):
    path = lines_file(tmp_path, [row])
    assert refused(path, fmt) == refusal(path, 1, reason)


# --- duplicate ids (data.dedupe) ---


def test_a_duplicate_id_is_refused_naming_the_file_the_id_and_both_rows(tmp_path):
    path = lines_file(tmp_path, [medqa_row("a"), medqa_row("b"), medqa_row("a", question="Again?")])
    assert refused(path, "medqa") == (
        f"{path}: row 3: duplicate id 'a' (first seen in row 1) "
        f"(set data.dedupe=first to keep the first row of each id, or {HINT})"
    )


def test_dedupe_first_keeps_the_first_row_of_each_id_and_logs_how_many_were_dropped(tmp_path, caplog):
    rows = [medqa_row("a"), medqa_row("b"), medqa_row("a", question="Again?"), medqa_row("b"), medqa_row("c")]
    path = lines_file(tmp_path, rows)
    with caplog.at_level(logging.WARNING, logger="medsss.data.loaders"):
        result = load(path, "medqa", dedupe="first", limit=3)
    assert result.problems == [medqa_problem("a"), medqa_problem("b"), medqa_problem("c")]
    assert result.duplicates == 2 and result.skipped == []
    assert f"{path}: dropped 2 row(s) repeating an earlier row's id" in caplog.text


def test_an_integer_id_and_its_digits_as_a_string_are_the_same_id(tmp_path):
    path = lines_file(tmp_path, [medqa_row(1), medqa_row("1")])
    assert refused(path, "medqa").startswith(f"{path}: row 2: duplicate id '1' (first seen in row 1)")


def test_with_skip_invalid_a_duplicate_is_skipped_and_reported(tmp_path):
    path = lines_file(tmp_path, [medqa_row("a"), medqa_row("a")])
    result = load(path, "medqa", skip_invalid=True)
    assert result.problems == [medqa_problem("a")]
    assert result.skipped == [f"{path}: row 2: duplicate id 'a' (first seen in row 1)"]


def test_a_refused_row_claims_no_id(tmp_path):
    path = lines_file(tmp_path, [medqa_row("a", answer_idx="Z"), medqa_row("a")])
    assert load(path, "medqa", skip_invalid=True).problems == [medqa_problem("a")]


def test_a_pmid_repeated_in_the_original_pubmedqa_table_is_a_duplicate(tmp_path):
    # json.loads kept the last of two equal keys: the first question vanished without a word.
    row = '{"QUESTION": "Q?", "final_decision": "yes"}'
    path = write(tmp_path, "ori_pqal.json", [f'{{"21645374": {row}, "16418930": {row}, "21645374": {row}}}'])
    assert refused(path, "pubmedqa").startswith(
        f"{path}: row 3: duplicate id '21645374' (first seen in row 1)"
    )
    assert [p.id for p in load(path, "pubmedqa", dedupe="first").problems] == ["21645374", "16418930"]


def test_an_unknown_dedupe_value_is_refused(tmp_path):
    path = lines_file(tmp_path, [medqa_row()])
    assert refused(path, "medqa", dedupe="last") == "data.dedupe='last' must be one of ['error', 'first']"


def test_every_data_option_defaults_to_refusing_duplicates_and_takes_dedupe_first():
    assert instantiate(compose(["data=medqa"]).data).dedupe == "error"
    assert instantiate(compose(["data=medqa_bench", "data.dedupe=first"]).data).dedupe == "first"
    assert compose(["stage=evaluate"]).stage.dedupe == "error"


# --- option letters: missing, extra, repeated ---


def test_a_json_object_repeating_an_option_letter_is_refused(tmp_path):
    path = lines_file(
        tmp_path,
        ['{"id": "q", "question": "Q", "options": {"A": "x", "B": "y", "A": "z"}, "answer_idx": "A"}'],
    )
    assert refused(path, "medqa") == refusal(path, 1, "key 'A' appears twice in one JSON object")


def test_option_letters_equal_but_for_case_are_refused(tmp_path):
    path = lines_file(tmp_path, [medqa_row(options={"a": "x", "A": "y", "B": "z"})])
    assert refused(path, "medqa") == refusal(path, 1, "option A given twice (as 'a' and 'A')")


def test_an_option_key_that_is_not_a_letter_is_refused(tmp_path):
    path = lines_file(
        tmp_path, [{"id": "j", "question": "Q", "answer": "A", "options": {"A": "x", "1": "y"}}]
    )
    assert refused(path, "jsonl") == refusal(path, 1, "option '1' is not a letter A-Z")


def test_a_gold_letter_missing_from_the_options_is_refused(tmp_path):
    path = lines_file(tmp_path, [medqa_row(options={"A": "x", "B": "y", "D": "z"}, answer_idx="C")])
    assert refused(path, "medqa") == refusal(
        path, 1, "gold answer 'C' is not among the options ['A', 'B', 'D']"
    )


def test_a_missing_medmcqa_option_is_refused(tmp_path):
    path = lines_file(tmp_path, [{"id": "m", "question": "Q", "opa": "a", "opb": "b", "opc": "c", "cop": 1}])
    assert refused(path, "medmcqa", cop_base=1) == refusal(path, 1, "missing field 'opd'")


def test_extra_options_load_as_given_or_are_ignored_where_the_format_has_four(tmp_path):
    path = lines_file(
        tmp_path, [medqa_row(options={**OPTIONS_ABCD, "E": "Clopidogrel", "F": "Dabigatran"}, answer_idx="F")]
    )
    (problem,) = load(path, "medqa").problems
    assert (
        problem.options == {**OPTIONS_ABCD, "E": "Clopidogrel", "F": "Dabigatran"} and problem.answer == "F"
    )
    path = lines_file(
        tmp_path,
        [
            {
                "id": "m",
                "question": "Q",
                "opa": "a",
                "opb": "b",
                "opc": "c",
                "opd": "d",
                "ope": "e",
                "cop": "D",
            }
        ],
        "mm.jsonl",
    )
    assert load(path, "medmcqa").problems == [
        Problem(
            id="m",
            question="Q\nA. a\nB. b\nC. c\nD. d",
            answer="D",
            kind="choice",
            source="medmcqa",
            options={"A": "a", "B": "b", "C": "c", "D": "d"},
        )
    ]


# --- BOM and CRLF: as if absent ---


def test_a_bom_and_crlf_line_ends_in_json_lines_load_as_if_absent(tmp_path):
    rows = [json.dumps(medqa_row("a")), json.dumps(medqa_row("b"))]
    path = write(tmp_path, "rows.jsonl", rows, bom=True, crlf=True)
    assert load(path, "medqa").problems == [medqa_problem("a"), medqa_problem("b")]


def test_a_bom_before_a_pretty_printed_crlf_json_list_loads_as_if_absent(tmp_path):
    text = json.dumps([medqa_row("a"), medqa_row("b")], indent=2).replace("\n", "\r\n")
    path = tmp_path / "rows.json"
    path.write_bytes(BOM + text.encode("utf-8"))
    assert load(path, "medqa").problems == [medqa_problem("a"), medqa_problem("b")]


def test_a_bom_starting_a_later_line_of_joined_files_is_dropped_too(tmp_path):
    path = tmp_path / "joined.jsonl"
    path.write_bytes(b"".join(BOM + json.dumps(medqa_row(pid)).encode() + b"\n" for pid in ("a", "b")))
    assert [p.id for p in load(path, "medqa").problems] == ["a", "b"]


def test_crlf_inside_a_question_is_the_question_own_text(tmp_path):
    question = "Which?\r\nA. x\r\nB. y"
    path = lines_file(tmp_path, [{"id": "j", "question": question, "answer": "B"}])
    (problem,) = load(path, "jsonl").problems
    assert problem.question == question and problem.options == {"A": "x", "B": "y"}


def test_a_utf16_file_is_refused_as_not_utf8(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(json.dumps(medqa_row()).encode("utf-16"))
    assert refused(path, "medqa") == f"{path}: not UTF-8 text (invalid start byte at byte 0)"


# --- empty, truncated and broken files ---


@pytest.mark.parametrize(
    "content",
    [b"", BOM, b"\n\r\n  \n", b"[]", b" [ ] \n"],
    ids=["empty", "bom-only", "blank-lines", "empty-list", "spaced-empty-list"],
)
def test_a_file_without_rows_is_refused(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    assert (
        refused(path, "jsonl", skip_invalid=True) == f"{path}: no rows (an empty file or an empty JSON list)"
    )


def test_a_truncated_last_json_lines_row_is_that_row_error(tmp_path):
    path = lines_file(tmp_path, [medqa_row("a"), '{"id": "b", "question": "Wh'])
    assert refused(path, "medqa") == refusal(path, 2, "bad JSON: Unterminated string starting at (column 25)")
    assert load(path, "medqa", skip_invalid=True).problems == [medqa_problem("a")]


def test_a_truncated_json_list_is_refused_whole_even_with_skip_invalid(tmp_path):
    text = json.dumps([medqa_row("a"), medqa_row("b")])
    cut = text.index('"question"', text.index('"b"'))
    path = tmp_path / "cut.json"
    path.write_text(text[: cut + 5], encoding="utf-8")
    assert refused(path, "medqa", skip_invalid=True) == (
        f"{path}: not valid JSON at row 2 (line 1 column {cut + 1}): Unterminated string starting at; "
        "the file cannot be read past this point"
    )


def test_data_after_a_json_list_is_refused(tmp_path):
    path = write(tmp_path, "rows.json", [json.dumps([medqa_row("a")]), json.dumps(medqa_row("b"))])
    assert refused(path, "medqa") == (
        f"{path}: not valid JSON at the end (line 2 column 1): extra data after the top-level value; "
        "the file cannot be read past this point"
    )


def test_a_trailing_comma_in_a_json_list_is_refused(tmp_path):
    path = write(tmp_path, "rows.json", [f"[{json.dumps(medqa_row('a'))},]"])
    assert refused(path, "medqa").startswith(f"{path}: not valid JSON at row 2 ")


def test_nesting_deeper_than_json_reads_is_that_row_error(tmp_path):
    path = lines_file(tmp_path, [medqa_row("a"), "[" * 100_000])
    assert refused(path, "medqa") == refusal(path, 2, "bad JSON: nested too deeply")


@pytest.mark.skipif(
    not hasattr(sys, "get_int_max_str_digits"), reason="no integer digit limit in this Python"
)
def test_an_integer_too_long_for_json_is_that_row_error(tmp_path):
    path = lines_file(tmp_path, [medqa_row("a"), '{"id": 1' + "0" * 5000 + "}"])
    assert refused(path, "medqa").startswith(f"{path}: row 2: bad JSON: Exceeds the limit (4300 digits)")


def test_a_directory_as_the_data_path_is_refused(tmp_path):
    assert refused(tmp_path, "jsonl") == f"{tmp_path}: not a file (data.path names a directory or a device)"


# --- the answer checker: adversarial completions ---


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        "x" * MEGABYTE,
        " " * MEGABYTE,
        "The answer is " + "B" * MEGABYTE,
        "The answer is B" + " " * MEGABYTE + ".",
        ("The answer is A or B " * (MEGABYTE // 21)),
        "<think>" * (MEGABYTE // 7),
        "so " * (MEGABYTE // 3) + "B",
        "\n" * MEGABYTE + "Answer: C",
    ],
    ids=[
        "letters",
        "spaces",
        "long-answer",
        "spaces-after-the-letter",
        "repeated-hedges",
        "think-tags",
        "leading-words",
        "newlines",
    ],
)
def test_a_one_megabyte_completion_is_graded_without_error(text):
    answer = extract_answer(text)
    assert answer is None or isinstance(answer, str)
    assert is_correct(text, "B", OPTIONS_ABCD) in (True, False)
    assert is_correct(text, "25 mg") in (True, False)


@pytest.mark.parametrize(
    ("pred", "gold", "options"),
    [
        (None, "B", None),
        ("B", None, None),
        ("B", 2, None),
        ("B", "B", ["Aspirin", "Heparin"]),
        ("Heparin", "B", {"A": None, "B": 2, 3: "x"}),
        ("\ud800", "B", {"A": "\ud800"}),
        ("", "", {}),
    ],
)
def test_the_answer_checker_takes_wrong_types_without_raising(pred, gold, options):
    assert is_correct(pred, gold, options) in (True, False)
    assert option_of(pred, options) in (None, *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "3")
