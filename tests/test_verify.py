"""Answer extraction and correctness (docs/method.md#answer-grading): the rules, one test each."""

from __future__ import annotations

import pytest

from medsss.data.verify import extract_answer, is_correct, option_of

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


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Final answer B", "B"), ("My final answer B", "B"), ("**Final answer** C", "C"), ("**Final Answer**: D", "D")],
)
def test_final_answer_followed_by_a_space_is_a_phrase(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["Before my final answer, B", "final answers vary", "finalanswer: B"])
def test_final_answer_followed_by_anything_else_is_not_a_phrase(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: A", "A"),
        ("answer: a", "a"),
        ("**Answer:** A", "A"),
        ("**Answer: A**", "A"),
        ("*Answer*: B.", "B"),
        ("### Answer: C", "C"),
        ("Reasoning first.\n  Answer: D", "D"),
    ],
)
def test_a_line_initial_answer_colon_is_a_phrase_with_emphasis_allowed(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["The key answer: B", "Answer B", "Answers: B"])
def test_answer_colon_inside_a_line_or_without_colon_is_not_a_phrase(text):
    assert extract_answer(text) is None


def test_answer_colon_is_the_last_phrase_in_priority():
    assert extract_answer("Answer: A\nFinal answer: B") == "B"
    assert extract_answer("Final answer: B\nAnswer: A") == "B"


def test_the_answer_is_needs_whole_words():
    # "isn't" is not "is": the phrase must end at a word boundary.
    assert extract_answer("The answer isn't obvious.\nFinal answer: C") == "C"
    assert extract_answer("Bathe answer is B") is None


def test_the_correct_option_is_is_a_phrase_of_the_second_rank():
    assert extract_answer("The correct option is (E).") == "(E)"
    assert extract_answer("The correct option is E.\nThe answer is D.") == "D"


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is\nB", "B"),
        ("The answer is:\nC", "C"),
        ("The answer is:\n\n**C. Acute pancreatitis**", "C. Acute pancreatitis"),
        ("**Final Answer**\n$$\n\\boxed{D}\n$$", "D"),
        ("**Answer:**\n\nE", "E"),
    ],
)
def test_a_phrase_that_ends_its_line_takes_the_next_non_empty_line(text, expected):
    assert extract_answer(text) == expected


def test_the_next_line_is_looked_for_only_a_few_lines_down():
    assert extract_answer("The answer is:" + "\n" * 3 + "**\n" * 3 + "B") is None


# --- extract_answer: LaTeX and thinking ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{C}.", "C"),
        ("The answer is $\\boxed{C}$.", "C"),
        ("The answer is $$\\boxed{C}$$", "C"),
        ("The answer is \\(\\boxed{B}\\).", "B"),
        ("The answer is \\[\\boxed{B}\\]", "B"),
        ("The answer is \\boxed{\\text{C. Acute pancreatitis}}.", "C. Acute pancreatitis"),
        ("The answer is $\\text{25 mg}$.", "25 mg"),
        ("Final answer: \\textbf{E}", "E"),
    ],
)
def test_latex_wrappers_are_stripped(text, expected):
    assert extract_answer(text) == expected


def test_only_the_text_after_the_think_block_is_searched():
    text = "<think>Maybe the answer is A. Hmm, no.</think>\n\nThe answer is C."
    assert extract_answer(text) == "C"


def test_an_answer_stated_only_inside_the_think_block_is_no_answer():
    assert extract_answer("<think>The answer is A.</think>\nI cannot decide.") is None


def test_the_last_closing_think_tag_starts_the_search():
    text = "<think>The answer is A.</think> The answer is B. <think>no</think> Final answer: C"
    assert extract_answer(text) == "C"


def test_a_closing_tag_without_an_opening_one_still_ends_the_thinking():
    # The opening tag may sit in the prompt; the output then holds only the closing one.
    assert extract_answer("Hmm, the answer is A?</think>\nThe correct answer is D.") == "D"


