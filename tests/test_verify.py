"""Answer extraction and correctness (DESIGN.md section 2): the rules, one test each."""

from __future__ import annotations

import pytest

from medsss.data.verify import extract_answer, is_correct

# --- extract_answer: which phrase -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So the answer is B.", "B"),
        ("The correct answer is D.", "D"),
        ("Final answer: E", "E"),
        ("Final answer is A.", "A"),
        ("Final answer : C", "C"),
    ],
)
def test_each_answer_phrase_is_recognised(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    ["THE ANSWER IS B.", "the answer is B.", "tHe AnSwEr Is B.", "FINAL ANSWER: B", "The Correct Answer Is B"],
)
def test_phrases_are_case_insensitive(text):
    assert extract_answer(text) == "B"


def test_the_answer_is_beats_the_correct_answer_is_wherever_they_stand():
    assert extract_answer("The answer is A.\nOn reflection, the correct answer is B.") == "A"
    assert extract_answer("The correct answer is B.\nThe answer is A.") == "A"


def test_the_correct_answer_is_beats_final_answer():
    assert extract_answer("The correct answer is C.\nFinal answer: D") == "C"
    assert extract_answer("Final answer: D\nThe correct answer is C.") == "C"


def test_the_answer_is_beats_final_answer():
    assert extract_answer("Final answer: D\nThe answer is A.") == "A"


def test_final_answer_without_is_or_colon_is_not_a_phrase():
    assert extract_answer("My final answer B") is None


# --- extract_answer: which occurrence, what text ----------------------------------------------


def test_last_match_wins_across_lines():
    assert extract_answer("The answer is A.\nHmm, let me reconsider.\nThe answer is C.") == "C"


def test_last_match_wins_on_one_line():
    assert extract_answer("The answer is A. No wait, the answer is B.") == "B"


def test_last_match_of_a_lower_priority_phrase_wins_when_it_is_the_first_that_matches():
    assert extract_answer("Final answer: A\nFinal answer: D") == "D"
    assert extract_answer("The correct answer is A; no, the correct answer is E.") == "E"


def test_only_the_rest_of_the_line_is_taken():
    assert extract_answer("The answer is B.\nStep 5: something else") == "B"
    assert extract_answer("Reasoning.\nThe answer is C. Acute pancreatitis\nExplanation follows.") == (
        "C. Acute pancreatitis"
    )


def test_the_rest_of_the_line_keeps_the_option_text():
    assert extract_answer("The answer is C. Acute pancreatitis") == "C. Acute pancreatitis"


def test_a_phrase_at_the_end_of_its_line_gives_none():
    # Only the rest of the line counts: the next line is not looked at.
    assert extract_answer("The answer is\nB") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is **C**.", "C"),
        ('The answer is "B".', "B"),
        ("The answer is 'B'.", "B"),
        ("The answer is “B”.", "B"),
        ("The answer is: (D)", "(D)"),
        ("The answer is (D).", "(D)"),
        ("The answer is:   A   ", "A"),
        ("The answer is B...", "B"),
        ("Final answer: **E**", "E"),
        ("The answer is 10 mg/kg.", "10 mg/kg"),
        ("The answer is\tB.", "B"),
    ],
)
def test_spaces_colons_asterisks_quotes_and_trailing_periods_are_stripped(text, expected):
    assert extract_answer(text) == expected


def test_inner_periods_are_kept():
    assert extract_answer("The answer is 0.5 mg.") == "0.5 mg"


def test_a_crlf_line_ending_is_not_part_of_the_answer():
    assert extract_answer("The answer is B.\r\nExplanation.") == "B"


# --- extract_answer: no answer, odd input -----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", None, "I am not sure.", "Answer: B", "the answer, is B", "B"],
)
def test_no_phrase_gives_none(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    "text",
    ["The answer is", "The answer is.", "The answer is ...", "The answer is: ***", 'The answer is ""', "Final answer:"],
)
def test_only_punctuation_after_the_phrase_gives_none(text):
    assert extract_answer(text) is None


