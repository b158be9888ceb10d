"""Policy SFT inputs: the chat prompt, then the solution as the assistant's reply; loss on the reply only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medsss.data.prompts import build_messages, render_steps

IGNORE = -100  # label id that cross-entropy skips


@dataclass(frozen=True)
class SFTInput:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens


def chat_prompt_ids(tokenizer, question: str, system_prompt: str | None) -> list[int]:
    """The tokens of the chat prompt synthesis used: system prompt, question, open assistant turn."""
    chat = tokenizer.apply_chat_template(
        list(build_messages(question, system_prompt)), tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(chat, add_special_tokens=False)["input_ids"])


def sft_inputs(tokenizer, question: str, steps: Sequence[str], system_prompt: str | None,
               max_length: int | None = None) -> SFTInput:
    """The same chat prompt synthesis used, followed by the rendered steps and the end of turn."""
    prompt = chat_prompt_ids(tokenizer, question, system_prompt)
    response = list(tokenizer(render_steps(steps), add_special_tokens=False)["input_ids"])
    response.append(tokenizer.eos_token_id)  # the model learns to end its turn
    ids, labels = prompt + response, [IGNORE] * len(prompt) + response
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return SFTInput(ids, labels)


def collate_sft(items: Sequence[SFTInput], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(item.input_ids) for item in items)
    batch = {
        "input_ids": torch.full((len(items), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(items), width, dtype=torch.long),
        "labels": torch.full((len(items), width), IGNORE, dtype=torch.long),
    }
    for row, item in enumerate(items):
        n = len(item.input_ids)
        batch["input_ids"][row, :n] = torch.tensor(item.input_ids)
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.tensor(item.labels)
    return batch
