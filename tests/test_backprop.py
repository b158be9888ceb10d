"""Back-propagation: exact values under the comp and mean rules on hand-built trees, one walk up
per new node in creation order."""

import pytest
from helpers import build_tree, by_text

from medsss.search.backprop import backpropagate


def tree_after_expanding_x():
    # x was expanded: its two new children y (value 1) and z (value 0) were just evaluated and are
    # not counted yet (visits 0) until their own walk up.
    return build_tree({
        "root": {"visits": 2, "value": 0.4},
        "x": {"parent": "root", "visits": 1, "value": 0.6},
        "w": {"parent": "root", "visits": 1, "value": 0.2},
        "y": {"parent": "x", "visits": 0, "value": 1.0},
        "z": {"parent": "x", "visits": 0, "value": 0.0},
    })


def commit(tree, name, rule):
    node = by_text(tree, name)
    node.visits = 1
    backpropagate(tree, node, rule)


def test_comp_rule_walks_up_once_per_new_node_in_creation_order():
    tree = tree_after_expanding_x()
    x = by_text(tree, "x")
    commit(tree, "y", "comp")
    # x: only y is counted yet: (0.6 + 1.0) / 2 = 0.8; root: x (N=2, 0.8), w (N=1, 0.2): mean 0.6
    assert (x.visits, x.value) == (2, pytest.approx(0.8))
    assert (tree.root.visits, tree.root.value) == (3, pytest.approx((0.4 + 0.6) / 2))  # 0.5
    commit(tree, "z", "comp")
    # x: (0.8 + (1.0 + 0.0) / 2) / 2 = 0.65; root: mean (3 * 0.65 + 0.2) / 4 = 0.5375
    assert (x.visits, x.value) == (3, pytest.approx(0.65))
    assert (tree.root.visits, tree.root.value) == (4, pytest.approx((0.5 + 0.5375) / 2))  # 0.51875
    assert (by_text(tree, "y").value, by_text(tree, "w").visits) == (1.0, 1)  # the new nodes keep their own


def test_mean_rule_takes_the_visit_weighted_mean_of_children_each_time():
    tree = tree_after_expanding_x()
    commit(tree, "y", "mean")
    assert by_text(tree, "x").value == pytest.approx(1.0)
    assert tree.root.value == pytest.approx((2 * 1.0 + 0.2) / 3)
    commit(tree, "z", "mean")
    assert by_text(tree, "x").value == pytest.approx(0.5)
    assert tree.root.value == pytest.approx((3 * 0.5 + 0.2) / 4)
    assert (by_text(tree, "x").visits, tree.root.visits) == (3, 4)


def test_every_ancestor_gains_one_visit_per_new_node_so_parents_cover_their_children():
    tree = tree_after_expanding_x()
    commit(tree, "y", "comp")
    commit(tree, "z", "comp")
    for node in tree.nodes:
        assert node.visits >= sum(c.visits for c in tree.children(node)), node.text


def test_a_never_evaluated_root_takes_its_first_childs_value_then_the_comp_rule():
    tree = build_tree({
        "a": {"parent": "root", "visits": 0, "value": 0.5},
        "b": {"parent": "root", "visits": 0, "value": 0.0},
        "c": {"parent": "root", "visits": 0, "value": 1.0},
    })
    commit(tree, "a", "comp")
    assert (tree.root.visits, tree.root.value) == (1, pytest.approx(0.5))
    commit(tree, "b", "comp")  # (0.5 + 0.25) / 2
    assert (tree.root.visits, tree.root.value) == (2, pytest.approx(0.375))
    commit(tree, "c", "comp")  # (0.375 + 0.5) / 2
    assert (tree.root.visits, tree.root.value) == (3, pytest.approx(0.4375))


def test_a_chain_updates_every_ancestor_once():
    tree = build_tree({
        "root": {"visits": 1, "value": 0.5},
        "m": {"parent": "root", "visits": 1, "value": 0.5},
        "f": {"parent": "m", "kind": "finish", "visits": 1, "value": 1.0, "correct": True},
    })
    backpropagate(tree, by_text(tree, "f"), "comp")
    assert (by_text(tree, "m").visits, by_text(tree, "m").value) == (2, pytest.approx(0.75))
    assert (tree.root.visits, tree.root.value) == (2, pytest.approx((0.5 + 0.75) / 2))
    assert by_text(tree, "f").visits == 1


def test_unknown_rule_is_an_error():
    tree = tree_after_expanding_x()
    with pytest.raises(ValueError, match="backprop"):
        backpropagate(tree, by_text(tree, "y"), "max")