def test_an_unclosed_think_block_runs_to_the_end_and_states_no_answer():
    # An output cut off while thinking has no final answer, whatever it tried out on the way.
    assert extract_answer("<think>Step 1: ... so the answer is B? Let me check") is None
    assert extract_answer("The answer is A.\n<think>or is it B") == "A"
    assert extract_answer("<think>x</think>The answer is C. <think>the answer is D") == "C"


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
    ["", None, "I am not sure.", "the answer, is B", "B", "My answer: B"],
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


@pytest.mark.parametrize(
    "pred",
    ["C", "C. Acute pancreatitis", "(C)", "[C]", "**C**", "c", "c.", " C ", "C) yes", "C: Acute pancreatitis",
     "C - Acute pancreatitis", "C acute pancreatitis", "C, since lipase is high", "C is correct"],
)
def test_a_letter_gold_matches_the_standalone_leading_letter_upper_cased(pred):
    assert is_correct(pred, "C") is True


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("\\boxed{C}", "C"),
        ("$\\boxed{C}$", "C"),
        ("\\text{C}", "C"),
        ("option A", "A"),
        ("Option E: Refuse to dictate the operative report", "E"),
        ("choice B", "B"),
        ("likely C", "C"),
        ("most likely (D)", "D"),
        ("indeed B", "B"),
        ("Answer C", "C"),
        ("therefore option **B**", "B"),
        ("it is A", "A"),
        ("A is the best choice", "A"),
        ("A. a case of mumps", "A"),
    ],
)
def test_leading_words_brackets_emphasis_and_latex_are_removed_before_the_letter(pred, gold):
    assert is_correct(pred, gold) is True
    assert option_of(pred) == gold


@pytest.mark.parametrize(
    "pred",
    ["a case of acute pancreatitis", "A case of acute pancreatitis", "a high dose", "I think so", "Acute", "(a case of mumps)"],
)
def test_the_article_a_or_the_pronoun_i_is_not_an_option_letter(pred):
    assert option_of(pred) is None
    assert is_correct(pred, "A") is False


@pytest.mark.parametrize(
    "pred", ["B or A", "C and B", "either B or C", "B/C", "B, C", "B (or possibly A)", "C. Acute pancreatitis or B. Chronic pancreatitis",
             "option B or option A"],
)
def test_a_prediction_naming_two_different_letters_is_wrong_for_both(pred):
    letters = {"A", "B", "C"}
    assert option_of(pred) is None
    assert not any(is_correct(pred, gold) for gold in letters)


def test_the_same_letter_twice_is_not_a_hedge():
    assert option_of("B or B") == "B"
    assert option_of("C. Hepatitis B or C") == "C"


@pytest.mark.parametrize(
    ("pred", "expected"),
    [("not B; it is A", "A"), ("B, not A", "B"), ("not option C but D", "D"), ("C and not B", "C"), ("not B", None),
     ("rather than A, it is (C)", "C")],
)
def test_letters_ruled_out_with_not_are_ignored(pred, expected):
    assert option_of(pred) == expected


def test_a_negated_article_is_not_a_ruled_out_letter():
    pubhealth = {"A": "true, text1 is a fact.", "B": "false, text1 is not a fact.", "C": "mixture, text1 contains both."}
    assert option_of("false, text1 is not a fact", pubhealth) == "B"


# --- options named by their text ---------------------------------------------------------------

YES_NO_MAYBE = {"A": "yes", "B": "no", "C": "maybe"}
PUBHEALTH = {
    "A": "true, text1 is a fact.",
    "B": "false, text1 is not a fact.",
    "C": "mixture, text1 contains both fact and non-fact information.",
}
DRUGS = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Low molecular weight heparin"}
BACTERIA = {"A": "Staphylococcus aureus", "B": "E. coli", "C": "C. difficile", "D": "T cells"}


