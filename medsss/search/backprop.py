"""Back-propagation of node values after an expansion."""

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


def backpropagate(tree: Tree, start: Node, rule: str = "comp") -> None:
    """Update ``start`` and every ancestor after new children were evaluated below ``start``.

    Each node on the way gets one more visit and a new value from its children:

    - ``comp``: ``V <- (V + mean_children) / 2`` (a node never evaluated takes ``mean_children``);
    - ``mean``: ``V <- mean_children``.
    """
    if rule not in BACKPROP_RULES:
        raise ValueError(f"search.backprop '{rule}' must be one of {BACKPROP_RULES}")
    node: Node | None = start
    while node is not None:
        mean = children_mean(tree, node)
        if mean is not None:
            if rule == "comp" and node.visits > 0:
                node.value = (node.value + mean) / 2
            else:
                node.value = mean
        node.visits += 1
        node = tree.parent(node)
