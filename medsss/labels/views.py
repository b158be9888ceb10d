"""Training sets as views over tree stores: searched once, relabelled at will.

- SFT: the distinct correct chains of each problem, optionally only its ``top_k`` by the minimum
  step value (step 0 excluded).
- PRM: every chain (of problems with both correct and incorrect leaves, by default) with one label
  per step k >= 1 under a label rule, and optional per-step weights from rollout counts.

Sources are tree stores (``trees.jsonl``) or chain files: our ``trajectories.jsonl`` and the
reference implementation's ``pos``/``neg`` files, whose chains are lists of
``[step text, value, rollout score]``, so users with MedSSS data train without searching again.

Chains come from :mod:`medsss.labels.chains`. Each view is a list of plain dict rows, written as
JSONL (:func:`medsss.io.write_jsonl`) that ``datasets.load_dataset("json", ...)`` reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from medsss.labels.chains import SOURCE_KEY, Chain, chains_of, read_trees
from medsss.labels.rules import penalty_targets, prm_labels

# Chains and their sources live in medsss.labels.chains; re-exported for code that reads views.
__all__ = ["SOURCE_KEY", "Chain", "chains_of", "label_histogram", "prm_rows", "read_trees", "sft_rows",
           "step_weights", "view_counts"]


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
    for kind, count in zip(chain.kinds, chain.rollouts, strict=True):
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
    penalties: bool = False,
) -> list[dict[str, Any]]:
    """One row per chain with labels for steps 1..K (and weights when ``weight_rollouts`` is set:
    the rollout count that earns a step full weight; and, with ``penalties``, the dual-sided PRM's
    penalty targets ``1[V_k < V_{k-1}]``)."""
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
            if penalties:
                row["penalties"] = penalty_targets(chain.values)
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
    if rows and "penalties" in rows[0]:
        counts["penalty_steps"] = int(sum(sum(r["penalties"]) for r in rows))
    return counts
