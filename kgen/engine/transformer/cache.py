"""The KV cache every runner writes to and attends over: contiguous per-row slots, one tensor per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    """Per layer keys and values (rows, kv_heads, capacity, head_dim); a forward over T tokens from slot
    ``start`` writes slots [start, start + T) and attends over slots [0, start + T)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def allocate(
        cls,
        layers: int,
        rows: int,
        kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        shape = (rows, kv_heads, capacity, head_dim)
        return cls(
            [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)],
            [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)],
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype
