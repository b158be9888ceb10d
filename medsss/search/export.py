"""Root-to-leaf chains out of stored trees: correct ("pos") and incorrect ("neg") trajectories."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medsss.search.tree import Node, Tree

TRAJECTORIES_FILE = "trajectories.jsonl"


def chain_steps(tree: Tree, leaf: Node) -> list[dict[str, Any]]:
    """The steps of the chain ending at ``leaf``, step 0 first, with their values."""
    return [
        {
            "step": node.depth,
            "text": node.text,
            "value": node.value,
            "kind": node.kind,
            "visits": node.visits,
            "rollout_correct": node.rollout_correct,
            "rollout_total": node.rollout_total,
        }
        for node in tree.path(leaf)
    ]


def trajectories(record: dict[str, Any]) -> dict[str, Any]:
    """One line of ``trajectories.jsonl`` from one stored tree record."""
    tree = Tree.from_dict({"problem_id": record["id"], "nodes": record["nodes"]})
    finishes = [n for n in tree.nodes if n.is_finish and n.is_leaf]
    return {
        "id": record["id"],
        "question": record["question"],
        "answer": record["answer"],
        "pos": [chain_steps(tree, n) for n in finishes if n.correct],
        "neg": [chain_steps(tree, n) for n in finishes if not n.correct],
    }


def write_trajectories(records: Iterable[dict[str, Any]], run_dir: str | Path) -> dict[str, int]:
    """Rewrite ``trajectories.jsonl`` from the store (atomically) and count what it holds."""
    path = Path(run_dir) / TRAJECTORIES_FILE
    tmp = path.with_suffix(".jsonl.tmp")
    counts = {"problems": 0, "pos_chains": 0, "neg_chains": 0, "problems_with_both": 0}
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            line = trajectories(record)
            counts["problems"] += 1
            counts["pos_chains"] += len(line["pos"])
            counts["neg_chains"] += len(line["neg"])
            counts["problems_with_both"] += bool(line["pos"] and line["neg"])
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return counts
