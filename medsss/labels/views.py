"""Training sets as views over tree stores: searched once, relabelled at will.

- SFT: the distinct correct chains of each problem, optionally only its ``top_k`` by the minimum
  step value (step 0 excluded).
- PRM: every chain (of problems with both correct and incorrect leaves, by default) with one label
  per step k >= 1 under a label rule, and optional per-step weights from rollout counts.

Each view is a list of plain dict rows, written as JSONL that ``datasets.load_dataset("json", ...)``
reads.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsss.labels.rules import prm_labels
from medsss.search.store import TREES_FILE, read_jsonl
from medsss.search.tree import Node, Tree


@dataclass(frozen=True)
class Chain:
    """One root-to-leaf path of a stored tree."""

    problem_id: str
    question: str
    answer: str
    steps: list[str]  # texts of steps 0..K
    values: list[float]
    rollouts: list[int]  # rollout count behind each value (0: exact outcome or copied value)
    kinds: list[str]
    correct: bool

    @property
    def min_value(self) -> float:
        """The weakest step after step 0 (a chain is as good as its worst step)."""
        return min(self.values[1:]) if len(self.values) > 1 else self.values[0]


def read_trees(sources: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """Tree records from stores: each source is a ``trees.jsonl`` or a run directory holding one."""
    for source in sources:
        path = Path(source)
        if path.is_dir():
            path = path / TREES_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no tree store here (data.trees)")
        yield from read_jsonl(path)


def chains_of(record: dict[str, Any]) -> list[Chain]:
    """Every root-to-finish-leaf chain of one stored tree, in node order."""
    tree = Tree.from_dict({"problem_id": record["id"], "nodes": record["nodes"]})
    out = []
    for leaf in tree.nodes:
        if not (leaf.is_finish and leaf.is_leaf):
            continue
        path: list[Node] = tree.path(leaf)
        out.append(Chain(
            problem_id=str(record["id"]),
            question=record["question"],
            answer=record["answer"],
            steps=[n.text for n in path],
            values=[n.value for n in path],
            rollouts=[n.rollout_total for n in path],
            kinds=[n.kind for n in path],
            correct=bool(leaf.correct),
        ))
    return out


def sft_rows(records: Iterable[dict[str, Any]], top_k: int | None = None) -> list[dict[str, Any]]:
    """Distinct correct chains, best first by minimum step value, at most ``top_k`` per problem."""
    rows = []
    for record in records:
        seen: set[tuple[str, ...]] = set()
        distinct = []
        for chain in sorted((c for c in chains_of(record) if c.correct), key=lambda c: -c.min_value):
            key = tuple(chain.steps)
            if key not in seen:
                seen.add(key)
                distinct.append(chain)
        for chain in distinct[:top_k] if top_k is not None else distinct:
            rows.append({
                "id": chain.problem_id,
                "question": chain.question,
                "answer": chain.answer,
                "steps": chain.steps,
                "min_value": chain.min_value,
            })
    return rows


def step_weights(chain: Chain, full_rollouts: int) -> list[float]:
    """Confidence of each labelled step's value: ``min(1, n / full_rollouts)`` for a rollout
    estimate from ``n`` rollouts, 1 for an exact outcome (a finish node), and a copied value
    inherits the weight of the step it was copied from."""
    weights: list[float] = []
    inherited = 1.0
    for kind, count in zip(chain.kinds, chain.rollouts):
        if kind == "finish":
            weight = 1.0
        elif count:
            weight = min(1.0, count / full_rollouts)
        else:
            weight = inherited
        inherited = weight
        weights.append(weight)
    return weights[1:]


def prm_rows(
    records: Iterable[dict[str, Any]],
    rule: str = "soft",
    threshold: float = 0.5,
    factor: float = 1.0,
    require_both: bool = True,
    weight_rollouts: int | None = None,
) -> list[dict[str, Any]]:
    """One row per chain with labels for steps 1..K (and weights when ``weight_rollouts`` is set:
    the rollout count that earns a step full weight)."""
    rows = []
    for record in records:
        chains = chains_of(record)
        if require_both and not (any(c.correct for c in chains) and any(not c.correct for c in chains)):
            continue
        for chain in chains:
            if len(chain.steps) < 2:
                continue
            row = {
                "id": chain.problem_id,
                "question": chain.question,
                "steps": chain.steps,
                "values": chain.values,
                "labels": prm_labels(chain.values, rule, threshold, factor),
                "correct": chain.correct,
            }
            if weight_rollouts:
                row["weights"] = step_weights(chain, weight_rollouts)
            rows.append(row)
    return rows


def label_histogram(rows: Iterable[dict[str, Any]], bins: int = 10) -> list[int]:
    """Counts of step labels in ``bins`` equal-width bins over [0, 1]."""
    counts: Counter[int] = Counter()
    for row in rows:
        for label in row["labels"]:
            counts[min(int(label * bins), bins - 1)] += 1
    return [counts[i] for i in range(bins)]


def view_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "problems": len({r["id"] for r in rows}),
        "chains": len(rows),
        "steps": sum(len(r["steps"]) - 1 for r in rows),
    }
    if rows and "labels" in rows[0]:
        counts["label_histogram"] = label_histogram(rows)
        counts["correct_chains"] = sum(1 for r in rows if r["correct"])
    return counts


def write_rows(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSONL atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
