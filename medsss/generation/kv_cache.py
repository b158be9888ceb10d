"""A KV cache layer that writes decode steps into pre-allocated room instead of concatenating.

``DynamicLayer`` copies the whole cache on every decode step (``torch.cat``), which makes a step
cost grow with the prompt length. Our decode loop knows the final length up front (prompt plus
``max_tokens``), so each layer allocates it once and every step writes one slice in place.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """``DynamicLayer`` semantics (``keys``/``values`` are the filled part) with in-place appends."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._key_buffer is None or self._length + new > self._key_buffer.shape[-2]:
            self._grow(key_states, value_states, self._length + new)
        end = self._length + new
        key_buffer, value_buffer = self._buffers()
        key_buffer[:, :, self._length : end] = key_states
        value_buffer[:, :, self._length : end] = value_states
        self._length = end
        self._expose()
        return self.keys, self.values

    def place_prefixes(
        self, keys: list[torch.Tensor | None], values: list[torch.Tensor | None], width: int
    ) -> None:
        """Fill the first ``width`` positions with per-row prefixes, right-aligned (one copy).

        ``keys[row]`` is ``(1, heads, n, head_dim)`` or None for a row without a prefix; the
        positions before each prefix stay zero and must be masked out by the caller.
        """
        template = next(k for k in keys if k is not None)
        shape = (len(keys), template.shape[1], max(self.capacity, width), template.shape[3])
        key_buffer = self._key_buffer = template.new_zeros(shape)
        value_buffer = self._value_buffer = template.new_zeros(shape)
        for row, (k, v) in enumerate(zip(keys, values, strict=True)):
            if k is not None:
                assert v is not None  # a row has both a key and a value prefix, or neither
                key_buffer[row, :, width - k.shape[2] : width] = k[0]
                value_buffer[row, :, width - v.shape[2] : width] = v[0]
        self.lazy_initialization(template, template)
        self._length = width
        self._expose()

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
        room = max(self.capacity, needed, 2 * self._length)
        shape = (key_states.shape[0], key_states.shape[1], room, key_states.shape[3])
        keys = key_states.new_zeros(shape)
        values = value_states.new_zeros((*shape[:3], value_states.shape[3]))
        if self._key_buffer is not None and self._length:
            old_keys, old_values = self._buffers()
            keys[:, :, : self._length] = old_keys[:, :, : self._length]
            values[:, :, : self._length] = old_values[:, :, : self._length]
        self._key_buffer, self._value_buffer = keys, values

    def _buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value buffers, once allocated (they are always set together)."""
        assert self._key_buffer is not None and self._value_buffer is not None
        return self._key_buffer, self._value_buffer

    def _expose(self) -> None:
        key_buffer, value_buffer = self._buffers()
        self.keys = key_buffer[:, :, : self._length]
        self.values = value_buffer[:, :, : self._length]

    def get_seq_length(self) -> int:
        return self._length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._key_buffer is not None:
            key_buffer, value_buffer = self._buffers()
            self._key_buffer, self._value_buffer = key_buffer[indices], value_buffer[indices]
            self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._key_buffer is not None:
            key_buffer, value_buffer = self._buffers()
            self._key_buffer = key_buffer.repeat_interleave(repeats, dim=0)
            self._value_buffer = value_buffer.repeat_interleave(repeats, dim=0)
            self._expose()


def preallocated_cache(num_layers: int, capacity: int) -> Cache:
    """A cache of ``num_layers`` full-attention layers with room for ``capacity`` positions."""
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])
