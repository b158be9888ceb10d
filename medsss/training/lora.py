"""LoRA adapters via peft."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: Sequence[str] | str,
               task_type: str) -> nn.Module:
    """Wrap ``model`` so only LoRA weights train. ``target_modules="all-linear"`` adapts every
    linear layer (the paper's PRM setting)."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type=task_type)
    return get_peft_model(model, config)
