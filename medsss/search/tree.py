"""The search tree: a flat list of nodes addressed by index, serialisable as-is to one JSON line."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

NodeKind = Literal["root", "reason", "finish", "reflect"]


@dataclass
class Node:
    """One reasoning step.

    ``kind`` is what the step is: ``reason`` (an intermediate step), ``finish`` (states an answer),
    ``reflect`` (a revision, "But wait, ...", that states no answer yet) or ``root`` (step 0).

    ``value`` is in [0, 1]: a finish node's is 1 or 0 by its answer; a reason or reflect node's
    starts as its rollout accuracy and is then updated by back-propagation.
    """

    index: int
    parent: int | None
    text: str
    kind: NodeKind
    depth: int
    children: list[int] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    rollout_correct: int = 0
    rollout_total: int = 0
    rollout_texts: list[str] = field(default_factory=list)
    answer: str | None = None
    correct: bool | None = None  # set on finish nodes only
    completed: bool = False  # nothing left to explore below (or at) this node
    reflection: bool = False  # made by the reflect action (kind "finish" if it states an answer)
    split: bool = False  # an intermediate piece of a split Finish completion (never evaluated)
    generated_tokens: int = 0

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def is_finish(self) -> bool:
        return self.kind == "finish"

    @property
    def rollout_accuracy(self) -> float | None:
        return self.rollout_correct / self.rollout_total if self.rollout_total else None


@dataclass
class Tree:
    """All nodes of one problem's search; ``nodes[0]`` is the root (step 0)."""

    problem_id: str
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def with_root(cls, problem_id: str, root_text: str) -> Tree:
        return cls(problem_id, [Node(index=0, parent=None, text=root_text, kind="root", depth=0)])

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add_child(self, parent: Node, text: str, kind: NodeKind, **fields: Any) -> Node:
        node = Node(index=len(self.nodes), parent=parent.index, text=text, kind=kind,
                    depth=parent.depth + 1, **fields)
        self.nodes.append(node)
        parent.children.append(node.index)
        return node

    def children(self, node: Node) -> list[Node]:
        return [self.nodes[i] for i in node.children]

    def parent(self, node: Node) -> Node | None:
        return None if node.parent is None else self.nodes[node.parent]

    def ancestors(self, node: Node) -> Iterator[Node]:
        """The parent, grandparent, ... up to the root."""
        current = self.parent(node)
        while current is not None:
            yield current
            current = self.parent(current)

    def path(self, node: Node) -> list[Node]:
        """Root-to-node chain, root first."""
        return [*reversed(list(self.ancestors(node))), node]

    def path_texts(self, node: Node) -> list[str]:
        return [n.text for n in self.path(node)]

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if n.is_leaf]

    def correct_leaves(self) -> list[Node]:
        return [n for n in self.nodes if n.is_finish and n.correct and n.is_leaf]

    def reflections_on_path(self, node: Node) -> int:
        return sum(1 for n in self.path(node) if n.reflection)

    def to_dict(self) -> dict[str, Any]:
        return {"problem_id": self.problem_id, "nodes": [asdict(n) for n in self.nodes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tree:
        return cls(data["problem_id"], [Node(**n) for n in data["nodes"]])
