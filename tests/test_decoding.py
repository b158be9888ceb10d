"""Aggregation and selection on hand-written candidate sets, ties and no-answer candidates included."""

import math

import pytest

from medsss.decoding import aggregate, answer_key, rank_answers, select

SCORES = [0.9, 0.4, 0.8]


@pytest.mark.parametrize("how, expected", [
    ("min", 0.4), ("mean", 0.7), ("prod", 0.9 * 0.4 * 0.8),
    ("gmean", (0.9 * 0.4 * 0.8) ** (1 / 3)), ("last", 0.8),
])
def test_aggregations(how, expected):
    assert aggregate(SCORES, how) == pytest.approx(expected)


def test_single_step_candidates_aggregate_to_that_step():
    assert {how: aggregate([0.3], how) for how in ("min", "mean", "prod", "gmean", "last")} == pytest.approx(
        {"min": 0.3, "mean": 0.3, "prod": 0.3, "gmean": 0.3, "last": 0.3})


def test_gmean_of_a_zero_score_is_zero_and_empty_is_an_error():
    assert aggregate([0.0, 0.9], "gmean") == 0.0
    with pytest.raises(ValueError, match="at least one scored step"):
        aggregate([], "min")
    with pytest.raises(ValueError, match="aggregation"):
        aggregate([0.5], "max")


def test_answer_keys_group_letters_and_normalise_text():
    assert {answer_key(a) for a in ("C", "(C)", "C. Acute pancreatitis", "**c**", "C)")} == {"C"}
    assert answer_key("Acute pancreatitis") == "acute pancreatitis"
    assert answer_key("10  mg") == "10 mg"


# index:        0              1              2              3              4
CANDIDATES = [("B", [0.2]), ("A", [0.9, 0.3]), ("B", [0.6]), (None, [1.0]), ("A", [0.5, 0.5])]


def test_self_consistency_takes_the_majority_and_its_first_candidate():
    assert select([("B", [0.1]), ("A", [0.9]), ("A", [0.8]), ("B", [0.2]), ("A", [0.3])], "sc") == 1


def test_self_consistency_tie_goes_to_the_answer_that_appears_first():
    assert select(CANDIDATES, "sc") == 0  # A and B two votes each; B appears first


def test_best_of_n_takes_the_best_aggregate_and_never_a_no_answer_candidate():
    # min: 0.2, 0.3, 0.6, (none), 0.5 -> index 2; the unanswered 1.0 is ignored
    assert select(CANDIDATES, "bon", "min") == 2
    # last: 0.2, 0.3, 0.6, -, 0.5 -> 2;  mean: 0.2, 0.6, 0.6, -, 0.5 -> tie 1 and 2 -> lower index 1
    assert select(CANDIDATES, "bon", "mean") == 1


def test_pvs_sums_scores_per_answer_and_returns_its_best_candidate():
    # min: S(B) = 0.2 + 0.6 = 0.8; S(A) = 0.3 + 0.5 = 0.8 -> tie; best single: B 0.6 > A 0.5 -> B -> index 2
    assert select(CANDIDATES, "pvs", "min") == 2
    # mean: S(B) = 0.8; S(A) = 0.6 + 0.5 = 1.1 -> A; its best candidate 1 (0.6)
    assert select(CANDIDATES, "pvs", "mean") == 1


def test_vote_mean_divides_by_the_number_of_votes():
    cands = [("A", [0.9]), ("B", [0.5]), ("B", [0.5]), ("B", [0.5])]
    assert select(cands, "pvs") == 1  # S(B) = 1.5 > 0.9
    assert select(cands, "vote_mean") == 0  # 0.9 > 0.5


def test_candidate_ties_within_an_answer_go_to_the_lower_index():
    assert select([("C", [0.7]), ("C", [0.7])], "pvs") == 0


def test_answer_ties_with_equal_best_candidates_go_to_the_first_answer():
    assert select([("D", [0.5]), ("C", [0.5])], "pvs") == 0


def test_no_answers_means_no_choice():
    assert all(select([(None, [0.9]), ("", [0.8])], rule) is None
               for rule in ("greedy", "sc", "bon", "pvs", "vote_mean"))


def test_greedy_is_the_first_candidate_if_it_answered():
    assert select([("A", [0.1]), ("B", [0.9])], "greedy") == 0
    assert select([(None, [0.1]), ("B", [0.9])], "greedy") is None


def test_letter_variants_vote_together():
    assert select([("B", [0.9]), ("C. x", [0.1]), ("(C)", [0.1])], "sc") == 1


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="selection"):
        select([("A", [0.5])], "beam")


def test_gmean_matches_math():
    assert aggregate([0.25, 1.0], "gmean") == pytest.approx(math.sqrt(0.25))


# --- answer keys by item kind (issue 9 point 4) ------------------------------------------------

def test_free_text_answers_vote_by_their_text_never_by_a_leading_one_letter_word():
    assert answer_key("a high dose", choice=False) == "a high dose"
    assert answer_key("A  low dose.", choice=False) == "a low dose"
    assert answer_key("A", choice=False) == "a"


def test_free_text_items_group_normalised_text_under_sc_and_pvs():
    # "a high dose", "A low dose" and "a low dose" all read as option A before; as text, the two
    # spellings of "a low dose" form the majority and the larger vote sum.
    cands = [("a high dose", [0.9]), ("A low dose", [0.5]), ("a low dose.", [0.5])]
    assert select(cands, "sc", choice=False) == 1
    assert select(cands, "pvs", choice=False) == 1  # S(low) = 1.0 > S(high) = 0.9


def test_choice_items_never_read_an_english_article_as_option_a():
    assert answer_key("a case of pneumonia") == "a case of pneumonia"


def test_choice_items_vote_by_the_option_an_answer_names_its_text_included():
    options = {"A": "yes", "B": "no", "C": "maybe"}
    assert answer_key("yes", options=options) == "A"
    # "yes" and "(A)" are two votes for A; "no" one vote for B
    assert select([("no", [0.3]), ("yes", [0.2]), ("(A)", [0.2])], "sc", options=options) == 1


def test_a_hedge_naming_two_options_is_its_own_vote_not_the_first_options():
    assert answer_key("B or A") == "b or a"
    # B alone has one vote; the hedge does not join it, so the tie goes to the first answer, the hedge.
    assert select([("B or A", [0.9]), ("B", [0.1])], "sc") == 0
    assert select([("B or A", [0.9]), ("B", [0.1]), ("B", [0.1])], "sc") == 1


def test_rank_answers_orders_by_vote_sum_then_best_candidate_then_first_appearance():
    cands = [("B", [0.25]), ("B", [0.25]), ("A", [0.5]), ("C", [0.1])]
    ranked = rank_answers(cands, "min")
    assert [(v.key, v.strength, v.best) for v in ranked] == [("A", 0.5, 2), ("B", 0.5, 0), ("C", 0.1, 3)]
    assert select(cands, "pvs") == 2


def test_digit_labels_vote_together_on_choice_items():
    # HealthFact-style labels: "1. true" and "(1)" are two votes for "1", against one for "0"
    assert {answer_key(a) for a in ("1", "1. true", "(1)")} == {"1"}
    assert select([("0", [0.9]), ("1. true", [0.1]), ("(1)", [0.1])], "sc") == 1
    assert answer_key("10 mg") == "10 mg"  # a number is not a digit label
