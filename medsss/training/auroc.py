"""Step-level PRM classification metric: AUROC of step scores against hard step targets."""

from __future__ import annotations

from collections.abc import Sequence


def binary_auroc(scores: Sequence[float], targets: Sequence[int]) -> float | None:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties
    count half). None when one class is absent."""
    pairs = sorted(zip(scores, targets, strict=True))
    positives = sum(1 for _, t in pairs if t)
    negatives = len(pairs) - positives
    if not positives or not negatives:
        return None
    rank_sum, index = 0.0, 0
    while index < len(pairs):
        end = index
        while end + 1 < len(pairs) and pairs[end + 1][0] == pairs[index][0]:
            end += 1
        average_rank = (index + end) / 2 + 1  # ranks are 1-based; ties share their mean rank
        rank_sum += average_rank * sum(1 for k in range(index, end + 1) if pairs[k][1])
        index = end + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
