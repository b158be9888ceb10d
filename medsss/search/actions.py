"""Which action expands a selected leaf, and how many rollouts value a new node."""

from __future__ import annotations

import math
from enum import Enum

from medsss.search.tree import Node, Tree


class Action(str, Enum):
    REASON = "reason"  # sample `width` single next steps
    FINISH = "finish"  # complete the whole solution from here to an answer
    REFLECT = "reflect"  # revise a wrong answer with a step that opens "But wait, "


def choose_action(
    tree: Tree,
    node: Node,
    *,
    bear_ratio: float,
    low_gate: float,
    refine_limit: int,
    max_depth: int | None = None,
) -> Action | None:
    """The action for a selected leaf; None when the leaf is terminal.

    - a finish node that is wrong (value < ``low_gate``) and whose path has reflection quota
      left gets a Reflect child; any other finish node is terminal;
    - a node whose rollout accuracy reaches ``bear_ratio`` is confident enough to be finished;
    - a node at ``max_depth - 1`` is finished rather than grown deeper;
    - anything else (the root included) gets Reason children.
    """
    if node.is_finish:
        return Action.REFLECT if reflect_eligible(tree, node, low_gate, refine_limit) else None
    if max_depth is not None and node.depth >= max_depth - 1:
        return Action.FINISH
    accuracy = node.rollout_accuracy
    if accuracy is not None and accuracy >= bear_ratio:
        return Action.FINISH
    return Action.REASON


def rollout_count(depth: int, simulations: int, min_rollouts: int) -> int:
    """``max(floor(simulations / (depth + 1)), min_rollouts)``: deeper nodes need fewer rollouts."""
    return max(math.floor(simulations / (depth + 1)), min_rollouts)


def reflect_eligible(tree: Tree, node: Node, low_gate: float, refine_limit: int) -> bool:
    return (
        node.is_finish
        and not node.correct
        and node.value < low_gate
        and tree.reflections_on_path(node) < refine_limit
    )
