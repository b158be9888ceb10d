"""The process reward model: a causal-LM body with a scalar head read at step ends.

``ProcessRewardModel`` holds the body (optionally LoRA-wrapped by peft) and a linear head; its
``step_logits`` gathers the head's logit at every score position. Training applies
binary cross-entropy with soft targets to exactly those logits; scoring reads their sigmoid.
``PRMScorer`` scores all steps of a batch of candidate solutions in one forward pass, for a model
of this layout or the released MedSSS layout (a two-class token classifier, score = softmax class 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsss.io import read_json
from medsss.training.prm_inputs import PRMInput, collate_prm, prm_inputs

HEAD_FILE = "value_head.safetensors"


class ProcessRewardModel(nn.Module):
    def __init__(self, body: nn.Module, hidden_size: int) -> None:
        super().__init__()
        # A Hugging Face model or peft's wrapper of one: save_pretrained is theirs, not nn.Module's.
        self.body: Any = body
        self.head = nn.Linear(hidden_size, 1)

    @classmethod
    def from_causal_lm(cls, path: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
        from transformers import AutoModel

        adapter = Path(path) / "adapter_config.json"
        if adapter.exists():  # a LoRA adapter saved unmerged: load its base, then the adapter
            from peft import PeftModel

            base_path = read_json(adapter)["base_model_name_or_path"]
            base = AutoModel.from_pretrained(base_path, dtype=dtype, trust_remote_code=trust_remote_code)
            body = PeftModel.from_pretrained(base, path)
            hidden = base.config.hidden_size
        else:
            body = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
            hidden = body.config.hidden_size
        # The head stays float32 whatever the body's dtype: it is trained in full (AdamW updates to
        # bfloat16 weights are lost below its precision) and is a single row of weights.
        model = cls(body, hidden)
        head = Path(path) / HEAD_FILE
        if head.exists():
            from safetensors.torch import load_file

            model.head.load_state_dict(load_file(str(head)))
        return model

    def token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # No KV cache: nothing decodes after this forward, and the cache would hold every layer's keys.
        output = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = output.last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def step_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    score_positions: torch.Tensor) -> torch.Tensor:
        """Logits at the score positions (batch x steps); padded positions (-1) give 0."""
        logits = self.token_logits(input_ids, attention_mask)
        gathered = logits.gather(1, score_positions.clamp(min=0))
        return gathered.masked_fill(score_positions < 0, 0.0)

    def save(self, out: str | Path) -> None:
        from safetensors.torch import save_file

        out = Path(out)
        self.body.save_pretrained(out, safe_serialization=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(out / HEAD_FILE))


def soft_bce(step_logits: torch.Tensor, labels: torch.Tensor, score_positions: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with soft targets over the real score positions only."""
    mask = (score_positions >= 0).float()
    if weights is not None:
        mask = mask * weights
    losses = nn.functional.binary_cross_entropy_with_logits(step_logits.float(), labels.float(),
                                                            reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1e-8)


class PRMScorer:
    """Scores every step k >= 1 of candidate solutions; one forward per batch of candidates."""

    def __init__(self, model: nn.Module, tokenizer, system_prompt: str | None, layout: str = "scalar",
                 device: str = "cpu", batch_size: int = 16) -> None:
        if layout not in ("scalar", "token_classifier"):
            raise ValueError(f"PRM layout '{layout}' must be 'scalar' or 'token_classifier'")
        # A ProcessRewardModel (layout scalar) or a Hugging Face token classifier (token_classifier).
        self.model: Any = model.to(device).eval()
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.layout = layout
        self.device = device
        self.batch_size = batch_size

    def inputs(self, question: str, steps: Sequence[str]) -> PRMInput:
        return prm_inputs(self.tokenizer, question, steps, self.system_prompt)

    def score(self, question: str, candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """For each candidate (the texts of its steps 0..K), the scores of steps 1..K."""
        return self.score_chains([(question, steps) for steps in candidates])

    @torch.inference_mode()
    def score_chains(self, chains: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """Scores of steps 1..K of each ``(question, steps)``; ``batch_size`` chains per forward."""
        items = [self.inputs(question, steps) for question, steps in chains]
        scores: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            batch = {k: v.to(self.device) for k, v in collate_prm(chunk, self._pad_id()).items()}
            probabilities = self._step_probabilities(batch)
            for item, row in zip(chunk, probabilities.tolist(), strict=True):
                scores.append(row[: len(item.score_positions)])
        return scores

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def _step_probabilities(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        positions = batch["score_positions"]
        if self.layout == "scalar":
            logits = self.model.step_logits(batch["input_ids"], batch["attention_mask"], positions)
            return torch.sigmoid(logits.float())
        # Released MedSSS PRM: token classification with two classes; the step score is P(class 1).
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        index = positions.clamp(min=0)[..., None].expand(-1, -1, logits.shape[-1])
        return torch.softmax(logits.gather(1, index).float(), dim=-1)[..., 1]
