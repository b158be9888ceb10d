"""Back-propagation: exact values under the comp and mean rules on a hand-built tree."""

import pytest
from helpers import build_tree, by_text

from medsss.search.backprop import backpropagate


def tree_after_expanding_x():
    # x was expanded: its two new children y (value 1) and z (value 0) were just evaluated.
    return build_tree({
        "root": {"visits": 1, "value": 0.4},
        "x": {"parent": "root", "visits": 1, "value": 0.6},
        "w": {"parent": "root", "visits": 1, "value": 0.2},
        "y": {"parent": "x", "visits": 1, "value": 1.0},
        "z": {"parent": "x", "visits": 1, "value": 0.0},
    })


def test_comp_rule_averages_own_value_with_visit_weighted_children():
    tree = tree_after_expanding_x()
    backpropagate(tree, by_text(tree, "x"), "comp")
    x = by_text(tree, "x")
    assert (x.visits, x.value) == (2, pytest.approx((0.6 + 0.5) / 2))  # 0.55
    # root: children x (N=2, V=0.55) and w (N=1, V=0.2): mean = 1.3 / 3
    assert tree.root.visits == 2
    assert tree.root.value == pytest.approx((0.4 + 1.3 / 3) / 2)
    assert by_text(tree, "y").visits == 1 and by_text(tree, "w").value == 0.2  # others untouched


def test_mean_rule_takes_the_visit_weighted_mean_of_children():
    tree = tree_after_expanding_x()
    backpropagate(tree, by_text(tree, "x"), "mean")
    assert by_text(tree, "x").value == pytest.approx(0.5)
    assert tree.root.value == pytest.approx((2 * 0.5 + 0.2) / 3)
    assert (by_text(tree, "x").visits, tree.root.visits) == (2, 2)


def test_a_never_evaluated_root_takes_its_childrens_mean_under_comp():
    tree = build_tree({
        "a": {"parent": "root", "visits": 1, "value": 0.5},
        "b": {"parent": "root", "visits": 1, "value": 0.0},
        "c": {"parent": "root", "visits": 1, "value": 1.0},
    })
    backpropagate(tree, tree.root, "comp")
    assert (tree.root.visits, tree.root.value) == (1, pytest.approx(0.5))


def test_a_chain_updates_every_ancestor_once():
    tree = build_tree({
        "root": {"visits": 1, "value": 0.5},
        "m": {"parent": "root", "visits": 1, "value": 0.5},
        "f": {"parent": "m", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},
    })
    backpropagate(tree, by_text(tree, "m"), "comp")
    assert by_text(tree, "m").value == pytest.approx(0.75)
    assert tree.root.value == pytest.approx((0.5 + 0.75) / 2)


def test_unknown_rule_is_an_error():
    tree = tree_after_expanding_x()
    with pytest.raises(ValueError, match="backprop"):
        backpropagate(tree, by_text(tree, "x"), "max")
