"""The offline grid on a hand-made cache: exact accuracies, item-level bootstrap intervals, candidate
subsamples, pass@k, and item kinds (free text votes by text; choice answers by the option named)."""

import numpy as np
import pytest

from medsss.evaluation.grid import (
    accuracy_grid,
    bootstrap_means,
    greedy_accuracy,
    grid_ns,
    item_bootstrap,
    macro_bootstrap,
    pass_at_k,
    powers_of_two,
    unparseable_share,
)


def item(pid, gold, candidates, greedy=None, **extra):
    row = {"id": pid, "gold": gold,
           "candidates": [{"answer": a, "step_scores": s} for a, s in candidates], **extra}
    if greedy is not None:
        row["greedy"] = {"answer": greedy}
    return row


# Item 1: the majority (B, wrong) loses to PRM-weighted A (right) under bon and pvs.
# Item 2: the majority (C, right) wins under sc and pvs; bon and vote_mean pick the single
# confident wrong D; the unanswered 0.99 never counts.
CACHE = [
    item("q1", "A", [("B", [0.2]), ("B", [0.3]), ("A", [0.9]), ("B", [0.1])], greedy="B"),
    item("q2", "C", [("C", [0.5]), ("C", [0.5]), ("D", [0.95]), (None, [0.99])], greedy="C"),
]


def cell(rows, selection, aggregation, n):
    return next(r for r in rows if (r["selection"], r["aggregation"], r["n"]) == (selection, aggregation, n))


def test_full_n_accuracies_are_exact():
    rows = accuracy_grid(CACHE, ["sc", "bon", "pvs", "vote_mean"], ["min", "last"])
    assert cell(rows, "sc", "-", 4)["accuracy"] == 0.5          # q1 B (wrong), q2 C (right)
    assert cell(rows, "bon", "min", 4)["accuracy"] == 0.5       # q1 A 0.9 (right), q2 D 0.95 (wrong)
    assert cell(rows, "pvs", "min", 4)["accuracy"] == 1.0       # q1 A 0.9 > B 0.6; q2 C 1.0 > D 0.95
    assert cell(rows, "vote_mean", "min", 4)["accuracy"] == 0.5  # q1 A 0.9 > B 0.2; q2 D 0.95 > C 0.5


def test_full_n_has_no_candidate_spread_but_an_item_bootstrap_interval():
    sc = cell(accuracy_grid(CACHE, ["sc"], ["min"], bootstrap=1000), "sc", "-", 4)
    # one draw at full N: the candidate-subsample spread is a point ...
    assert sc["draws"] == 1 and sc["subsample_low"] == sc["subsample_high"] == 0.5
    # ... while two items (one right, one wrong) resampled with replacement give means 0, 0.5, 1
    assert (sc["ci_low"], sc["ci_high"]) == (0.0, 1.0)


def test_the_item_bootstrap_narrows_with_more_items():
    def alternating(count):
        return [item(f"q{i}", "A", [("A" if i % 2 else "B", [0.5])]) for i in range(count)]

    few = cell(accuracy_grid(alternating(4), ["sc"], ["min"]), "sc", "-", 1)
    many = cell(accuracy_grid(alternating(400), ["sc"], ["min"]), "sc", "-", 1)
    assert few["accuracy"] == many["accuracy"] == 0.5
    assert many["ci_high"] - many["ci_low"] < 0.15 < few["ci_high"] - few["ci_low"]


def test_item_bootstrap_resamples_items_with_replacement_seeded():
    values = [1.0, 0.0, 0.0, 1.0, 1.0]
    picks = np.random.default_rng(7).integers(0, 5, size=(300, 5))
    expected = np.percentile(np.asarray(values)[picks].mean(axis=1), [2.5, 97.5])
    assert item_bootstrap(values, 300, seed=7) == pytest.approx(tuple(expected))
    assert item_bootstrap(values, 300, seed=7) == item_bootstrap(values, 300, seed=7)
    assert item_bootstrap([1.0, 1.0, 1.0], 50) == (1.0, 1.0)
    with pytest.raises(ValueError, match="no items"):
        bootstrap_means([], 10)
    with pytest.raises(ValueError, match="rounds"):
        bootstrap_means([1.0], 0)


def test_macro_bootstrap_averages_benchmark_means():
    # each benchmark is all-right or all-wrong: every resample averages to exactly 0.5
    assert macro_bootstrap([[1.0, 1.0], [0.0, 0.0, 0.0]], 100) == (0.5, 0.5)


def test_full_n_decides_ties_in_sampled_order_as_predictions_do():
    # A 1-1 tie under sc goes to the answer appearing first: B in sampled order (wrong). The seeded
    # permutation that used to reorder full-N draws put A first for this id.
    tie = [item("q1", "A", [("B", [0.5]), ("A", [0.5])])]
    assert cell(accuracy_grid(tie, ["sc"], ["min"]), "sc", "-", 2)["accuracy"] == 0.0


