"""Direct preference optimisation (DPO) of the policy with a LoRA adapter.

The reference policy is the policy's own base model: the same peft model with its adapter disabled
(``model.disable_adapter()``), so no second copy of the weights is held. Trained from the SFT policy
(``model.source=<sft run>/final/merged``), a fresh adapter starts at zero, so the policy starts
equal to its reference, as DPO assumes.

The sigmoid loss of Rafailov et al. (2023), with pi the policy, ref the reference, y_w the chosen
and y_l the rejected response of prompt x, and log-probabilities summed over the response tokens:

    L = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )

and the implicit rewards ``beta * (log pi(y|x) - log ref(y|x))`` of each side.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from medsss.training.modules import (
    LOSS_CHUNK_TOKENS,
    WARMUP_COSINE,
    OptimizerFactory,
    SchedulerFactory,
    _Trainable,
    causal_lm_parts,
)
from medsss.training.sft_inputs import IGNORE

# The defaults of conf/stage/dpo.yaml (the paper's DPO setting), for modules built in code.
DPO_OPTIMIZER: OptimizerFactory = partial(torch.optim.AdamW, lr=5e-7, weight_decay=0.0)
DPO_BETA = 0.1


def _token_logprobs(head: nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # cross_entropy is -log_softmax gathered at the target, in fp32, without keeping the softmax.
    return -F.cross_entropy(head(states).float(), targets, reduction="none")


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Per row, the sum of the fp32 log-probabilities of the labelled tokens (labels != IGNORE;
    position t predicts token t + 1). As in :func:`medsss.training.modules.response_loss`, the LM
    head runs only on positions whose next token is labelled, ``chunk_tokens`` at a time, each
    chunk recomputed in the backward pass, so fp32 logits for every position never exist."""
    targets = labels[:, 1:]
    scored = targets != IGNORE
    parts = causal_lm_parts(model)
    if parts is None:  # logits transformed after the head: the model's own logits, all positions
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logprobs = logits[:, :-1].float().log_softmax(-1)
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * scored).sum(-1)
    body, head = parts
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(targets)[scored]
    states, wanted = hidden[:, :-1][scored], targets[scored]
    totals = hidden.new_zeros(input_ids.shape[0], dtype=torch.float32)  # 0 for a row with no label
    if not wanted.numel():
        # Nothing labelled (responses cut off by max_length): zeros that still backpropagate.
        return totals + hidden.sum().float() * 0.0
    pieces = []
    for start in range(0, wanted.numel(), chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_token_logprobs, head, states[piece], wanted[piece],
                                     use_reentrant=False))
        else:
            pieces.append(_token_logprobs(head, states[piece], wanted[piece]))
    return totals.index_add(0, rows, torch.cat(pieces))


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the sigmoid DPO loss ``-logsigmoid(beta * ((pc - rc) - (pr - rr)))`` and the
    implicit rewards ``beta * (pc - rc)`` and ``beta * (pr - rr)`` (detached), from summed sequence
    log-probabilities of the policy (p) and the reference (r), chosen (c) and rejected (r)."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def dpo_metrics(losses: torch.Tensor, chosen_rewards: torch.Tensor,
                rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a batch reports: the mean loss, the mean reward of each side, the mean margin
    (chosen - rejected) and the share of pairs whose chosen side has the larger reward."""
    return {
        "loss": losses.mean(),
        "rewards_chosen": chosen_rewards.mean(),
        "rewards_rejected": rejected_rewards.mean(),
        "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
    }


def has_lora_adapter(model: nn.Module) -> bool:
    """Whether ``model`` is a peft model with a LoRA adapter, whose reference is itself with the
    adapter disabled."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return False
    return any(str(getattr(config.peft_type, "value", config.peft_type)) == "LORA"
               for config in model.peft_config.values())


class DPOModule(_Trainable):
    """The sigmoid DPO loss of a LoRA policy against itself with the adapter disabled. A batch is
    2B rows (:func:`medsss.training.dpo_inputs.collate_dpo`: chosen rows, then rejected rows); the
    policy scores all of them in one forward pass, and so does the reference, without gradients."""

    VALIDATION_MEANS = ("val/loss", "val/rewards_chosen", "val/rewards_rejected", "val/reward_margin",
                        "val/reward_accuracy")

    def __init__(self, model: nn.Module, beta: float = DPO_BETA, optimizer: OptimizerFactory = DPO_OPTIMIZER,
                 scheduler: SchedulerFactory | None = WARMUP_COSINE,
                 checkpoint_above_tokens: int | None = None, seed: int | None = None) -> None:
        if not has_lora_adapter(model):
            raise ValueError(
                "DPO here needs a LoRA policy (stage.lora.enabled=true): its reference is the same model "
                "with the adapter disabled. Full fine-tuning would need a second, frozen copy of the "
                "model as the reference, which this module does not keep.")
        if beta <= 0:
            raise ValueError(f"stage.beta must be positive, not {beta}")
        super().__init__(optimizer, scheduler, checkpoint_above_tokens, seed)
        self.model = model
        self.beta = beta

    def policy_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_logprobs(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"])

    def reference_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The base model's log-probabilities: adapter off, no gradients, no dropout (eval mode for
        this pass only, so the reference is the same number every time it is asked)."""
        peft_model: Any = self.model  # a peft model (checked in __init__): disable_adapter is its own
        was_training = peft_model.training
        peft_model.eval()
        try:
            with torch.no_grad(), peft_model.disable_adapter():
                return self.policy_logprobs(batch)
        finally:
            peft_model.train(was_training)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pair losses, chosen rewards and rejected rewards of a 2B-row batch."""
        pairs = batch["input_ids"].shape[0] // 2
        policy = self.policy_logprobs(batch)
        reference = self.reference_logprobs(batch)
        return dpo_loss(policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:], self.beta)

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        losses, chosen, rejected = self(batch)
        logged = dpo_metrics(losses, chosen, rejected)
        pairs = losses.shape[0]
        for name, value in logged.items():
            prog_bar = name in ("loss", "reward_accuracy")
            if split == "train":
                self.log(f"train/{name}", value, on_step=True, prog_bar=prog_bar, batch_size=pairs)
            else:  # pair-weighted epoch means, gathered across ranks
                self.log_validation_mean(f"{split}/{name}", value, pairs, prog_bar=prog_bar)
        return logged["loss"]

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")
