"""Training memory bounds: checkpointing switched per batch by its padded size, freed heap handed back."""

from __future__ import annotations

import torch
from conftest import compose
from transformers import AutoModelForCausalLM

from medsss.training.memory import decoder_layers, release_memory_every, set_layer_checkpointing
from medsss.training.modules import PolicySFTModule

TINY = ["model=tiny", "stage.lora.r=4", "stage.lora.alpha=8"]


def _layers_checkpointing(model) -> list[bool]:
    return [layer.gradient_checkpointing for layer in decoder_layers(model)]


def test_auto_checkpointing_recomputes_only_batches_over_the_budget(tiny_model):
    from medsss.stages.train import checkpoint_above_tokens, policy_model

    cfg = compose(["+experiment=sft_policy", "data.trees=unused", *TINY, "stage.max_batch_tokens=12"])
    assert checkpoint_above_tokens(cfg) == 12
    module = PolicySFTModule(policy_model(cfg, tiny_model.resolve(), False), checkpoint_above_tokens=12)
    module.on_train_batch_start({"attention_mask": torch.ones(2, 6)}, 0)  # 12 padded tokens: within
    assert not any(_layers_checkpointing(module.model)) and module.checkpointed_batches == 0
    module.on_train_batch_start({"attention_mask": torch.ones(1, 13)}, 1)  # a chain over the budget
    assert all(_layers_checkpointing(module.model)) and module.checkpointed_batches == 1
    module.on_train_batch_start({"attention_mask": torch.ones(3, 4)}, 2)
    assert not any(_layers_checkpointing(module.model)) and module.checkpointed_batches == 1


def test_checkpointing_true_and_false_leave_the_model_alone(tiny_model):
    from medsss.stages.train import checkpoint_above_tokens

    for value in ("true", "false"):
        cfg = compose(["+experiment=prm_soft", "data.trees=unused", *TINY, f"stage.gradient_checkpointing={value}"])
        assert checkpoint_above_tokens(cfg) is None
    cfg = compose(["+experiment=prm_soft", "data.trees=unused", *TINY, "stage.max_batch_tokens=null",
                   "stage.batch_size=4"])
    assert checkpoint_above_tokens(cfg) == 0  # auto without a token budget: every batch


def test_layers_not_prepared_for_checkpointing_are_not_switched(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model.resolve())
    assert set_layer_checkpointing(model, True) == 0
    model.gradient_checkpointing_enable()
    assert set_layer_checkpointing(model, False) == len(decoder_layers(model)) > 0


def test_freed_memory_is_released_before_every_nth_layer(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model.resolve())
    layers = len(decoder_layers(model))
    calls = []
    hooks = release_memory_every(model, 1, release=lambda: calls.append(1))
    assert hooks == layers
    model(input_ids=torch.tensor([[1, 2, 3]]))
    assert len(calls) == layers  # once per layer per forward
    assert release_memory_every(model, None, release=lambda: calls.append(1)) == 0
    other = AutoModelForCausalLM.from_pretrained(tiny_model.resolve())
    assert release_memory_every(other, layers + 5, release=lambda: None) == 1  # the first layer only
