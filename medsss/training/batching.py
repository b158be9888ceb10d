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
    ``num_replicas`` ranks takes its share of the same batch order.

    Resumable: ``start`` batches of the epoch's order (all ranks' together) are skipped, so a run
    resumed mid-epoch trains on exactly the batches an uninterrupted run would have.
    :meth:`state_at` is the state after a given number of this rank's batches, :meth:`load_state_dict`
    restores it at the next iteration; ``len()`` stays the whole epoch's count (Lightning counts the
    batches a resumed epoch already had itself). Resume with as many ranks as the state was saved by."""

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
        self.start = 0  # batches of this epoch's order, all ranks' together, already trained on
        self._resume: tuple[int, int] | None = None  # (epoch, start) loaded, applied by __iter__
        self.num_replicas, self.rank = num_replicas, rank

    @property
    def sampler(self) -> LengthGroupedBatchSampler:
        # Lightning calls set_epoch on ``loader.sampler`` and ``loader.batch_sampler.sampler`` (where
        # torch's BatchSampler keeps its item sampler) at every epoch start; this sampler orders the
        # items itself. Without it set_epoch was never called and every epoch repeated epoch 0's order.
        return self

    def set_epoch(self, epoch: int) -> None:
        """Order the batches of ``epoch``: from its start, unless it is the epoch a resumed state is in."""
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def state_at(self, epoch: int, batches: int, epoch_done: bool = False) -> dict[str, int]:
        """The state after this rank trained on ``batches`` batches of ``epoch`` (every rank as many),
        the sampler being at that epoch: once the epoch is used up (or ``epoch_done``), the start of the
        next one. It names the seed and the item count, which :meth:`load_state_dict` checks."""
        if epoch_done or batches >= len(self):
            epoch, batches = epoch + 1, 0
        return {"seed": self.seed, "items": len(self.lengths), "epoch": epoch,
                "start": batches * self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where :meth:`state_at` left off (any rank's state: they are the same), from the
        next iteration on. Not at once: Lightning sizes its epochs by ``len()`` before it iterates, and
        an uninterrupted run sized them at epoch 0 (with a token budget epochs differ in batches)."""
        if (state["seed"], state["items"]) != (self.seed, len(self.lengths)):
            raise ValueError(
                f"the checkpoint's batch order is for {state['items']} training items shuffled with seed "
                f"{state['seed']}, this run has {len(self.lengths)} items and seed {self.seed}: resume with "
                "the data and seed the checkpoint was trained with, or start afresh (stage.ckpt_path=null)")
        self._resume = (int(state["epoch"]), int(state["start"]))

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

    def remaining(self) -> list[list[int]]:
        """This rank's batches of the epoch after the first ``start`` of the order (all ranks')."""
        skipped = -(-self.start // self.num_replicas)  # as many for every rank: they must step together
        return self.batches()[skipped:]

    def __iter__(self) -> Iterator[list[int]]:
        if self._resume is not None:
            (self.epoch, self.start), self._resume = self._resume, None
        return iter(self.remaining())

    def __len__(self) -> int:
        return len(self.batches())
