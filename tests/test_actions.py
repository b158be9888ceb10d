"""Which action expands a leaf, and the rollout count formula."""

import pytest
from helpers import build_tree, by_text

from medsss.search.actions import Action, choose_action, rollout_count

RULES = {"bear_ratio": 0.9, "low_gate": 0.5, "refine_limit": 1}


def leaf_with_rollouts(correct: int, total: int):
    tree = build_tree({"n": {"parent": "root", "visits": 1, "value": correct / total,
                             "rollout_correct": correct, "rollout_total": total}})
    return tree, by_text(tree, "n")


def test_the_root_gets_reason_children():
    tree = build_tree({})
    assert choose_action(tree, tree.root, **RULES) is Action.REASON


@pytest.mark.parametrize("correct, total, action", [
    (9, 10, Action.FINISH),   # 0.9 >= bear_ratio
    (5, 5, Action.FINISH),
    (8, 10, Action.REASON),   # 0.8 < 0.9
    (0, 5, Action.REASON),
])
def test_finish_at_or_above_bear_ratio_else_reason(correct, total, action):
    tree, node = leaf_with_rollouts(correct, total)
    assert choose_action(tree, node, **RULES) is action


def test_a_wrong_finish_with_quota_gets_a_reflect_child():
    tree = build_tree({"f": {"parent": "root", "kind": "finish", "visits": 1, "value": 0.0, "correct": False}})
    assert choose_action(tree, by_text(tree, "f"), **RULES) is Action.REFLECT


def test_no_reflection_once_the_path_used_its_quota():
    tree = build_tree({
        "r": {"parent": "root", "kind": "reflect", "reflection": True, "visits": 1, "value": 0.3},
        "f": {"parent": "r", "kind": "finish", "visits": 1, "value": 0.0, "correct": False},
    })
    assert choose_action(tree, by_text(tree, "f"), **RULES) is None


def test_a_reflection_that_answered_still_counts_against_the_quota():
    tree = build_tree({
        "f": {"parent": "root", "kind": "finish", "reflection": True, "visits": 1, "value": 0.0, "correct": False},
    })
    assert choose_action(tree, by_text(tree, "f"), **RULES) is None


def test_correct_finishes_and_zero_quota_are_terminal():
    tree = build_tree({
        "ok": {"parent": "root", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},
        "bad": {"parent": "root", "kind": "finish", "visits": 1, "value": 0.0, "correct": False},
    })
    assert choose_action(tree, by_text(tree, "ok"), **RULES) is None
    assert choose_action(tree, by_text(tree, "bad"), **{**RULES, "refine_limit": 0}) is None


def test_max_depth_finishes_instead_of_growing_deeper():
    tree = build_tree({"a": {"parent": "root", "visits": 1, "value": 0.0, "rollout_total": 4},
                       "b": {"parent": "a", "visits": 1, "value": 0.0, "rollout_total": 4}})
    assert choose_action(tree, by_text(tree, "a"), **RULES, max_depth=3) is Action.REASON
    assert choose_action(tree, by_text(tree, "b"), **RULES, max_depth=3) is Action.FINISH


@pytest.mark.parametrize("depth, expected", [(0, 20), (1, 10), (2, 6), (3, 5), (4, 5), (9, 5)])
def test_rollout_count_is_simulations_over_depth_plus_one_floored_at_min(depth, expected):
    assert rollout_count(depth, simulations=20, min_rollouts=5) == expected


def test_rollout_count_small_settings():
    assert [rollout_count(d, simulations=4, min_rollouts=2) for d in range(4)] == [4, 2, 2, 2]
