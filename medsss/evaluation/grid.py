"""Accuracy of every aggregation x selection x N from cached candidates, with two kinds of spread.

A cached item is described in :mod:`medsss.evaluation.items`. For each N (the powers of two below
the number of candidates, and that number itself):

- the candidate draws: draw 0 is the first N candidates in their sampled order (the candidates
  ``predictions/`` chooses among); for N below the full count, ``rounds - 1`` more seeded subsamples
  of N candidates (without replacement). At full N there is one draw, in sampled order, so the
  grid, ``results.md`` and ``predictions/`` break ties identically.
- ``accuracy``: the mean over items of each item's correctness averaged over the draws;
- ``ci_low``/``ci_high``: the 95% item-level bootstrap interval of that accuracy (items resampled
  with replacement, ``bootstrap`` seeded rounds, the same resamples for every cell);
- ``subsample_low``/``subsample_high``: the 2.5/97.5 percentiles of the per-draw accuracies, the
  spread from which N candidates were drawn (zero width at full N).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsss.decoding import select
from medsss.decoding.select import Candidate
from medsss.evaluation.items import answer_correct, as_candidates, is_choice, options_of

SCORE_FREE = ("sc",)  # selections that ignore the aggregation
CONFIDENCE = 0.95


def powers_of_two(n: int) -> list[int]:
    return [2**k for k in range(int(math.log2(n)) + 1)] if n >= 1 else []


def grid_ns(total: int) -> list[int]:
    """The N of the grid: powers of two below ``total`` and ``total`` itself."""
    return sorted(set(powers_of_two(total)) | {total}) if total >= 1 else []


def candidate_count(items: Sequence[Mapping[str, Any]]) -> int:
    """The N every item can supply: the smallest number of candidates among ``items``."""
    return min((len(item["candidates"]) for item in items), default=0)


def bootstrap_means(values: Sequence[float], rounds: int, seed: int | Sequence[int] = 0) -> np.ndarray:
    """Means of ``rounds`` resamples of ``values`` with replacement (seeded)."""
    if rounds < 1:
        raise ValueError(f"bootstrap rounds must be >= 1, got {rounds}")
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap over no items")
    picks = np.random.default_rng(seed).integers(0, data.size, size=(rounds, data.size))
    return data[picks].mean(axis=1)


def percentile_interval(samples: Sequence[float] | np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(np.asarray(samples, dtype=float), [tail, 100 - tail])
    return float(low), float(high)


def item_bootstrap(values: Sequence[float], rounds: int,
                   seed: int | Sequence[int] = 0) -> tuple[float, float]:
    """95% interval of the mean of per-item ``values`` under resampling items with replacement."""
    return percentile_interval(bootstrap_means(values, rounds, seed))


def macro_bootstrap(per_benchmark: Sequence[Sequence[float]], rounds: int,
                    seed: int = 0) -> tuple[float, float]:
    """95% interval of the macro average (the mean of benchmark means), resampling items within each
    benchmark independently."""
    means = [bootstrap_means(values, rounds, [seed, index]) for index, values in enumerate(per_benchmark)]
    return percentile_interval(np.mean(means, axis=0))


def _draws(items: Sequence[Mapping[str, Any]], n: int, total: int, rounds: int,
           seed: int) -> list[list[list[int]]]:
    """Per round, per item, the candidate indices of that round's draw of ``n``."""
    prefix = [list(range(n)) for _ in items]
    extra = [
        [random.Random(f"{seed}|{r}|{item['id']}").sample(range(len(item["candidates"])), n)
         for item in items]
        for r in range(1, rounds if n < total else 1)
    ]
    return [prefix, *extra]


@dataclass(frozen=True)
class _Prepared:
    """What selection and grading need from a cached item, read once for every cell and draw."""

    candidates: list[Candidate]
    verdicts: list[bool]  # per candidate: is its answer correct
    choice: bool
    options: dict[str, str] | None

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> _Prepared:
        return cls(as_candidates(item["candidates"]),
                   [answer_correct(item, c["answer"]) for c in item["candidates"]],
                   is_choice(item), options_of(item))

    def outcome(self, indices: Sequence[int], rule: str, aggregation: str) -> bool:
        chosen = select([self.candidates[k] for k in indices], rule, aggregation, choice=self.choice,
                        options=self.options)
        return chosen is not None and self.verdicts[indices[chosen]]


