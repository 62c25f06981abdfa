"""Token-slot KV pool of a sampling tree.

Every token fed through the model gets one *slot* in a pool of key/value tensors that lives on the model's
device (per layer: ``[capacity, kv_heads, head_dim]``). A tree node owns the slots of its tokens; a sequence's
context is the concatenation of its ancestors' slots, so children share their parent's prefix without any
copy of the stored cache. For a batched forward the engine gathers each row's context by index into a
``KVCache`` (a temporary on the same device), runs the runner's forward on the new tokens, and stores the
new tokens' keys/values into freshly allocated slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..transformer.cache import KVCache


class CachePoolFull(RuntimeError):
    """The tree needs more token slots than ``max_cache_tokens`` allows."""


@dataclass(frozen=True)
class CacheStats:
    capacity_slots: int
    peak_slots: int
    bytes_per_slot: int

    @property
    def peak_bytes(self) -> int:
        return self.peak_slots * self.bytes_per_slot

    @property
    def allocated_bytes(self) -> int:
        return self.capacity_slots * self.bytes_per_slot


class KVPool:
    """Preallocated key/value storage indexed by slot, grown by doubling up to ``max_slots``."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        max_slots: int,
        initial_slots: int = 256,
    ) -> None:
        self.max_slots = max_slots
        self._shape = (kv_heads, head_dim)
        self._dtype = dtype
        self._device = device
        capacity = max(1, min(initial_slots, max_slots))
        self.keys = [torch.zeros((capacity, *self._shape), dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self.in_use = 0
        self.peak = 0

    @classmethod
    def like(cls, template: KVCache, max_slots: int, initial_slots: int) -> KVPool:
        """A pool for keys/values of ``template``'s layer count, head shape, dtype and device."""
        first = template.keys[0]
        kv_heads, head_dim = first.shape[1], first.shape[3]
        return cls(
            len(template.keys), kv_heads, head_dim, first.dtype, first.device, max_slots, initial_slots
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[0]

    @property
    def bytes_per_slot(self) -> int:
        element = torch.empty((), dtype=self._dtype).element_size()
        return 2 * len(self.keys) * self._shape[0] * self._shape[1] * element

    def stats(self) -> CacheStats:
        return CacheStats(self.capacity, self.peak, self.bytes_per_slot)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            self._grow(self.in_use + count)
        taken = [self._free.pop() for _ in range(count)]
        self.in_use += count
        self.peak = max(self.peak, self.in_use)
        return taken

    def release(self, slots: Sequence[int]) -> None:
        self._free.extend(slots)
        self.in_use -= len(slots)

    def _grow(self, needed: int) -> None:
        if needed > self.max_slots:
            raise CachePoolFull(
                f"the sampling tree needs {needed} cached tokens but max_cache_tokens is {self.max_slots}; "
                "raise max_cache_tokens or ask for fewer variants"
            )
        old = self.capacity
        new = min(self.max_slots, max(needed, 2 * old))
        for store in (self.keys, self.values):
            for i, tensor in enumerate(store):
                grown = torch.zeros((new, *self._shape), dtype=self._dtype, device=self._device)
                grown[:old] = tensor
                store[i] = grown
        self._free = list(range(new - 1, old - 1, -1)) + self._free

    def gather(self, index: torch.Tensor, new_tokens: int) -> KVCache:
        """A cache holding the slots ``index`` [rows, width] in its first ``width`` slots, with room for
        ``new_tokens`` more per row."""
        rows, width = index.shape
        kv_heads, head_dim = self._shape
        layers = len(self.keys)
        cache = KVCache.allocate(
            layers, rows, kv_heads, width + new_tokens, head_dim, self._dtype, self._device
        )
        for stored, gathered in ((self.keys, cache.keys), (self.values, cache.values)):
            for layer, tensor in enumerate(stored):
                gathered[layer][:, :, :width] = tensor[index].permute(0, 2, 1, 3)
        return cache

    def store(self, cache: KVCache, start: int, slots: torch.Tensor) -> None:
        """Keep the keys/values of ``cache``'s slots from ``start`` on in pool ``slots`` [rows, tokens]."""
        flat = slots.reshape(-1)
        for stored, computed in ((self.keys, cache.keys), (self.values, cache.values)):
            for layer, tensor in enumerate(computed):
                tensor = tensor[:, :, start:].permute(0, 2, 1, 3).reshape(len(flat), *self._shape)
                stored[layer][flat] = tensor.to(self._dtype)
