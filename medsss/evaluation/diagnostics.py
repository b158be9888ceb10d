"""PRM diagnostics: calibration against rollout values, first-error detection, abstention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medsss.decoding import rank_answers
from medsss.evaluation.items import answer_correct, as_candidates, is_choice, options_of


def calibration(scores: Sequence[float], targets: Sequence[float],
                bins: int = 10) -> tuple[list[dict], float]:
    """Reliability table of PRM scores against rollout values, and the expected calibration
    error: ``sum_b (n_b / n) * |mean score_b - mean value_b|``."""
    table: list[dict[str, Any]] = []
    for b in range(bins):
        members = [i for i, s in enumerate(scores) if min(int(s * bins), bins - 1) == b]
        if not members:
            continue
        mean_score = sum(scores[i] for i in members) / len(members)
        mean_value = sum(targets[i] for i in members) / len(members)
        table.append({"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "count": len(members),
                      "mean_score": mean_score, "mean_value": mean_value})
    total = len(scores)
    ece = (sum(row["count"] / total * abs(row["mean_score"] - row["mean_value"]) for row in table)
           if total else 0.0)
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


def vote_margin(item: Mapping[str, Any], aggregation: str) -> tuple[str | None, float]:
    """The P-VS answer of a cached item and its margin: (S(best) - S(second)) / sum of S.

    The answer is ranked exactly as ``select(..., "pvs")`` ranks it (ties: the answer whose best
    single candidate scores highest, then first appearance; votes by option letter on choice items
    and by normalised text on free-text ones); the answer returned is the text of its best-scored
    candidate, the one ``pvs`` would choose.
    """
    candidates = as_candidates(item["candidates"])
    ranked = rank_answers(candidates, aggregation, choice=is_choice(item), options=options_of(item))
    if not ranked:
        return None, 0.0
    total = sum(vote.strength for vote in ranked)
    second = ranked[1].strength if len(ranked) > 1 else 0.0
    margin = (ranked[0].strength - second) / total if total else 0.0
    return candidates[ranked[0].best][0], margin


def abstention_curve(items: Sequence[Mapping[str, Any]], aggregation: str = "min",
                     coverages: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0)) -> list[dict[str, float]]:
    """Accuracy when answering only the most confident share of items (by P-VS vote margin; equal
    margins keep item order). Correctness is the verifier's, with each item's options."""
    margins = [(vote_margin(item, aggregation), item) for item in items]
    ranked = sorted(margins, key=lambda entry: -entry[0][1])
    rows = []
    for coverage in coverages:
        kept = ranked[: max(1, round(coverage * len(ranked)))] if ranked else []
        accuracy = (sum(answer_correct(item, answer) for (answer, _), item in kept) / len(kept)
                    if kept else 0.0)
        rows.append({"coverage": coverage, "answered": len(kept), "accuracy": accuracy})
    return rows
