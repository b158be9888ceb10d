"""Validation metrics that are right under data parallelism: epoch means and a PRM's step AUROC and accuracy.

Each rank scores its own validation items; the metrics keep every rank's step scores and targets
(torchmetrics states) and gather them when computed, so the AUROC is that of all steps together, as
one process would compute it, and not rank 0's share (or a mean of per-rank AUROCs, which is not an
AUROC). Computing is a collective: every rank calls :meth:`StepClassification.compute`.

Epoch means (:func:`epoch_means`) are torchmetrics sums of value x rows and of rows, in floating
point. Lightning's own ``self.log(..., on_epoch=True, sync_dist=True)`` averages the ranks' row
counts as integers (lightning 2.6, ``_sync_ddp``): with an odd total, 5 validation rows on two ranks
count as 4, and the mean comes out a quarter too high.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC


class StepClassification(nn.Module):
    """Scores in [0, 1] against hard 0/1 targets, accumulated over a validation epoch: the AUROC
    (exact, from all scores: ties count half) and the accuracy of calling a step good when its score
    is above 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.auroc = BinaryAUROC()  # thresholds=None: every score kept, no binning
        self.accuracy = BinaryAccuracy(threshold=0.5)
        self.positive_share = MeanMetric()  # 0 or 1: one class only, and no AUROC

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Add the steps of one batch (flat tensors of equal length)."""
        if not scores.numel():
            return
        scores, targets = scores.detach().float().flatten(), targets.detach().long().flatten()
        self.auroc.update(scores, targets)
        self.accuracy.update(scores, targets)
        self.positive_share.update(targets.float())

    def compute(self) -> tuple[float | None, float | None]:
        """(AUROC, accuracy) over the steps of every rank since the last :meth:`reset`: AUROC None
        when one class is absent, both None without a single step."""
        share = float(self.positive_share.compute())
        if math.isnan(share):
            return None, None
        accuracy = float(self.accuracy.compute())
        if share in (0.0, 1.0):
            return None, accuracy
        return float(self.auroc.compute()), accuracy

    def reset(self) -> None:
        self.auroc.reset()
        self.accuracy.reset()
        self.positive_share.reset()


def mean_key(name: str) -> str:
    """The key of a logged name (``val/loss``) in :func:`epoch_means` (module names take no ``/``)."""
    return name.replace("/", "_")


def epoch_means(names: Iterable[str]) -> nn.ModuleDict:
    """A row-weighted mean per logged name, keyed by :func:`mean_key`: update with a batch's mean and
    its row count, log the metric itself (Lightning computes, gathers and resets it at epoch end)."""
    return nn.ModuleDict({mean_key(name): MeanMetric() for name in names})