WEIRD_INPUTS = [
    "",
    " ",
    "\n\n\n",
    "The answer is",
    "The answer is:",
    "The answer is ::::**''\"\"....",
    "the answer is\n",
    "The answer is 🤔",
    "The answer is — β-blocker ✓",
    "Die Antwort ist ä. The answer is ß.",
    "The answer is \x00",
    "The answer is\u2028B",
    "Final answer is",
    "Final answer:\n\n",
    "The correct answer is .",
    "The answer is " + "A" * 100_000,
    "word " * 50_000 + "The answer is B.",
    "The answer is B." * 10_000,
    "\ufeff\u200bThe answer is\u00a0B",
    "((((((((((",
    "The answer is" * 1000,
]


@pytest.mark.parametrize("text", WEIRD_INPUTS, ids=range(len(WEIRD_INPUTS)))
def test_extract_never_raises_and_returns_a_non_empty_string_or_none(text):
    result = extract_answer(text)
    assert result is None or (isinstance(result, str) and result != "")


def test_very_long_text_still_finds_the_last_answer():
    text = "Reasoning line.\n" * 20_000 + "The answer is A.\n" + "More.\n" * 20_000 + "The answer is D."
    assert extract_answer(text) == "D"


# --- is_correct -------------------------------------------------------------------------------


@pytest.mark.parametrize("pred", ["C", "C. Acute pancreatitis", "(C)", "**C**", "c", "c.", " C ", "C) yes"])
def test_a_letter_gold_matches_the_first_letter_of_the_prediction_upper_cased(pred):
    assert is_correct(pred, "C") is True


@pytest.mark.parametrize("pred", ["D", "d", "(D)", "D. C is wrong", "Acute pancreatitis"])
def test_a_letter_gold_is_wrong_when_the_first_letter_differs(pred):
    assert is_correct(pred, "C") is False


def test_a_lower_case_letter_gold_matches_the_same_letter():
    assert is_correct("B", "b") is True


@pytest.mark.parametrize("pred", [None, "", "   ", "()", "**", "123"])
def test_a_prediction_without_a_letter_is_wrong_for_a_letter_gold(pred):
    assert is_correct(pred, "C") is False


@pytest.mark.parametrize("pred", [None, ""])
def test_a_none_or_empty_prediction_is_wrong_for_a_text_gold(pred):
    assert is_correct(pred, "10 mg/kg") is False


@pytest.mark.parametrize("gold", [None, "", "   "])
def test_a_missing_gold_is_never_matched(gold):
    assert is_correct("C", gold) is False


def test_a_text_gold_matches_by_case_insensitive_containment():
    assert is_correct("Give 10 MG/KG daily", "10 mg/kg") is True
    assert is_correct("10 mg/kg", "10 MG/KG") is True


def test_a_text_gold_not_contained_is_wrong():
    assert is_correct("5 mg", "10 mg/kg") is False
    assert is_correct("Give 10 mg daily", "10 mg/kg") is False


def test_containment_is_one_way_prediction_must_contain_gold():
    assert is_correct("mg", "10 mg/kg") is False


def test_whitespace_around_the_gold_is_ignored():
    assert is_correct("C", "  C\n") is True
    assert is_correct("D", " C ") is False
    assert is_correct("Give 10 mg/kg daily", "  10 mg/kg \n") is True


@pytest.mark.parametrize("pred", WEIRD_INPUTS, ids=range(len(WEIRD_INPUTS)))
@pytest.mark.parametrize("gold", ["C", "10 mg/kg"])
def test_is_correct_never_raises_and_returns_a_bool(pred, gold):
    assert isinstance(is_correct(pred, gold), bool)


def test_extract_then_judge_end_to_end():
    solution = "Step 1: Lipase is high.\n\nStep 2: So the answer is **C**. Acute pancreatitis."
    pred = extract_answer(solution)
    assert is_correct(pred, "C") is True
    assert is_correct(pred, "B") is False


def test_a_non_breaking_space_is_stripped_like_any_space():
    assert extract_answer("The answer is\u00a0C.") == "C"
