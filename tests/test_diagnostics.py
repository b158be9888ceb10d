"""PRM diagnostics on hand-made numbers: ECE, first-error F1, abstention by vote margin."""

import pytest

from medsss.evaluation.diagnostics import (
    abstention_curve,
    calibration,
    first_drop,
    first_error_f1,
    vote_margin,
)


def test_calibration_table_and_ece():
    scores = [0.05, 0.15, 0.95, 0.85]
    values = [0.0, 0.5, 1.0, 1.0]
    table, ece = calibration(scores, values, bins=2)
    assert [(r["bin"], r["count"]) for r in table] == [("0.0-0.5", 2), ("0.5-1.0", 2)]
    # bin 0: |0.10 - 0.25| = 0.15;  bin 1: |0.90 - 1.00| = 0.10;  ECE = 0.5 * 0.15 + 0.5 * 0.10
    assert ece == pytest.approx(0.125)


def test_perfect_calibration_has_zero_ece():
    assert calibration([0.3, 0.7], [0.3, 0.7], bins=10)[1] == pytest.approx(0.0)


def test_first_drop_is_the_first_step_whose_value_falls():
    assert first_drop([0.4, 0.6, 0.3, 0.1]) == 2
    assert first_drop([0.4, 0.6, 0.6, 1.0]) is None


def test_first_error_f1_harmonic_mean_of_both_accuracies():
    chains = [
        ([0.5, 0.6, 0.2], [0.9, 0.1]),  # error at 2, flagged at 2: hit
        ([0.5, 0.3, 0.2], [0.8, 0.2]),  # error at 1, flagged at 2: miss
        ([0.5, 0.6, 1.0], [0.7, 0.9]),  # no error, nothing flagged: hit
    ]
    result = first_error_f1(chains)
    assert (result["error_accuracy"], result["correct_accuracy"]) == (0.5, 1.0)
    assert result["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_vote_margin_and_abstention_keep_the_most_confident_items():
    sure = {"gold": "A", "candidates": [{"answer": "A", "step_scores": [0.9]}, {"answer": "A", "step_scores": [0.8]},
                                        {"answer": "B", "step_scores": [0.1]}]}
    torn = {"gold": "A", "candidates": [{"answer": "B", "step_scores": [0.5]}, {"answer": "A", "step_scores": [0.4]}]}
    assert vote_margin(sure, "min") == ("A", pytest.approx((1.7 - 0.1) / 1.8))
    assert vote_margin(torn, "min") == ("B", pytest.approx(0.1 / 0.9))
    curve = abstention_curve([torn, sure], coverages=(0.5, 1.0))
    assert curve == [{"coverage": 0.5, "answered": 1, "accuracy": 1.0},
                     {"coverage": 1.0, "answered": 2, "accuracy": 0.5}]


def cands(*pairs):
    return [{"answer": a, "step_scores": s} for a, s in pairs]


def test_vote_margin_breaks_ties_like_pvs_select():
    # S(B) = 0.25 + 0.25 = S(A) = 0.5: the tie goes to A, whose best candidate (0.5) beats B's (0.25);
    # first appearance (B) decides only after that. select(..., "pvs") picks the same answer.
    from medsss.decoding import select

    item = {"gold": "A", "candidates": cands(("B", [0.25]), ("B", [0.25]), ("A", [0.5]))}
    assert vote_margin(item, "min") == ("A", 0.0)
    assert select([(c["answer"], c["step_scores"]) for c in item["candidates"]], "pvs") == 2
    assert abstention_curve([item], coverages=(1.0,))[0]["accuracy"] == 1.0


def test_abstention_scores_answers_with_the_items_options():
    item = {"gold": "A", "kind": "choice", "options": {"A": "yes", "B": "no", "C": "maybe"},
            "candidates": cands(("yes", [0.9]), ("no", [0.2]))}
    assert vote_margin(item, "min") == ("yes", pytest.approx(0.7 / 1.1))
    assert abstention_curve([item], coverages=(1.0,))[0]["accuracy"] == 1.0


def test_free_text_votes_by_text_in_the_margin():
    # "a high dose" and "A low dose" used to pool as option A (1.0 > 0.8)
    item = {"gold": "25 mg", "kind": "free_text",
            "candidates": cands(("a high dose", [0.5]), ("A low dose", [0.5]), ("25 mg", [0.8]))}
    assert vote_margin(item, "min") == ("25 mg", pytest.approx(0.3 / 1.8))
