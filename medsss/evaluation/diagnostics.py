"""PRM diagnostics: calibration against rollout values, first-error detection, abstention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medsss.data.verify import is_correct
from medsss.decoding import aggregate, answer_key


def calibration(scores: Sequence[float], targets: Sequence[float], bins: int = 10) -> tuple[list[dict], float]:
    """Reliability table of PRM scores against rollout values, and the expected calibration
    error: ``sum_b (n_b / n) * |mean score_b - mean value_b|``."""
    table = []
    for b in range(bins):
        members = [i for i, s in enumerate(scores) if min(int(s * bins), bins - 1) == b]
        if not members:
            continue
        mean_score = sum(scores[i] for i in members) / len(members)
        mean_value = sum(targets[i] for i in members) / len(members)
        table.append({"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "count": len(members),
                      "mean_score": mean_score, "mean_value": mean_value})
    total = len(scores)
    ece = sum(row["count"] / total * abs(row["mean_score"] - row["mean_value"]) for row in table) if total else 0.0
    return table, ece


def first_drop(values: Sequence[float]) -> int | None:
    """The first step k >= 1 whose value is below the previous step's (the first error), or None."""
    return next((k for k in range(1, len(values)) if values[k] < values[k - 1]), None)


def first_error_f1(chains: Sequence[tuple[Sequence[float], Sequence[float]]], threshold: float = 0.5) -> dict:
    """ProcessBench-style F1 of first-error detection.

    Each chain is ``(values of steps 0..K, PRM scores of steps 1..K)``. The true first error is the
    first value drop; the predicted one is the first step scored below ``threshold``. F1 is the
    harmonic mean of the accuracy on chains with an error (exact step) and on chains without one
    (no step flagged)."""
    erroneous = correct = erroneous_hit = correct_hit = 0
    for values, scores in chains:
        truth = first_drop(values)
        flagged = next((k + 1 for k, s in enumerate(scores) if s < threshold), None)
        if truth is None:
            correct += 1
            correct_hit += flagged is None
        else:
            erroneous += 1
            erroneous_hit += flagged == truth
    acc_error = erroneous_hit / erroneous if erroneous else 0.0
    acc_correct = correct_hit / correct if correct else 0.0
    f1 = 2 * acc_error * acc_correct / (acc_error + acc_correct) if acc_error + acc_correct else 0.0
    return {"chains_with_error": erroneous, "chains_without": correct, "error_accuracy": acc_error,
            "correct_accuracy": acc_correct, "f1": f1}


def vote_margin(item: dict[str, Any], aggregation: str) -> tuple[str | None, float]:
    """The P-VS answer of a cached item and its margin: (S(best) - S(second)) / sum of S."""
    totals: dict[str, float] = {}
    for cand in item["candidates"]:
        if cand["answer"]:
            key = answer_key(cand["answer"])
            totals[key] = totals.get(key, 0.0) + aggregate(cand["step_scores"] or [0.0], aggregation)
    if not totals:
        return None, 0.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    total = sum(totals.values())
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    return ranked[0][0], (ranked[0][1] - second) / total if total else 0.0


def abstention_curve(items: Sequence[dict[str, Any]], aggregation: str = "min",
                     coverages: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0)) -> list[dict[str, float]]:
    """Accuracy when answering only the most confident share of items (by P-VS vote margin)."""
    ranked = sorted(((vote_margin(item, aggregation), item["gold"]) for item in items), key=lambda x: -x[0][1])
    rows = []
    for coverage in coverages:
        kept = ranked[: max(1, round(coverage * len(ranked)))] if ranked else []
        accuracy = sum(is_correct(answer, gold) for (answer, _), gold in kept) / len(kept) if kept else 0.0
        rows.append({"coverage": coverage, "answered": len(kept), "accuracy": accuracy})
    return rows
