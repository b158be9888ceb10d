"""UCT selection on hand-built trees: the exact child UCT picks, and what it never picks."""

import math

import pytest
from helpers import build_tree, by_text

from medsss.search.uct import select_child, select_leaf, uct_score

C, UNVISITED = 2.0, 5.0


def test_uct_score_is_value_plus_exploration_bonus():
    tree = build_tree({"a": {"parent": "root", "visits": 2, "value": 0.5}})
    assert uct_score(by_text(tree, "a"), parent_visits=4, c=C, unvisited_ucb=UNVISITED) == pytest.approx(
        0.5 + 2 * math.sqrt(math.log(4) / 2)
    )


def test_unvisited_child_scores_unvisited_ucb():
    tree = build_tree({"a": {"parent": "root", "visits": 0, "value": 0.0}})
    assert uct_score(by_text(tree, "a"), parent_visits=4, c=C, unvisited_ucb=UNVISITED) == 5.0


def test_selects_the_child_with_highest_uct_not_highest_value():
    # a: 0.5 + 2*sqrt(ln4/2) = 2.165;  b: 0.2 + 2*sqrt(ln4/1) = 2.555;  c: 0.45 + 2*sqrt(ln4/3) = 1.811
    tree = build_tree({
        "root": {"visits": 6},
        "a": {"parent": "root", "visits": 2, "value": 0.5},
        "b": {"parent": "root", "visits": 1, "value": 0.2},
        "c": {"parent": "root", "visits": 3, "value": 0.45},
    })
    assert select_child(tree, tree.root, C, UNVISITED).text == "b"


def test_more_visits_shrink_the_bonus_so_the_better_value_wins():
    tree = build_tree({
        "root": {"visits": 20},
        "a": {"parent": "root", "visits": 10, "value": 0.8},
        "b": {"parent": "root", "visits": 10, "value": 0.3},
    })
    assert select_child(tree, tree.root, C, UNVISITED).text == "a"


def test_correct_finish_and_completed_children_are_skipped():
    tree = build_tree({
        "root": {"visits": 4},
        "right": {"parent": "root", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},
        "done": {"parent": "root", "visits": 1, "value": 0.9, "completed": True},
        "open": {"parent": "root", "visits": 2, "value": 0.1},
    })
    assert select_child(tree, tree.root, C, UNVISITED).text == "open"


def test_unvisited_child_beats_visited_siblings_and_ties_go_to_the_first():
    tree = build_tree({
        "root": {"visits": 3},
        "seen": {"parent": "root", "visits": 1, "value": 1.0},  # 1 + 2*sqrt(ln3) = 3.096
        "new1": {"parent": "root", "visits": 0},
        "new2": {"parent": "root", "visits": 0},
    })
    assert select_child(tree, tree.root, C, UNVISITED).text == "new1"


def test_select_leaf_descends_by_uct_to_a_leaf():
    tree = build_tree({
        "root": {"visits": 4},
        "a": {"parent": "root", "visits": 2, "value": 0.9},  # 0.9 + 2*sqrt(ln4/2) = 2.565
        "b": {"parent": "root", "visits": 1, "value": 0.0},  # 0.0 + 2*sqrt(ln4/1) = 2.355
        "a1": {"parent": "a", "visits": 1, "value": 0.2},  # 0.2 + 2*sqrt(ln2) = 1.865
        "a2": {"parent": "a", "visits": 1, "value": 0.7},  # 0.7 + 2*sqrt(ln2) = 2.365
    })
    assert select_leaf(tree, C, UNVISITED).text == "a2"


def test_a_dead_end_is_marked_completed_and_the_descent_restarts():
    tree = build_tree({
        "root": {"visits": 4},
        "a": {"parent": "root", "visits": 2, "value": 0.9},  # picked first (2.565 > 2.355) ...
        "b": {"parent": "root", "visits": 1, "value": 0.0},
        "a1": {"parent": "a", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},  # ... a dead end
    })
    assert select_leaf(tree, C, UNVISITED).text == "b"
    assert by_text(tree, "a").completed


def test_nothing_selectable_returns_none_and_completes_the_root():
    tree = build_tree({
        "root": {"visits": 2},
        "a": {"parent": "root", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},
        "b": {"parent": "root", "kind": "finish", "visits": 1, "value": 0.0, "correct": False, "completed": True},
    })
    assert select_leaf(tree, C, UNVISITED) is None
    assert tree.root.completed
