"""One Lightning data module for both training sets: prebuilt items, length-grouped batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from medsss.training.batching import LengthGroupedBatchSampler


class ItemsDataModule(L.LightningDataModule):
    """Serves lists of already-tokenized items. ``group`` sets length grouping (1 = shuffled
    padding); each data-parallel rank gets its share of batches and of the validation items."""

    def __init__(self, train: Sequence[Any], val: Sequence[Any], collate: Callable[[list[Any]], dict],
                 length: Callable[[Any], int], batch_size: int = 8, group: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.train_items, self.val_items = list(train), list(val)
        self.collate, self.length = collate, length
        self.batch_size, self.group, self.seed = batch_size, group, seed

    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._replicas()
        sampler = LengthGroupedBatchSampler([self.length(x) for x in self.train_items], self.batch_size,
                                            self.group, self.seed, num_replicas=world, rank=rank)
        return DataLoader(self.train_items, batch_sampler=sampler, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._replicas()
        return DataLoader(self.val_items[rank::world], batch_size=self.batch_size, collate_fn=self.collate)
