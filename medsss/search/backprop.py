"""Back-propagation of a new node's evaluation to its ancestors (see docs/method.md#back-propagation)."""

from __future__ import annotations

from medsss.search.tree import Node, Tree

BACKPROP_RULES = ("comp", "mean")


def children_mean(tree: Tree, node: Node) -> float | None:
    """Visit-weighted mean value of the visited children: ``sum(N_c * V_c) / sum(N_c)``."""
    children = [c for c in tree.children(node) if c.visits > 0]
    total = sum(c.visits for c in children)
    if total == 0:
        return None
    return sum(c.visits * c.value for c in children) / total


def backpropagate(tree: Tree, new_node: Node, rule: str = "comp") -> None:
    """Walk up from ``new_node``, which was just evaluated, updating every ancestor.

    Called once per new node, in creation order, so an ancestor gains one visit per node created
    below it and ``N(node) >= sum of its children's N`` holds everywhere. Each ancestor on the way
    gets one more visit and a new value from its children:

    - ``comp``: ``V <- (V + mean_children) / 2`` (a node never evaluated, the root, takes
      ``mean_children``);
    - ``mean``: ``V <- mean_children``.

    ``new_node`` itself keeps its own evaluation (a leaf's value is what it was evaluated at).
    """
    if rule not in BACKPROP_RULES:
        raise ValueError(f"search.backprop '{rule}' must be one of {BACKPROP_RULES}")
    for ancestor in tree.ancestors(new_node):
        mean = children_mean(tree, ancestor)
        if mean is not None:
            if rule == "comp" and ancestor.visits > 0:
                ancestor.value = (ancestor.value + mean) / 2
            else:
                ancestor.value = mean
        ancestor.visits += 1
