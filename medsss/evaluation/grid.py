"""Accuracy of every aggregation x selection x N from cached candidates, with bootstrap intervals.

A cached item is ``{"id", "gold", "candidates": [{"answer", "step_scores"}, ...], "greedy":
{"answer"} or absent}``. For each N, ``rounds`` subsamples of N candidates (without replacement,
seeded) give accuracies whose mean and 2.5/97.5 percentiles are reported.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from medsss.data.verify import is_correct
from medsss.decoding import select

SCORE_FREE = ("sc",)  # selections that ignore the aggregation


def powers_of_two(n: int) -> list[int]:
    return [2**k for k in range(int(math.log2(n)) + 1)] if n >= 1 else []


def _chosen_correct(item: dict[str, Any], indices: Sequence[int], rule: str, aggregation: str) -> bool:
    pool = [item["candidates"][i] for i in indices]
    chosen = select([(c["answer"], c["step_scores"] or [0.0]) for c in pool], rule, aggregation)
    return chosen is not None and is_correct(pool[chosen]["answer"], item["gold"])


def accuracy_grid(
    items: Sequence[dict[str, Any]],
    selections: Sequence[str],
    aggregations: Sequence[str],
    ns: Sequence[int] | None = None,
    rounds: int = 20,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (selection, aggregation, n): accuracy with a bootstrap interval."""
    if not items:
        return []
    total = min(len(item["candidates"]) for item in items)
    ns = [n for n in (ns or powers_of_two(total)) if n <= total]
    rows = []
    for n in ns:
        # The same subsamples for every strategy, so strategies are compared on equal footing.
        draws = [
            [random.Random(f"{seed}|{r}|{item['id']}").sample(range(len(item["candidates"])), n) for item in items]
            for r in range(rounds if n < total else 1)
        ]
        for rule in selections:
            for aggregation in (["-"] if rule in SCORE_FREE else aggregations):
                accuracies = [
                    sum(_chosen_correct(item, idx, rule, aggregation if aggregation != "-" else "min")
                        for item, idx in zip(items, draw)) / len(items)
                    for draw in draws
                ]
                rows.append({"selection": rule, "aggregation": aggregation, "n": n,
                             **_interval(accuracies)})
    return rows


def _interval(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    low = ordered[int(0.025 * (len(ordered) - 1))]
    high = ordered[math.ceil(0.975 * (len(ordered) - 1))]
    return {"accuracy": sum(values) / len(values), "ci_low": low, "ci_high": high}


def pass_at_k(items: Sequence[dict[str, Any]], k: int) -> float:
    """Unbiased pass@k: the chance that k of an item's n samples include a correct one, averaged."""
    total = 0.0
    for item in items:
        n = len(item["candidates"])
        c = sum(is_correct(x["answer"], item["gold"]) for x in item["candidates"])
        total += 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)
    return total / len(items) if items else 0.0


def greedy_accuracy(items: Sequence[dict[str, Any]]) -> float | None:
    scored = [item for item in items if item.get("greedy")]
    if not scored:
        return None
    return sum(is_correct(item["greedy"]["answer"], item["gold"]) for item in scored) / len(scored)
