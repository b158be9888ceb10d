"""Batches that bound memory: by a budget of padded tokens, with similar lengths grouped together.

Training memory grows with the padded size of a batch (rows x its longest row), not with its row
count, so batches are cut by ``max_tokens``: a batch takes items while ``rows * longest <=
max_tokens`` (and, when ``batch_size`` is set, ``rows <= batch_size``). An item longer than the
budget on its own forms a batch of one. Length grouping keeps the padding small: similar lengths
share a batch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


def budget_batches(order: Sequence[int], lengths: Sequence[int], max_tokens: int | None,
                   max_rows: int | None) -> list[list[int]]:
    """Cut ``order`` into consecutive batches, each as large as the limits allow: ``max_tokens``
    bounds rows x longest length, ``max_rows`` bounds rows (None: no such limit). A batch is
    closed when the next item would break a limit; an item alone always forms a batch."""
    if max_tokens is None and max_rows is None:
        raise ValueError("batches need a limit: set max_tokens (stage.max_batch_tokens) "
                         "or max_rows (stage.batch_size)")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        widest = max(longest, lengths[index])
        over_tokens = max_tokens is not None and (len(current) + 1) * widest > max_tokens
        over_rows = max_rows is not None and len(current) + 1 > max_rows
        if current and (over_tokens or over_rows):
            batches.append(current)
            current, widest = [], lengths[index]
        current.append(index)
        longest = widest
    if current:
        batches.append(current)
    return batches


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffle, cut into blocks of ``group`` batches' worth of items, sort each block by length
    (longest first) and cut it into batches by :func:`budget_batches`; the batches are shuffled
    again so training order stays random. ``group=1`` is plain shuffled batching (padding to the
    longest row of a random batch). A block holds ``group * batch_size`` items, or, with no row
    limit, ``group`` times the rows the token budget allows at the mean length.

    Deterministic per ``seed`` and epoch (``set_epoch``); under data parallelism each of
    ``num_replicas`` ranks takes its share of the same batch order."""

    def __init__(self, lengths: Sequence[int], batch_size: int | None = None, group: int = 32, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, max_tokens: int | None = None) -> None:
        if max_tokens is None and batch_size is None:
            raise ValueError("set max_tokens (stage.max_batch_tokens) or batch_size (stage.batch_size)")
        for name, limit in (("max_tokens", max_tokens), ("batch_size", batch_size)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be a positive integer or None, not {limit}")
        self.lengths = list(lengths)
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.group = max(1, group)
        self.seed = seed
        self.epoch = 0
        self.num_replicas, self.rank = num_replicas, rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def block_size(self) -> int:
        """Items per sorted block: ``group`` batches' worth."""
        if self.batch_size is not None:
            rows = self.batch_size
        else:
            assert self.max_tokens is not None  # __init__ requires max_tokens or batch_size
            mean = sum(self.lengths) / max(1, len(self.lengths))
            rows = max(1, int(self.max_tokens // max(1.0, mean)))
        return self.group * rows

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        # group=1: no sorting, so one block is the whole shuffled order (naive padded batches).
        span = self.block_size() if self.group > 1 else max(1, len(order))
        batches = []
        for start in range(0, len(order), span):
            block = order[start : start + span]
            if self.group > 1:
                block = sorted(block, key=lambda i: self.lengths[i], reverse=True)
            batches.extend(budget_batches(block, self.lengths, self.max_tokens, self.batch_size))
        rng.shuffle(batches)
        # Data parallel: every rank takes the same number of batches, rank r every r-th one.
        usable = len(batches) - len(batches) % self.num_replicas
        return batches[self.rank : usable : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
