"""Learning-rate schedules: linear warm-up, then cosine decay to 0 or a constant rate.

:func:`warmup_scheduler` is a scheduler factory (``conf/optim/*.yaml`` binds its settings with
``_partial_``); the Lightning modules call it with the optimizer and the number of optimizer
steps once training starts.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "constant")


def warmup_cosine(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 0 (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.03,
                     schedule: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """Warm up over ``warmup_ratio`` of ``total_steps``, then ``schedule`` (cosine or constant)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule '{schedule}' must be 'cosine' or 'constant'")
    total = max(1, int(total_steps))
    warmup = int(warmup_ratio * total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lambda step: warmup_cosine(step, total, warmup, schedule))
