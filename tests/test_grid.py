"""The offline grid on a hand-made cache: exact accuracies, pass@k, subsampling."""

import pytest

from medsss.evaluation.grid import accuracy_grid, greedy_accuracy, pass_at_k, powers_of_two


def item(pid, gold, candidates, greedy=None):
    row = {"id": pid, "gold": gold,
           "candidates": [{"answer": a, "step_scores": s} for a, s in candidates]}
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
    assert cell(rows, "sc", "-", 4)["ci_low"] == cell(rows, "sc", "-", 4)["ci_high"] == 0.5  # one draw at full n


def test_greedy_and_pass_at_k():
    assert greedy_accuracy(CACHE) == 0.5
    # q1: 1 of 4 right, q2: 2 of 4 right.  pass@1 = (1/4 + 2/4) / 2;  pass@2 = ((1 - 3/6) + (1 - 1/6)) / 2
    assert pass_at_k(CACHE, 1) == pytest.approx(0.375)
    assert pass_at_k(CACHE, 2) == pytest.approx((0.5 + 5 / 6) / 2)
    assert pass_at_k(CACHE, 4) == 1.0


def test_subsampled_cells_report_an_interval_around_the_mean():
    rows = accuracy_grid(CACHE, ["sc"], ["min"], ns=[1, 2], rounds=50)
    for r in rows:
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    assert [r["n"] for r in rows] == [1, 2]


def test_powers_of_two_up_to_n():
    assert powers_of_two(16) == [1, 2, 4, 8, 16] and powers_of_two(6) == [1, 2, 4]
