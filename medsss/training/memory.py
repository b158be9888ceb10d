"""Hand freed heap memory back to the OS while training on CPU (Linux, glibc).

With gradient checkpointing the live memory of a step is small (each layer's input and one layer's
activations), but glibc's malloc keeps the memory of freed activations in its heap: the long-lived
checkpoint tensors sit between the freed blocks, the next layer's tensors do not fit the holes,
and the heap grows layer after layer. Measured on SmolLM2-135M, a PRM step of 3 x 650 tokens
peaked at 3.5 GB RSS with 1.3 GB live. ``malloc_trim(0)`` returns the free pages of the heap to
the OS; calling it before every n-th decoder layer bounds the growth to n layers' worth, at the
cost of faulting those pages in again (every 10th layer: 2.2 GB peak, about 10% slower; every
layer: 1.4 GB, about 22% slower). Other platforms' allocators behave differently: there this is a
no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from transformers.modeling_layers import GradientCheckpointingLayer

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], None] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def decoder_layers(model: nn.Module) -> list[GradientCheckpointingLayer]:
    """The repeated blocks of a Hugging Face model (the modules gradient checkpointing wraps)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def release_memory_every(model: nn.Module, layers: int | None,
                         release: Callable[[], None] | None = None) -> int:
    """Before every ``layers``-th decoder layer (forward and its recomputation alike), give freed
    heap memory back to the OS. Returns the number of hooks placed (0 when ``layers`` is
    None/0, the model has no decoder layers, or the platform has no ``malloc_trim``)."""
    if not layers:
        return 0
    if layers < 0:
        raise ValueError(f"stage.release_memory_every must be a positive layer count or null, not {layers}")
    release = release or _malloc_trim()
    if release is None:
        log.info("no malloc_trim in this C library: stage.release_memory_every has no effect here")
        return 0

    def before_layer(module: nn.Module, args) -> None:
        release()

    chosen = decoder_layers(model)[::layers]
    for layer in chosen:
        layer.register_forward_pre_hook(before_layer)
    return len(chosen)


def checkpointable_layers(model: nn.Module) -> list[Any]:  # transformers layers, duck-typed
    """The decoder layers that ``gradient_checkpointing_enable`` prepared (they can switch
    checkpointing per forward pass)."""
    return [layer for layer in decoder_layers(model)
            if getattr(layer, "_gradient_checkpointing_func", None) is not None]


def set_layer_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Switch gradient checkpointing of the decoder layers that ``gradient_checkpointing_enable``
    prepared, for the next forward passes; returns how many layers were switched."""
    prepared = checkpointable_layers(model)
    for layer in prepared:
        layer.gradient_checkpointing = enabled
    return len(prepared)
