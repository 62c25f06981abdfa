"""The runner of LLaMA-architecture models: weight copies per phase, each run by the one forward pass."""

from __future__ import annotations

from typing import Any

import torch

from .cache import KVCache
from .forward import Transformer, script
from .policy import DTypePolicy, matrix_format
from .weights import ModelShape, convert, precision, read_llama

CopyKey = tuple[torch.dtype, str]  # (compute dtype, matrix format)


class LlamaRunner:
    """Our forward over fused weight copies of a LlamaForCausalLM, one copy per (dtype, matrix format) the
    policy uses; the transformers model may be released once the copies exist."""

    supports_prefix_reuse = True

    def __init__(self, model: Any, device: torch.device, policy: DTypePolicy, script: bool = True) -> None:
        self.model = model
        self.device = device
        self.policy = policy
        self.shape = ModelShape.of(model)
        self.vocab_size = self.shape.vocab_size
        self.script = script
        self._copies: dict[CopyKey, Transformer] = {}
        self._compiled: dict[CopyKey, torch.nn.Module] = {}

    def copy_for(self, rows: int, prompt: bool) -> CopyKey:
        dtype = self.policy.prefill if prompt else self.policy.for_rows(rows)
        return dtype, matrix_format(self.policy, self.device, dtype, decoding=not prompt)

    def weights(self, dtype: torch.dtype, fmt: str | None = None) -> Transformer:
        key = (dtype, fmt or matrix_format(self.policy, self.device, dtype, decoding=False))
        if key not in self._copies:
            if self.model is not None:
                source = read_llama(self.model, self.shape)
            else:  # the transformers model was released: convert the most precise copy we hold
                source = max(self._copies.values(), key=precision)
            self._copies[key] = convert(source, self.shape, *key, self.device)
        return self._copies[key]

    def executable(self, key: CopyKey) -> torch.nn.Module:
        """The copy's forward: compiled by TorchScript on first use where possible (see ``forward``)."""
        if key not in self._compiled:
            copy = self.weights(*key)
            self._compiled[key] = (script(copy) if self.script else None) or copy
        return self._compiled[key]

    def release_model(self) -> None:
        """Drop the transformers model; the fused copies are all that stays in memory."""
        self.model = None

    def to(self, device: torch.device) -> None:
        held = sorted(self._copies.values(), key=precision, reverse=True)
        self.device, self._copies, self._compiled = device, {}, {}
        if self.model is not None:
            self.model.to(device)
            return
        # Rebuild what the policy uses there from the most precise copy (FBGEMM copies are CPU-only).
        for prompt, rows in ((True, 1), (False, 1), (False, 2)):
            key = self.copy_for(rows, prompt)
            if key not in self._copies:
                self._copies[key] = convert(held[0], self.shape, *key, device)

    def warm_up(self) -> None:
        for prompt, rows in ((True, 1), (False, 1), (False, 2)):
            self.weights(*self.copy_for(rows, prompt))

    def new_cache(self, rows: int, capacity: int, dtype: torch.dtype | None = None) -> KVCache:
        shape = self.shape
        dtype = dtype or self.policy.cache_for_rows(rows)
        return KVCache.allocate(
            shape.layers, rows, shape.kv_heads, capacity, shape.head_dim, dtype, self.device
        )

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        start: int,
        mask: torch.Tensor | None,
        prompt: bool = False,
    ) -> torch.Tensor:
        """Logits (rows, vocab) after ``tokens`` (rows, T) at cache slots [start, start + T); ``mask``
        (rows, 1, T, start + T) bool, None without padding; ``prompt``: use the prompt-processing copy."""
        run = self.executable(self.copy_for(tokens.shape[0], prompt))
        with torch.jit.optimized_execution(False):  # run the ops as written: no fusion, no re-specializing
            return run(tokens, positions, cache.keys, cache.values, start, mask)
