"""The one place PRM inputs are built, for training and for scoring alike (see
docs/method.md#prm-model-and-loss).

The input is the chat prompt of the question (assistant turn open) followed by each step's text
``Step k: ...`` plus ``"\\n\\n"``, every step tokenized on its own and concatenated. The score of
step k is read at the last token of that step's span. Step 0 is part of the input but never scored.
Because training and scoring both call :func:`prm_inputs`, the positions are the same token for
token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medsss.data.prompts import STEP_SEPARATOR, build_messages, step_prefix


@dataclass(frozen=True)
class PRMInput:
    input_ids: list[int]
    score_positions: list[int]  # one per step k >= 1: the index of the step's last token


def prm_inputs(tokenizer, question: str, steps: Sequence[str], system_prompt: str | None) -> PRMInput:
    """Token ids and score positions for one chain (``steps`` are the texts of steps 0..K)."""
    chat = tokenizer.apply_chat_template(
        list(build_messages(question, system_prompt)), tokenize=False, add_generation_prompt=True
    )
    ids = list(tokenizer(chat, add_special_tokens=False)["input_ids"])
    positions = []
    for index, text in enumerate(steps):
        piece = f"{step_prefix(index)} {text}{STEP_SEPARATOR}"
        ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if index >= 1:
            positions.append(len(ids) - 1)
    return PRMInput(ids, positions)


def collate_prm(
    items: Sequence[PRMInput],
    pad_id: int,
    labels: Sequence[Sequence[float]] | None = None,
    weights: Sequence[Sequence[float]] | None = None,
    penalties: Sequence[Sequence[float]] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``, ``attention_mask``, ``score_positions`` (-1 = none) and,
    when given, ``labels``, ``weights`` and ``penalties`` (the dual-sided PRM's penalty targets)
    aligned with the positions."""
    width = max(len(item.input_ids) for item in items)
    steps = max(len(item.score_positions) for item in items)
    batch = {
        "input_ids": torch.full((len(items), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(items), width, dtype=torch.long),
        "score_positions": torch.full((len(items), steps), -1, dtype=torch.long),
    }
    if labels is not None:
        batch["labels"] = torch.zeros(len(items), steps)
    if weights is not None:
        batch["weights"] = torch.zeros(len(items), steps)
    if penalties is not None:
        batch["penalties"] = torch.zeros(len(items), steps)
    for row, item in enumerate(items):
        n, k = len(item.input_ids), len(item.score_positions)
        batch["input_ids"][row, :n] = torch.tensor(item.input_ids)
        batch["attention_mask"][row, :n] = 1
        batch["score_positions"][row, :k] = torch.tensor(item.score_positions)
        if labels is not None:
            if len(labels[row]) != k:
                raise ValueError(f"row {row}: {len(labels[row])} labels for {k} scored steps")
            batch["labels"][row, :k] = torch.tensor(labels[row], dtype=torch.float)
        if weights is not None:
            batch["weights"][row, :k] = torch.tensor(weights[row], dtype=torch.float)
        if penalties is not None:
            if len(penalties[row]) != k:
                raise ValueError(f"row {row}: {len(penalties[row])} penalty targets for {k} scored steps")
            batch["penalties"][row, :k] = torch.tensor(penalties[row], dtype=torch.float)
    return batch
