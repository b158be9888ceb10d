"""The models the training stages train, loaded and saved: the policy (a causal LM) and the PRM
(a causal LM's body with a scalar head), each with its dtype, gradient checkpointing and LoRA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsss.generation.hf import resolve_dtype


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: int
    dropout: float
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class TrainingModelSettings:
    """How a model to train is loaded.

    ``dtype``: float32 | bfloat16 | auto (bfloat16 on CUDA, float32 on CPU, by
    :func:`medsss.generation.hf.resolve_dtype`; the policy's CPU probe times decode steps, which
    say nothing of training's full sequences and backward pass). ``gradient_checkpointing``: true
    (every batch), false (none) or ``auto`` (the layers are prepared; the module switches it per
    batch, see :func:`checkpoint_above_tokens`). ``release_memory_every``: on CPU, hand freed heap
    memory back to the OS before every n-th decoder layer (None: never). ``lora``: None trains every
    weight.
    """

    dtype: str = "float32"
    device: str = "cpu"
    gradient_checkpointing: bool | str = False
    release_memory_every: int | None = None
    lora: LoraSettings | None = None

    def __post_init__(self) -> None:
        value = self.gradient_checkpointing
        if not (value is True or value is False or value == "auto"):
            raise ValueError(f"stage.gradient_checkpointing must be true, false or auto, not {value!r}")

    def torch_dtype(self, model: str | None = None) -> torch.dtype:
        """The dtype to load ``model`` (a folder) in. ``auto``: bfloat16 on CUDA; on CPU with LoRA,
        the faster of bfloat16 and float32 for a training step of this model on this machine (the
        dtype probe, cached per machine like the policy's); float32 on CPU without LoRA, because
        AdamW updates to bfloat16 weights are lost below bfloat16's precision (with LoRA only the
        frozen base is bfloat16: peft keeps the adapters, and the PRM head stays, in float32)."""
        if self.dtype == "auto" and self.device == "cpu" and self.lora is not None and model is not None:
            from medsss.generation.dtype import choose_dtype

            return choose_dtype(model, "cpu", "auto", workload="train")
        return resolve_dtype(str(self.dtype), self.device)


def training_device(accelerator: str, cuda_available: bool | None = None) -> str:
    """``cuda`` when a Lightning ``accelerator`` trains on GPUs, else ``cpu``: the device the dtype
    is chosen for."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_available):
        return "cuda"
    return "cpu"


def checkpoint_above_tokens(gradient_checkpointing: bool | str, max_batch_tokens: int | None) -> int | None:
    """For ``gradient_checkpointing=auto``, the padded batch size above which a batch is
    checkpointed: ``max_batch_tokens``, so only a chain longer than the budget (alone in its batch)
    pays for the recomputation; 0 (every batch) without a token budget. None otherwise."""
    if gradient_checkpointing != "auto":
        return None
    return max_batch_tokens or 0


def trainable_policy(path: str, settings: TrainingModelSettings,
                     trust_remote_code: bool = False) -> nn.Module:
    """The causal LM SFT trains: its dtype, LoRA, and its layers prepared for gradient
    checkpointing unless ``gradient_checkpointing=false``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=settings.torch_dtype(path),
                                                 trust_remote_code=trust_remote_code)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    _release_memory(model, settings)
    return _with_lora(model, settings.lora, "CAUSAL_LM")


def trainable_reward_model(path: str, settings: TrainingModelSettings, trust_remote_code: bool = False,
                           heads: Any = None):
    """The PRM: the causal LM's body (no LM head: the PRM reads hidden states) with a scalar head
    (and a penalty head when ``heads``, a :class:`~medsss.training.prm_model.PRMHeadConfig`, says
    dual; None: single), dtype, gradient checkpointing and LoRA (on the body) as for the policy."""
    from medsss.training.prm_model import ProcessRewardModel

    model = ProcessRewardModel.from_causal_lm(path, settings.torch_dtype(path), trust_remote_code, heads)
    if settings.gradient_checkpointing:
        model.body.gradient_checkpointing_enable()
    _release_memory(model.body, settings)
    model.body = _with_lora(model.body, settings.lora, "FEATURE_EXTRACTION")
    return model


def _release_memory(model: nn.Module, settings: TrainingModelSettings) -> None:
    # GPUs keep their own caching allocator; the glibc heap on CPU keeps freed memory otherwise.
    if settings.device != "cpu":
        return
    from medsss.training.memory import release_memory_every

    release_memory_every(model, settings.release_memory_every)


def _with_lora(model: nn.Module, lora: LoraSettings | None, task_type: str) -> nn.Module:
    if lora is None:
        return model
    from medsss.training.lora import apply_lora

    return apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, task_type)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> tuple[Any, int]:
    """The tokenizer at ``path`` and the id that pads batches (its EOS when it has no pad token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return tokenizer, pad


def save_policy(model: Any, tokenizer: Any, out: Path, merge: bool) -> None:
    """The adapter (or full weights) in Hugging Face format, plus a merged model on request: the
    generation backend loads ``final/merged`` (or ``final``) as the next round's policy."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged", safe_serialization=True)
        tokenizer.save_pretrained(out / "merged")


def save_reward_model(model: Any, tokenizer: Any, out: Path, merge: bool) -> None:
    """The PRM (body, ``value_head.safetensors``, a dual PRM's ``penalty_head.safetensors`` and
    ``prm_config.json``) with its tokenizer; ``merge`` folds a LoRA adapter into the body first
    (unmerged, the adapter is saved and loads on its base)."""
    if merge:
        model.body = model.body.merge_and_unload()
    model.save(out)
    tokenizer.save_pretrained(out)
