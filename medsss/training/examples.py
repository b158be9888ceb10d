"""Training examples from view rows (:mod:`medsss.labels.views`): a held-out split by problem,
then tokenized items in token-budget batches for SFT, DPO and the PRM."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medsss.training.datamodule import ItemsDataModule
from medsss.training.dpo_inputs import collate_dpo, dpo_inputs
from medsss.training.prm_inputs import collate_prm, prm_inputs
from medsss.training.sft_inputs import collate_sft, sft_inputs


@dataclass(frozen=True)
class Batching:
    """Batches of at most ``max_batch_tokens`` padded tokens (rows x longest row) and/or
    ``batch_size`` rows, from length groups of ``length_group`` batches (1: shuffled)."""

    max_batch_tokens: int | None = None
    batch_size: int | None = None
    length_group: int = 32
    seed: int = 0


def problem_bucket(problem_id: str) -> float:
    """A stable number in [0, 1] per problem id (the same on every machine and run)."""
    return int(hashlib.sha1(problem_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_by_problem(rows: list[dict[str, Any]], fraction: float) -> tuple[list, list]:
    """A stable train / held-out split by problem (all chains of a problem on one side). With a
    positive fraction and at least two problems, at least one problem is held out."""
    ids = sorted({r["id"] for r in rows}, key=problem_bucket)
    held = {i for i in ids if problem_bucket(i) < fraction}
    if fraction > 0 and not held and len(ids) >= 2:
        held = {ids[0]}
    return [r for r in rows if r["id"] not in held], [r for r in rows if r["id"] in held]


def _datamodule(train: list, val: list, collate, length, batching: Batching) -> ItemsDataModule:
    return ItemsDataModule(train, val, collate, length, batch_size=batching.batch_size,
                           group=batching.length_group, seed=batching.seed,
                           max_tokens=batching.max_batch_tokens)


def sft_datamodule(train_rows: Sequence[dict[str, Any]], val_rows: Sequence[dict[str, Any]], tokenizer: Any,
                   pad_id: int, system_prompt: str | None, max_length: int,
                   batching: Batching) -> ItemsDataModule:
    """SFT rows (question, steps) as chat-formatted items whose loss covers the response only."""

    def items(rows: Sequence[dict[str, Any]]) -> list:
        return [sft_inputs(tokenizer, r["question"], r["steps"], system_prompt, max_length) for r in rows]

    return _datamodule(items(train_rows), items(val_rows), lambda batch: collate_sft(batch, pad_id),
                       lambda item: len(item.input_ids), batching)


def dpo_datamodule(train_rows: Sequence[dict[str, Any]], val_rows: Sequence[dict[str, Any]], tokenizer: Any,
                   pad_id: int, system_prompt: str | None, max_length: int,
                   batching: Batching) -> ItemsDataModule:
    """DPO rows (question, chosen and rejected steps, whether each is finished) as pairs of
    sequences. The token budget counts both rows of a pair (its length is twice the longer one),
    and ``batch_size`` counts pairs (2 rows each)."""

    def items(rows: Sequence[dict[str, Any]]) -> list:
        return [dpo_inputs(tokenizer, r["question"], r["chosen"], r["rejected"], r["chosen_finished"],
                           r["rejected_finished"], system_prompt, max_length) for r in rows]

    return _datamodule(items(train_rows), items(val_rows), lambda batch: collate_dpo(batch, pad_id),
                       lambda item: item.padded_tokens, batching)


def prm_datamodule(train_rows: Sequence[dict[str, Any]], val_rows: Sequence[dict[str, Any]], tokenizer: Any,
                   pad_id: int, system_prompt: str | None, batching: Batching) -> ItemsDataModule:
    """PRM rows (question, steps, labels, optional weights and penalty targets) as items scored
    at each step's end."""

    def items(rows: Sequence[dict[str, Any]]) -> list:
        return [(prm_inputs(tokenizer, r["question"], r["steps"], system_prompt), r["labels"],
                 r.get("weights"), r.get("penalties")) for r in rows]

    def collate(batch: list) -> dict:
        weights = [w for _, _, w, _ in batch]
        penalties = [p for *_, p in batch]
        # A batch is weighted only when every row has weights (weight_rollouts is all or nothing);
        # penalty targets likewise (prm_rows writes them for every row or none).
        return collate_prm([i for i, *_ in batch], pad_id, labels=[label for _, label, *_ in batch],
                           weights=weights if all(w is not None for w in weights) else None,
                           penalties=penalties if all(p is not None for p in penalties) else None)

    return _datamodule(items(train_rows), items(val_rows), collate, lambda item: len(item[0].input_ids),
                       batching)
