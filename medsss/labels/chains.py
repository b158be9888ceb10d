"""Chains out of stored trees and chain files: the one extractor of root-to-leaf step lists that
the label views, the synthesis stage's sample table and any viewer share.

A chain of a stored tree is the path from the root to a finish leaf, its steps as
:func:`medsss.search.export.chain_steps` writes them to ``trajectories.jsonl``. Chain files are our
``trajectories.jsonl`` and the reference implementation's ``pos``/``neg`` files, whose chains are
lists of ``[step text, value, rollout score]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsss.data.prompts import STEP_ZERO
from medsss.io import read_json, read_jsonl
from medsss.search.export import TRAJECTORIES_FILE, chain_steps
from medsss.search.store import TREES_FILE
from medsss.search.tree import Tree

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
                items = read_json(path)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
            numbered = enumerate(items, start=1)
        else:
            numbered = enumerate(read_jsonl(path), start=1)
        for number, record in numbered:
            if not isinstance(record, dict):
                raise ValueError(f"{path}: record {number}: expected a JSON object, "
                                 f"got {type(record).__name__}")
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
    """Root-to-finish-leaf chains in node order, each step as ``trajectories.jsonl`` writes it
    (:func:`medsss.search.export.chain_steps`)."""
    tree = Tree.from_dict({"problem_id": record["id"], "nodes": record["nodes"]})
    out = []
    for leaf in tree.nodes:
        if not (leaf.is_finish and leaf.is_leaf):
            continue
        steps = chain_steps(tree, leaf)
        out.append(Chain(
            problem_id=str(record["id"]),
            question=record["question"],
            answer=record["answer"],
            steps=[s["text"] for s in steps],
            values=[s["value"] for s in steps],
            rollouts=[s["rollout_total"] for s in steps],
            kinds=[s["kind"] for s in steps],
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
                        f"{where}: {label}[{number}] step {index}: expected "
                        f"[text, value in [0, 1], rollout score] or {{'text', 'value'}}, got {str(step)[:80]}"
                    )
                steps.append(_STEP_PREFIX.sub("", text, count=1).strip())
                values.append(float(value))
            if steps[0] != STEP_ZERO:
                steps.insert(0, STEP_ZERO)
                values.insert(0, values[0])
            out.append(Chain(
                problem_id=problem_id, question=question, answer=answer, steps=steps, values=values,
                rollouts=[0] * len(steps),
                kinds=(["root"] + ["reason"] * (len(steps) - 2) + ["finish"])[: len(steps)],
                correct=label == "pos",
            ))
    return out


SAMPLE_TABLE_COLUMNS = ("id", "answer", "correct", "min_value", "solution")


def sample_chain_table(records: Iterable[dict[str, Any]], limit: int) -> tuple[list[str], list[list[Any]]]:
    """Up to ``limit`` rows of a table of sample chains: per record its first correct and its first
    incorrect chain, with the weakest step value after step 0 and the solution as "Step k:" text."""
    rows: list[list[Any]] = []
    for record in records:
        chains = chains_of(record)
        for correct in (True, False):
            chain = next((c for c in chains if c.correct is correct), None)
            if chain is not None:
                solution = "\n\n".join(f"Step {k}: {text}" for k, text in enumerate(chain.steps))
                weakest = min(chain.values[1:]) if len(chain.values) > 1 else None
                rows.append([chain.problem_id, chain.answer, correct, weakest, solution])
        if len(rows) >= limit:
            break
    return list(SAMPLE_TABLE_COLUMNS), rows[:limit]
