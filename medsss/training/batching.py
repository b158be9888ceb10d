"""Length-grouped batches: similar lengths share a batch, so little compute goes to padding."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffle, cut into mega-batches of ``batch_size * group`` items, sort each by length, and
    batch it; the batches are shuffled again so training order stays random. ``group=1`` is plain
    shuffled batching. Deterministic per ``seed`` and epoch (``set_epoch``); under data
    parallelism each of ``num_replicas`` ranks takes its share of the same batch order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, group: int = 32, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        self.num_replicas, self.rank = num_replicas, rank
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group = max(1, group)
        self.seed = seed
        self.epoch = 0
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            block = sorted(order[start : start + span], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(block[i : i + self.batch_size] for i in range(0, len(block), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(batches)
        # Data parallel: every rank takes the same number of batches, rank r every r-th one.
        usable = len(batches) - len(batches) % self.num_replicas
        return batches[self.rank : usable : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        total = full if self.drop_last or not rest else full + 1
        return total // self.num_replicas
