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
    sorted by length. Each data-parallel rank gets its share of batches and of the validation items
    (every item on exactly one rank: none padded or repeated, so metrics gathered across ranks are
    those of one process).

    Checkpoints hold where training is in the batch order (:meth:`state_dict`: the epoch and the
    batches trained in it), so a run resumed mid-epoch continues with the batches it had not seen."""

    def __init__(self, train: Sequence[Any], val: Sequence[Any], collate: Callable[[list[Any]], dict],
                 length: Callable[[Any], int], batch_size: int | None = 8, group: int = 32, seed: int = 0,
                 max_tokens: int | None = None) -> None:
        super().__init__()
        self.train_items, self.val_items = list(train), list(val)
        self.collate, self.length = collate, length
        self.batch_size, self.group, self.seed, self.max_tokens = batch_size, group, seed, max_tokens
        self.train_sampler: LengthGroupedBatchSampler | None = None
        self._resume: dict[str, int] | None = None  # a checkpoint's sampler state, for train_dataloader
        self._warn_oversized()

    def state_dict(self) -> dict[str, Any]:
        """The training sampler's place, from the trainer's count of the batches this epoch trained on
        (the loader may have fetched further). Lightning saves it in every checkpoint."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or self.train_sampler is None:
            return {}
        trained = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        # Lightning also ends an epoch at num_training_batches (its count at the first epoch).
        done = trained >= trainer.num_training_batches
        return {"train_sampler": self.train_sampler.state_at(trainer.current_epoch, trained, done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by Lightning on resume, before :meth:`train_dataloader` (single-process and ddp; fsdp
        and deepspeed restore after it, and their first resumed epoch restarts from its beginning)."""
        state = state_dict.get("train_sampler")
        if state is None:
            return
        if self.train_sampler is None:
            self._resume = state
        else:
            log.warning("the checkpoint's place in the batch order came after the training batches were "
                        "built (a strategy that restores after setup): the resumed epoch replays its batches")

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
        if self._resume is not None:
            sampler.load_state_dict(self._resume)
            self._resume = None
        self.train_sampler = sampler
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
