"""One score per candidate from the PRM scores of its steps 1..K."""

from __future__ import annotations

import math
from collections.abc import Sequence

AGGREGATIONS = ("min", "mean", "prod", "gmean", "last")


def aggregate(step_scores: Sequence[float], how: str) -> float:
    """``min`` (a chain is as good as its worst step), ``mean``, ``prod``, ``gmean`` (geometric
    mean) or ``last`` over the scores of steps 1..K."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation '{how}' must be one of {AGGREGATIONS}")
    if not step_scores:
        raise ValueError("a candidate needs at least one scored step (step 1) to aggregate")
    if how == "min":
        return float(min(step_scores))
    if how == "mean":
        return float(sum(step_scores) / len(step_scores))
    if how == "prod":
        return float(math.prod(step_scores))
    if how == "gmean":
        if any(s <= 0 for s in step_scores):
            return 0.0
        return float(math.exp(sum(math.log(s) for s in step_scores) / len(step_scores)))
    return float(step_scores[-1])