@pytest.mark.parametrize(
    ("pred", "options", "expected"),
    [
        ("yes", YES_NO_MAYBE, "A"),
        ("No", YES_NO_MAYBE, "B"),
        ("maybe", YES_NO_MAYBE, "C"),
        ("Yes, anorectal endosonography is valuable", YES_NO_MAYBE, "A"),
        ("No, there is no such link", YES_NO_MAYBE, "B"),
        ("likely no", YES_NO_MAYBE, "B"),
        ("false, text1 is not a fact", PUBHEALTH, "B"),
        ("False", PUBHEALTH, "B"),
        ("mixture", PUBHEALTH, "C"),
        ("true, text1 is a fact", PUBHEALTH, "A"),
        ("Warfarin", DRUGS, "C"),
        ("warfarin, because the INR is high", DRUGS, "C"),
        ("a case of heparin-induced thrombocytopenia", DRUGS, "B"),
        ("low molecular weight heparin", DRUGS, "D"),
        ("E. coli", BACTERIA, "B"),
        ("E. coli infection", BACTERIA, "B"),
        ("T cells", BACTERIA, "D"),
        ("C. difficile", BACTERIA, "C"),
    ],
)
def test_with_options_an_answer_can_name_an_option_by_its_text(pred, options, expected):
    assert option_of(pred, options) == expected
    assert is_correct(pred, expected, options) is True


@pytest.mark.parametrize(
    ("pred", "options"),
    [
        ("yes or no", YES_NO_MAYBE),
        ("not yes", YES_NO_MAYBE),
        ("Aspirin and Heparin both work", DRUGS),
        ("not true", PUBHEALTH),
        ("Streptokinase", DRUGS),
        ("nothing", YES_NO_MAYBE),
    ],
)
def test_text_naming_no_option_or_two_options_names_none(pred, options):
    assert option_of(pred, options) is None


def test_a_letter_outside_the_options_names_none():
    assert option_of("D", YES_NO_MAYBE) is None
    assert option_of("E. Acute pancreatitis", DRUGS) is None
    assert is_correct("D", "D", YES_NO_MAYBE) is False


def test_the_letter_decides_over_option_text_that_follows_it():
    assert option_of("B. Heparin", DRUGS) == "B"
    assert option_of("C. Heparin", DRUGS) == "C"


def test_without_options_text_names_no_option():
    assert option_of("yes") is None
    assert is_correct("Warfarin", "C") is False


@pytest.mark.parametrize("pred", ["D", "d", "(D)", "D. C is wrong", "Acute pancreatitis"])
def test_a_letter_gold_is_wrong_when_the_first_letter_differs(pred):
    assert is_correct(pred, "C") is False


@pytest.mark.parametrize(("pred", "gold"), [("1", "1"), ("0", "0"), ("2. mixture", "2"), ("label 1", "1"), ("\\boxed{2}", "2")])
def test_a_digit_gold_matches_the_first_alphanumeric_token(pred, gold):
    assert is_correct(pred, gold) is True


@pytest.mark.parametrize(("pred", "gold"), [("10", "1"), ("2", "1"), ("one", "1"), ("", "0"), ("A", "1")])
def test_a_digit_gold_is_wrong_for_another_token(pred, gold):
    assert is_correct(pred, gold) is False


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


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("125 mg", "25 mg"), ("2.5 mg", "5 mg"), ("0.65%", "0.6"), ("10.6", "0.6"), ("higher dose", "high"),
     ("1,25 mg", "25 mg"), ("a 5.5 mg dose", "5 mg")],
)
def test_a_text_gold_inside_a_longer_number_or_word_is_not_contained(pred, gold):
    assert is_correct(pred, gold) is False


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("25 mg", "25 mg"), ("a total daily dose of 25 mg", "25 mg"), ("0.6%", "0.6"), ("high-dose", "high"),
     ("10 mg/kg/day", "10 mg/kg"), ("(5 mg)", "5 mg"), ("5 mg.", "5 mg"), ("50  mg twice  daily", "50 mg twice daily"),
     ("125 mg, then 25 mg", "25 mg"), ("20\u201325 mg/d", "20-25 mg/d"), ("20-25 mg/d", "20\u201425 mg/d")],
)
def test_a_text_gold_with_word_and_number_boundaries_is_contained(pred, gold):
    assert is_correct(pred, gold) is True


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
    assert isinstance(is_correct(pred, gold, YES_NO_MAYBE), bool)