def test_the_first_draw_below_full_n_is_the_first_candidates():
    rows = accuracy_grid([item("q1", "A", [("A", [0.5]), ("B", [0.5]), ("B", [0.5]), ("B", [0.5])])],
                         ["sc"], ["min"], ns=[1], rounds=1)
    assert cell(rows, "sc", "-", 1)["accuracy"] == 1.0  # candidate 0 is the one draw


def test_subsampled_cells_report_the_spread_over_draws_and_the_interval_over_items():
    # Two items always right, one right for exactly one of its two candidates. A draw of N = 1 is
    # right on 2 or 3 items, so every draw's accuracy is 2/3 or 1: that is the subsample spread.
    # The item bootstrap resamples the per-item accuracies (1, 1, and h's share of right draws):
    # the resample of h three times (1 in 27) is its low end. The accuracy is the draws' mean,
    # 5/6 when h's candidates are drawn uniformly.
    sure = [("A", [0.5]), ("A", [0.5])]
    cache = [item("r1", "A", sure), item("r2", "A", sure), item("h", "A", [("A", [0.5]), ("B", [0.5])])]
    [row] = accuracy_grid(cache, ["sc"], ["min"], ns=[1], rounds=2000, bootstrap=1000)
    assert (row["n"], row["draws"]) == (1, 2000)
    assert (row["subsample_low"], row["subsample_high"]) == (pytest.approx(2 / 3), 1.0)
    assert row["accuracy"] == pytest.approx(5 / 6, abs=0.01)
    h_accuracy = 3 * row["accuracy"] - 2  # the share of draws that picked h's right candidate
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(h_accuracy), 1.0)
    # Draw 0 is h's first candidate (right); the other draws are seeded: the same every time.
    assert accuracy_grid(cache, ["sc"], ["min"], ns=[1], rounds=1)[0]["accuracy"] == 1.0
    assert accuracy_grid(cache, ["sc"], ["min"], ns=[1], rounds=2000, bootstrap=1000) == [row]


def test_grid_n_includes_the_full_count():
    assert grid_ns(6) == [1, 2, 4, 6] and grid_ns(4) == [1, 2, 4] and grid_ns(0) == []
    assert [r["n"] for r in accuracy_grid([item("q", "A", [("A", [0.5])] * 3)], ["sc"], ["min"])] == [1, 2, 3]


def test_greedy_and_pass_at_k():
    assert greedy_accuracy(CACHE) == 0.5
    # q1: 1 of 4 right, q2: 2 of 4 right.  pass@1 = (1/4 + 2/4) / 2;  pass@2 = ((1 - 3/6) + (1 - 1/6)) / 2
    assert pass_at_k(CACHE, 1) == pytest.approx(0.375)
    assert pass_at_k(CACHE, 2) == pytest.approx((0.5 + 5 / 6) / 2)
    assert pass_at_k(CACHE, 4) == 1.0  # k = n: every candidate drawn, both items have a right one


def test_pass_at_k_beyond_the_candidates_is_an_error_never_one():
    wrong = [item("q9", "A", [("B", [0.5]), ("C", [0.5])])]
    assert pass_at_k(wrong, 2) == 0.0
    with pytest.raises(ValueError, match="item 'q9' has 2 candidate"):
        pass_at_k(wrong, 3)
    with pytest.raises(ValueError, match="item 'q0' has 0 candidate"):
        pass_at_k([item("q0", "A", [])], 1)


def test_free_text_items_vote_by_text_in_the_grid():
    # "a high dose" and "A low dose" were both votes for option A (S = 1.0 > 0.8): wrong.
    # As free text they are two votes of 0.5 each; "25 mg" (0.8) wins and is right.
    dose = item("d1", "25 mg", [("a high dose", [0.5]), ("A low dose", [0.5]), ("25 mg", [0.8])],
                kind="free_text")
    assert cell(accuracy_grid([dose], ["pvs"], ["min"], ns=[3]), "pvs", "min", 3)["accuracy"] == 1.0
    older_row = {k: v for k, v in dose.items() if k != "kind"}  # cache rows before kind was stored
    assert cell(accuracy_grid([older_row], ["pvs"], ["min"], ns=[3]), "pvs", "min", 3)["accuracy"] == 1.0


def test_choice_items_are_scored_with_their_options():
    yes = item("p1", "A", [("yes", [0.9])], kind="choice", options={"A": "yes", "B": "no", "C": "maybe"})
    assert cell(accuracy_grid([yes], ["sc"], ["min"]), "sc", "-", 1)["accuracy"] == 1.0
    assert pass_at_k([yes], 1) == 1.0


def test_unparseable_share_counts_candidates_without_an_answer():
    assert unparseable_share(CACHE) == 1 / 8
    assert unparseable_share([]) is None


def test_powers_of_two_up_to_n():
    assert powers_of_two(16) == [1, 2, 4, 8, 16] and powers_of_two(6) == [1, 2, 4]