def _outcomes(prepared: Sequence[_Prepared], rule: str, aggregation: str,
              draws: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
    """Per draw and item, whether ``rule`` picks a correct candidate: shape (draws, items)."""
    outcomes = np.zeros((len(draws), len(prepared)))
    for d, draw in enumerate(draws):
        for i, (item, indices) in enumerate(zip(prepared, draw, strict=True)):
            outcomes[d, i] = item.outcome(indices, rule, aggregation)
    return outcomes


def accuracy_grid(
    items: Sequence[Mapping[str, Any]],
    selections: Sequence[str],
    aggregations: Sequence[str],
    ns: Sequence[int] | None = None,
    rounds: int = 20,
    seed: int = 0,
    bootstrap: int = 1000,
) -> list[dict[str, Any]]:
    """One row per (selection, aggregation, n): accuracy, item-bootstrap interval, subsample spread."""
    if rounds < 1:
        raise ValueError(f"subsample rounds must be >= 1, got {rounds}")
    if not items:
        return []
    total = candidate_count(items)
    ns = [n for n in (ns or grid_ns(total)) if 1 <= n <= total]
    prepared = [_Prepared.of(item) for item in items]
    rows = []
    for n in ns:
        # The same draws and the same item resamples for every strategy: compared on equal footing.
        draws = _draws(items, n, total, rounds, seed)
        for rule in selections:
            for aggregation in (["-"] if rule in SCORE_FREE else aggregations):
                outcomes = _outcomes(prepared, rule, "min" if aggregation == "-" else aggregation, draws)
                per_item = outcomes.mean(axis=0)
                ci_low, ci_high = item_bootstrap(per_item, bootstrap, seed)
                sub_low, sub_high = percentile_interval(outcomes.mean(axis=1))
                rows.append({"selection": rule, "aggregation": aggregation, "n": n,
                             "accuracy": float(per_item.mean()), "ci_low": ci_low, "ci_high": ci_high,
                             "subsample_low": sub_low, "subsample_high": sub_high, "draws": len(draws)})
    return rows


def pass_at_k_per_item(items: Sequence[Mapping[str, Any]], k: int) -> list[float]:
    """Per item, the unbiased pass@k: the chance that k of its n samples include a correct one.

    An item with fewer than k candidates (none included) is an error naming the item: its pass@k
    is undefined, and counting it as 1.0 (as ``n - c < k`` would) inflates the table.
    """
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got {k}")
    values = []
    for item in items:
        n = len(item["candidates"])
        if n < k:
            raise ValueError(f"pass@{k}: item {item['id']!r} has {n} candidate(s), fewer than k = {k}")
        c = sum(answer_correct(item, x["answer"]) for x in item["candidates"])
        values.append(1.0 - math.comb(n - c, k) / math.comb(n, k))
    return values


def pass_at_k(items: Sequence[Mapping[str, Any]], k: int) -> float:
    """Unbiased pass@k averaged over items (an item with fewer than k candidates is an error)."""
    values = pass_at_k_per_item(items, k)
    return sum(values) / len(values) if values else 0.0


def greedy_outcomes(items: Sequence[Mapping[str, Any]]) -> list[float] | None:
    """Per item with a greedy sample, whether it is correct; None when no item has one."""
    scored = [item for item in items if item.get("greedy")]
    if not scored:
        return None
    return [float(answer_correct(item, item["greedy"]["answer"])) for item in scored]


def greedy_accuracy(items: Sequence[Mapping[str, Any]]) -> float | None:
    outcomes = greedy_outcomes(items)
    return sum(outcomes) / len(outcomes) if outcomes else None


def unparseable_share(items: Sequence[Mapping[str, Any]]) -> float | None:
    """The share of sampled candidates with no extracted answer (None without candidates)."""
    counts = [(sum(not c["answer"] for c in item["candidates"]), len(item["candidates"])) for item in items]
    total = sum(n for _, n in counts)
    return sum(missing for missing, _ in counts) / total if total else None