@pytest.mark.parametrize("pred", WEIRD_INPUTS, ids=range(len(WEIRD_INPUTS)))
@pytest.mark.parametrize("options", [None, YES_NO_MAYBE, PUBHEALTH, {"A": "", "B": "(", "c": "A"}, "not a dict"])
def test_option_of_never_raises(pred, options):
    result = option_of(pred, options)
    assert result is None or result in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def test_extract_then_judge_end_to_end():
    solution = "Step 1: Lipase is high.\n\nStep 2: So the answer is **C**. Acute pancreatitis."
    pred = extract_answer(solution)
    assert is_correct(pred, "C") is True
    assert is_correct(pred, "B") is False


def test_a_non_breaking_space_is_stripped_like_any_space():
    assert extract_answer("The answer is\u00a0C.") == "C"


# --- extract then judge: the output formats issue 9 names ----------------------------------------

MEDQA = {"A": "Gynecomastia", "B": "Hyperkalemia", "C": "Hirsutism", "D": "Hypertension", "E": "Alopecia"}


@pytest.mark.parametrize(
    ("output", "gold", "options", "expected"),
    [
        ("Step 3: The answer is \\boxed{C}.", "C", MEDQA, True),
        ("Step 3: The answer is $\\boxed{C}$.", "C", MEDQA, True),
        ("Step 3: The answer is option A.", "A", MEDQA, True),
        ("Step 3: The answer is Option E: Alopecia.", "E", MEDQA, True),
        ("Step 3: The answer is choice B.", "B", MEDQA, True),
        ("Step 3: The answer is likely C.", "C", MEDQA, True),
        ("Step 3: Re-checking, the answer is indeed B.", "B", MEDQA, True),
        ("Step 3: The answer is a case of hirsutism.", "A", MEDQA, False),
        ("Step 3: The answer is a case of hirsutism.", "C", MEDQA, True),
        ("Step 3: The answer is yes.", "A", YES_NO_MAYBE, True),
        ("Step 3: The answer is Gynecomastia.", "A", MEDQA, True),
        ("Step 3: The answer is false, text1 is not a fact.", "B", PUBHEALTH, True),
        ("Step 3: The answer is B or A.", "B", MEDQA, False),
        ("Step 3: The answer is C and B.", "C", MEDQA, False),
        ("Step 3: The answer is not B; it is A.", "A", MEDQA, True),
        ("Step 3: The answer is not B; it is A.", "B", MEDQA, False),
        ("Spironolactone blocks androgen receptors.\n\nAnswer: A", "A", MEDQA, True),
        ("Spironolactone blocks androgen receptors.\n\n**Answer: A**", "A", MEDQA, True),
        ("Spironolactone blocks androgen receptors. Final answer A", "A", MEDQA, True),
        ("Step 3: The answer is:\nA", "A", MEDQA, True),
        ("<think>Maybe the answer is B.</think>\n\nThe answer is A.", "A", MEDQA, True),
        ("<think>Maybe the answer is B.</think>\n\nThe answer is A.", "B", MEDQA, False),
        ("Step 2: The answer is 125 mg.", "25 mg", None, False),
        ("Step 2: The answer is 25 mg.", "25 mg", None, True),
        ("Step 2: I need more information.", "C", MEDQA, False),
    ],
)
def test_extract_then_judge_the_formats_a_careful_grader_reads(output, gold, options, expected):
    assert is_correct(extract_answer(output), gold, options) is expected
