"""One Lightning data module for both training sets: prebuilt items, token-budget batches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import lightning as L
from torch.utils.data import DataLoader, Dataset

from medsss.training.batching import LengthGroupedBatchSampler, budget_batches

log = logging.getLogger(__name__)


class ItemsDataModule(L.LightningDataModule):
    """Serves lists of already-tokenized items in batches bounded by ``max_tokens`` padded tokens
    and/or ``batch_size`` rows (see :mod:`medsss.training.batching`). ``group`` sets length
    grouping of training batches (1 = shuffled padding); validation batches are cut from the items
    sorted by length. Each data-parallel rank gets its share of batches and of the validation items."""

    def __init__(self, train: Sequence[Any], val: Sequence[Any], collate: Callable[[list[Any]], dict],
                 length: Callable[[Any], int], batch_size: int | None = 8, group: int = 32, seed: int = 0,
                 max_tokens: int | None = None) -> None:
        super().__init__()
        self.train_items, self.val_items = list(train), list(val)
        self.collate, self.length = collate, length
        self.batch_size, self.group, self.seed, self.max_tokens = batch_size, group, seed, max_tokens
        self._warn_oversized()

    def _warn_oversized(self) -> None:
        if self.max_tokens is None:
            return
        lengths = [self.length(x) for x in [*self.train_items, *self.val_items]]
        over = [n for n in lengths if n > self.max_tokens]
        if over:
            log.warning("%d of %d items are longer than the batch budget of %d tokens (longest %d): each "
                        "forms a batch of its own", len(over), len(lengths), self.max_tokens, max(over))

    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._replicas()
        sampler = LengthGroupedBatchSampler([self.length(x) for x in self.train_items], self.batch_size,
                                            self.group, self.seed, num_replicas=world, rank=rank,
                                            max_tokens=self.max_tokens)
        return DataLoader(_dataset(self.train_items), batch_sampler=sampler, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._replicas()
        items = self.val_items[rank::world]
        lengths = [self.length(x) for x in items]
        longest_first = sorted(range(len(items)), key=lambda i: lengths[i], reverse=True)
        batches = budget_batches(longest_first, lengths, self.max_tokens, self.batch_size)
        return DataLoader(_dataset(items), batch_sampler=batches, collate_fn=self.collate)


def _dataset(items: list[Any]) -> Dataset[Any]:
    # A list is a map-style dataset (__getitem__ and __len__), which DataLoader takes as it is;
    # torch's annotation asks for the Dataset class.
    return cast("Dataset[Any]", items)
