"""UCT selection: which leaf the next MCTS iteration expands."""

from __future__ import annotations

import math

from medsss.search.tree import Node, Tree


def uct_score(child: Node, parent_visits: int, c: float, unvisited_ucb: float) -> float:
    """``V + c * sqrt(ln N(parent) / N(child))``; an unvisited child scores ``unvisited_ucb``."""
    if child.visits == 0:
        return unvisited_ucb
    return child.value + c * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)


def selectable(child: Node) -> bool:
    """Correct answers and exhausted subtrees are never selected again."""
    return not child.completed and not (child.is_finish and child.correct)


def select_child(tree: Tree, node: Node, c: float, unvisited_ucb: float) -> Node | None:
    """The selectable child with the highest UCT score (the first one on ties), or None."""
    best, best_score = None, -math.inf
    for child in tree.children(node):
        if not selectable(child):
            continue
        score = uct_score(child, node.visits, c, unvisited_ucb)
        if score > best_score:
            best, best_score = child, score
    return best


def mark_completed(tree: Tree, node: Node) -> None:
    """Mark ``node`` exhausted, and every ancestor whose children are now all unselectable."""
    node.completed = True
    for ancestor in tree.ancestors(node):
        if ancestor.completed or any(selectable(c) for c in tree.children(ancestor)):
            break
        ancestor.completed = True


def select_leaf(tree: Tree, c: float, unvisited_ucb: float) -> Node | None:
    """Descend from the root by UCT to a leaf; None when nothing in the tree is selectable.

    A node whose children are all unselectable is marked completed on the way, and the descent
    starts again from the root.
    """
    while not tree.root.completed:
        node = tree.root
        while node.children:
            child = select_child(tree, node, c, unvisited_ucb)
            if child is None:
                mark_completed(tree, node)
                break
            node = child
        else:
            return node
    return None
