"""What the proving ground measures, from evaluation caches (``<evaluate run>/cache/<name>.jsonl``).

- per-item outcomes of a strategy at N: for N below the number of candidates, the mean over the
  disjoint consecutive blocks of N candidates (every strategy sees the same blocks);
- the PRM's step AUROC against the steps known to be wrong (:mod:`~medsss.proving_ground.checker`),
  over every scored step, or over the steps before a candidate's last one (the process steps, whose
  labels come from back-propagated values rather than the answer's own check);
- paired differences with an item-bootstrap 95% interval (the same items, resampled together);
- re-scoring cached candidates with another PRM (the ablations share one sampling pass).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsss.evaluation.grid import bootstrap_means, greedy_outcomes, pass_at_k_per_item, percentile_interval
from medsss.evaluation.items import answer_correct, decoded
from medsss.io import read_jsonl
from medsss.proving_ground.checker import sound_prefixes
from medsss.proving_ground.knowledge import KnowledgeBase, build_knowledge_base
from medsss.proving_ground.task import TaskSettings
from medsss.training.auroc import binary_auroc


def task_knowledge(seed: int = 0) -> KnowledgeBase:
    settings = TaskSettings(seed=seed)
    return build_knowledge_base(settings.seed, settings.drugs_per_class, settings.prodrugs)


def questions_by_id(split_file: Path) -> dict[str, str]:
    return {str(row["id"]): str(row["question"]) for row in read_jsonl(split_file)}


def read_items(cache_file: Path) -> list[dict[str, Any]]:
    """The cached items of one evaluation, in id order (runs of one split compare item by item)."""
    if not cache_file.exists():
        raise FileNotFoundError(f"{cache_file}: no evaluation cache (did the evaluate step run?)")
    return sorted(read_jsonl(cache_file), key=lambda row: str(row["id"]))


def strategy_outcomes(items: Sequence[Mapping[str, Any]], rule: str, n: int,
                      aggregation: str = "min") -> np.ndarray:
    """Per item, the share of disjoint blocks of ``n`` candidates on which ``rule`` picks a correct
    one (``rule`` ``greedy``: the greedy sample)."""
    if rule == "greedy":
        outcomes = greedy_outcomes(items)
        if outcomes is None or len(outcomes) != len(items):
            raise ValueError("greedy outcomes need a greedy sample on every item")
        return np.asarray(outcomes, dtype=float)
    values = []
    for item in items:
        candidates = item["candidates"]
        blocks = len(candidates) // n
        if blocks < 1:
            raise ValueError(f"item {item['id']!r} has {len(candidates)} candidates, fewer than N = {n}")
        hits = 0.0
        for block in range(blocks):
            view = {**item, "candidates": candidates[block * n : (block + 1) * n]}
            picked = decoded(view, rule, aggregation, n)
            hits += float(picked is not None and answer_correct(view, picked.get("answer")))
        values.append(hits / blocks)
    return np.asarray(values, dtype=float)


def pass_at_n(items: Sequence[Mapping[str, Any]], n: int) -> np.ndarray:
    return np.asarray(pass_at_k_per_item(items, n), dtype=float)


def step_labels(kb: KnowledgeBase, items: Sequence[Mapping[str, Any]], questions: Mapping[str, str],
                process_only: bool = False) -> tuple[list[float], list[int]]:
    """PRM step scores and whether each step's prefix is sound, over every scored step of every
    candidate (``process_only``: the steps before each candidate's last step)."""
    scores: list[float] = []
    targets: list[int] = []
    for item in items:
        question = questions[str(item["id"])]
        for cand in item["candidates"]:
            steps = cand["steps"][1:]
            step_scores = cand.get("step_scores") or []
            if not step_scores:
                continue
            sound = sound_prefixes(kb, question, item["options"], steps)
            count = len(step_scores) - 1 if process_only else len(step_scores)
            for score, label in zip(step_scores[:count], sound[:count], strict=True):
                scores.append(float(score))
                targets.append(int(label))
    return scores, targets


def step_auroc(kb: KnowledgeBase, items: Sequence[Mapping[str, Any]], questions: Mapping[str, str],
               process_only: bool = False) -> float | None:
    scores, targets = step_labels(kb, items, questions, process_only)
    return binary_auroc(scores, targets)


def interval(values: Sequence[float] | np.ndarray, rounds: int = 1000,
             seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% item-bootstrap interval."""
    data = np.asarray(values, dtype=float)
    low, high = percentile_interval(bootstrap_means(data.tolist(), rounds, seed))
    return float(data.mean()), low, high


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, rounds: int = 1000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same items and its 95% item-bootstrap interval."""
    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if first.shape != second.shape:
        raise ValueError(f"paired difference of {first.shape} and {second.shape} outcomes")
    return interval(first - second, rounds, seed)


def rescore(items: Sequence[Mapping[str, Any]], questions: Mapping[str, str],
            score_chains: Callable[[list[tuple[str, list[str]]]], list[list[float]]]) -> list[dict[str, Any]]:
    """Copies of ``items`` whose candidates carry another PRM's step scores."""
    rescored = [copy.deepcopy(dict(item)) for item in items]
    chains, owners = [], []
    for item in rescored:
        for cand in item["candidates"]:
            cand["step_scores"] = []
            if len(cand["steps"]) > 1:
                chains.append((questions[str(item["id"])], cand["steps"]))
                owners.append(cand)
    for cand, scores in zip(owners, score_chains(chains), strict=True):
        cand["step_scores"] = scores
    return rescored
