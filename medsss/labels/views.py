"""Training sets as views over tree stores: searched once, relabelled at will.

- SFT: the distinct correct chains of each problem, optionally only its ``top_k`` by the minimum
  step value (step 0 excluded).
- PRM: every chain (of problems with both correct and incorrect leaves, by default) with one label
  per step k >= 1 under a label rule, and optional per-step weights from rollout counts.

Sources are tree stores (``trees.jsonl``) or chain files: our ``trajectories.jsonl`` and the
reference implementation's ``pos``/``neg`` files, whose chains are lists of
``[step text, value, rollout score]``, so users with MedSSS data train without searching again.

Each view is a list of plain dict rows, written as JSONL that ``datasets.load_dataset("json", ...)``
reads.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsss.data.prompts import STEP_ZERO
from medsss.labels.rules import prm_labels
from medsss.search.export import TRAJECTORIES_FILE
from medsss.search.store import TREES_FILE, read_jsonl
from medsss.search.tree import Node, Tree

SOURCE_KEY = "_source"  # where a record was read ("file:line"), for errors naming the row
_STEP_PREFIX = re.compile(r"^\s*Step\s+\d+\s*:\s*")


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
    """Records from stores and chain files.

    Each source is a run directory (its ``trees.jsonl``, else its ``trajectories.jsonl``), a tree
    store, or a chain file (JSONL, or a JSON list) whose records hold ``pos``/``neg`` chains.
    """
    for source in sources:
        path = Path(source)
        if path.is_dir():
            path = path / TREES_FILE if (path / TREES_FILE).exists() else path / TRAJECTORIES_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no tree store or chain file here (data.trees)")
        if _first_character(path) == "[":  # a JSON list (the reference writes these too)
            try:
                items = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
            numbered = enumerate(items, start=1)
        else:
            numbered = enumerate(read_jsonl(path), start=1)
        for number, record in numbered:
            if not isinstance(record, dict):
                raise ValueError(f"{path}: record {number}: expected a JSON object, got {type(record).__name__}")
            yield {**record, SOURCE_KEY: f"{path}: record {number}"}


def _first_character(path: Path) -> str:
    """The first non-blank character of a file, read without loading the whole file."""
    with open(path, encoding="utf-8-sig") as handle:
        while chunk := handle.read(4096):
            if chunk.strip():
                return chunk.lstrip()[0]
    return ""


def chains_of(record: dict[str, Any]) -> list[Chain]:
    """Every chain of one record: root-to-finish-leaf paths of a stored tree (in node order), or
    the ``pos`` then ``neg`` chains of a chain-file record."""
    if "nodes" in record:
        return _tree_chains(record)
    if "pos" in record or "neg" in record:
        return _file_chains(record)
    where = record.get(SOURCE_KEY, "a record")
    raise ValueError(f"{where}: neither a stored tree ('nodes') nor a chain record ('pos'/'neg')")


def _tree_chains(record: dict[str, Any]) -> list[Chain]:
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


def _field(record: dict[str, Any], where: str, *names: str) -> Any:
    for name in names:
        value = record.get(name)
        if isinstance(value, dict) and name == "eval":
            value = value.get("answer")
        if isinstance(value, list) and name == "conversations":
            value = value[0].get("value") if value and isinstance(value[0], dict) else None
        if value not in (None, ""):
            return value
    raise ValueError(f"{where}: missing field (one of {', '.join(names)})")


def _file_chains(record: dict[str, Any]) -> list[Chain]:
    """Chains of a chain-file record. A step is our ``{"text", "value", ...}`` or the reference's
    ``[text, value, rollout score]``; "Step k:" prefixes are removed, and a chain that does not
    start at step 0 gets it prepended with its first step's value (step 0 is never labelled)."""
    where = record.get(SOURCE_KEY, "a chain record")
    question = str(_field(record, where, "question", "problem", "conversations"))
    answer = str(_field(record, where, "answer", "gold", "eval"))
    problem_id = str(record.get("id", record.get("index", where)))
    out = []
    for label in ("pos", "neg"):
        chains = record.get(label) or []
        if not isinstance(chains, list):
            raise ValueError(f"{where}: '{label}' must be a list of chains")
        for number, chain in enumerate(chains):
            steps, values = [], []
            if not isinstance(chain, list) or not chain:
                raise ValueError(f"{where}: {label}[{number}] must be a non-empty list of steps")
            for index, step in enumerate(chain):
                if isinstance(step, dict):
                    text, value = step.get("text"), step.get("value")
                elif isinstance(step, (list, tuple)) and len(step) >= 2:
                    text, value = step[0], step[1]
                else:
                    text, value = None, None
                if not isinstance(text, str) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise ValueError(
                        f"{where}: {label}[{number}] step {index}: expected [text, value in [0, 1], rollout score] "
                        f"or {{'text', 'value'}}, got {str(step)[:80]}"
                    )
                steps.append(_STEP_PREFIX.sub("", text, count=1).strip())
                values.append(float(value))
            if steps[0] != STEP_ZERO:
                steps.insert(0, STEP_ZERO)
                values.insert(0, values[0])
            out.append(Chain(
                problem_id=problem_id, question=question, answer=answer, steps=steps, values=values,
                rollouts=[0] * len(steps), kinds=(["root"] + ["reason"] * (len(steps) - 2) + ["finish"])[: len(steps)],
                correct=label == "pos",
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
    shape_step_one: bool = False,
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
                "labels": prm_labels(chain.values, rule, threshold, factor, shape_step_one),
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
