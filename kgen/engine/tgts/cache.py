"""Token-slot KV pool and the one adapter that talks to a transformers model's cache API.

Every token fed through the model gets one *slot* in a pool of key/value tensors that lives on the model's
device (per layer: ``[capacity, kv_heads, head_dim]``). A tree node owns the slots of its tokens; a sequence's
context is the concatenation of its ancestors' slots, so children share their parent's prefix without any
copy of the stored cache. For a batched forward the adapter gathers each row's context by index (a temporary
on the same device), runs the model on the new tokens, and scatters the new tokens' keys/values into freshly
allocated slots.

Cache API differences between transformers releases live only in :class:`ModelAdapter`:
5.x (``cache=`` keyword, ``DynamicCache(ddp_cache_data)``, ``cache.layers[i].keys``), 4.36-4.5x
(``past_key_values=``, ``DynamicCache.from_legacy_cache``, ``key_cache``) and 4.30 (tuples of tensors).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch


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

    def gather(self, layer: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``index`` ``[batch, length]`` -> keys, values ``[batch, kv_heads, length, head_dim]``."""
        return (
            self.keys[layer][index].permute(0, 2, 1, 3),
            self.values[layer][index].permute(0, 2, 1, 3),
        )

    def scatter(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """``keys``/``values`` ``[tokens, kv_heads, head_dim]`` go to ``slots`` ``[tokens]``."""
        self.keys[layer][slots] = keys.to(self._dtype)
        self.values[layer][slots] = values.to(self._dtype)


def _major_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


class ModelAdapter:
    """Runs a causal LM forward over pooled context; the only code that knows cache formats."""

    def __init__(self, model) -> None:
        self.model = model
        config = model.config
        self.layers = config.num_hidden_layers
        self.kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        if _major_version() < (4, 31):  # grouped-query attention came in 4.31; older caches hold every head
            self.kv_heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        parameter = next(model.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        forward_params = inspect.signature(model.forward).parameters
        self._cache_keyword = "cache" if "cache" in forward_params else "past_key_values"
        self._legacy_tuples = _major_version() < (4, 36)

    def new_pool(self, max_slots: int, initial_slots: int) -> KVPool:
        return KVPool(
            self.layers, self.kv_heads, self.head_dim, self.dtype, self.device, max_slots, initial_slots
        )

    def _build_cache(self, past: list[tuple[torch.Tensor, torch.Tensor]] | None):
        if past is None:
            return None
        if self._legacy_tuples:
            return tuple((k, v) for k, v in past)
        from transformers import DynamicCache

        if hasattr(DynamicCache, "from_legacy_cache") and _major_version() < (5, 0):
            return DynamicCache.from_legacy_cache(tuple(past))
        return DynamicCache(past)

    @staticmethod
    def _layer_states(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(cache, "layers"):
            entry = cache.layers[layer]
            return entry.keys, entry.values
        if hasattr(cache, "key_cache"):
            return cache.key_cache[layer], cache.value_cache[layer]
        return cache[layer][0], cache[layer][1]

    @torch.no_grad()
    def forward(
        self,
        pool: KVPool,
        input_ids: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        positions: torch.Tensor,
        new_slots: torch.Tensor,
    ) -> torch.Tensor:
        """Feed ``input_ids`` ``[batch, q]`` after each row's pooled ``context`` ``[batch, length]`` slots.

        ``context_mask`` marks real (1) versus padding (0) context entries (rows are left-padded);
        ``positions`` ``[batch, q]`` are the rotary positions; the new tokens' keys/values are stored in
        ``new_slots`` ``[batch, q]``. Returns the last position's logits ``[batch, vocab]`` in float32.
        """
        batch, q = input_ids.shape
        past = None
        if context is not None and context.shape[1] > 0:
            past = [pool.gather(layer, context) for layer in range(self.layers)]
            fresh = torch.ones((batch, q), dtype=context_mask.dtype, device=self.device)
            mask = torch.cat([context_mask, fresh], 1)
        else:
            mask = torch.ones((batch, q), dtype=torch.long, device=self.device)
        cache = self._build_cache(past)
        if cache is None and not self._legacy_tuples:
            from transformers import DynamicCache

            cache = DynamicCache()
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_keyword: cache},
        )
        present = getattr(outputs, "cache", None)
        if present is None:
            present = outputs.past_key_values
        flat_slots = new_slots.reshape(-1)
        shape = (batch * q, self.kv_heads, self.head_dim)
        for layer in range(self.layers):
            keys, values = self._layer_states(present, layer)
            new_keys = keys[:, :, -q:].permute(0, 2, 1, 3).reshape(shape)
            new_values = values[:, :, -q:].permute(0, 2, 1, 3).reshape(shape)
            pool.scatter(layer, flat_slots, new_keys, new_values)
        return outputs.logits[:, -1].float()

    @torch.no_grad()
    def full_forward_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Plain forward without any cache: logits ``[length, vocab]`` for a single sequence (for checks)."""
        return self.model(input_ids=input_ids[None].to(self.device), use_cache=False).logits[0].float()
