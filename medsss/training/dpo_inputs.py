"""DPO inputs: one preference pair as two token sequences under one prompt, and their batches.

Each sequence is what SFT trains on (:func:`medsss.training.sft_inputs.sft_inputs`): the chat prompt
with the assistant turn open, then the rendered steps ``Step 0: ...\\n\\nStep 1: ...`` tokenized as
one string, as the policy reads a pre-filled solution when it generates. Two differences:

- step 0, the shared start of both responses, carries the ignore label with the prompt: the log
  probabilities are summed over steps 1..d only (a token that straddles the end of step 0 and the
  start of step 1 is scored; it is the same token in both sequences);
- the end of turn closes a path that ends at a finish node (a whole solution) and only such a path:
  a partial path stops after its last step, so the model is never taught that a solution ends there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medsss.data.prompts import STEP_SEPARATOR, render_steps
from medsss.training.sft_inputs import IGNORE, SFTInput, chat_prompt_ids, collate_sft


@dataclass(frozen=True)
class DPOInput:
    """One pair, tokenized: the chosen and the rejected sequence (labels IGNORE outside steps 1..d)."""

    chosen: SFTInput
    rejected: SFTInput

    @property
    def padded_tokens(self) -> int:
        """What the pair adds to a batch: two rows padded to the longer one."""
        return 2 * max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def path_inputs(tokenizer, prompt: list[int], steps: Sequence[str], finished: bool,
                max_length: int | None = None) -> SFTInput:
    """``prompt`` followed by the rendered ``steps`` (step 0 first) and, when ``finished``, the end
    of turn; labels on the tokens after step 0 only."""
    if len(steps) < 2:
        raise ValueError(f"a DPO path needs a step after step 0, got {len(steps)} step(s): {list(steps)[:1]}")
    response = list(tokenizer(render_steps(steps), add_special_tokens=False)["input_ids"])
    step_zero = tokenizer(render_steps(steps[:1]) + STEP_SEPARATOR, add_special_tokens=False)["input_ids"]
    # The tokens of step 0 as the whole response tokenizes it: every token up to the first one
    # that differs from step 0 tokenized alone (a token spanning the boundary is scored).
    shared = _common_prefix(step_zero, response)
    if finished:
        response.append(tokenizer.eos_token_id)
    ids = prompt + response
    labels = [IGNORE] * (len(prompt) + shared) + response[shared:]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return SFTInput(ids, labels)


def dpo_inputs(tokenizer, question: str, chosen: Sequence[str], rejected: Sequence[str],
               chosen_finished: bool, rejected_finished: bool, system_prompt: str | None,
               max_length: int | None = None) -> DPOInput:
    """The pair of one ``dpo.jsonl`` row under the chat prompt SFT and synthesis use."""
    prompt = chat_prompt_ids(tokenizer, question, system_prompt)
    return DPOInput(path_inputs(tokenizer, prompt, chosen, chosen_finished, max_length),
                    path_inputs(tokenizer, prompt, rejected, rejected_finished, max_length))


def collate_dpo(items: Sequence[DPOInput], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of 2B rows for B pairs: rows 0..B-1 are the chosen sequences, rows B..2B-1 the
    rejected ones in the same order (row i and row B + i are one pair), right-padded as for SFT.
    One forward pass then scores both sides."""
    return collate_sft([item.chosen for item in items] + [item.rejected for item in items], pad_id)
