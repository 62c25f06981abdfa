"""The runner of any other native transformers causal LM (e.g. mixture-of-experts models): ``model.forward``
over our KV cache, converted to and from the cache objects of the installed transformers version."""

from __future__ import annotations

from typing import Any

import torch

from .cache import KVCache
from .compat import CacheFormat, cached_kv_heads
from .policy import DTypePolicy


class TransformersRunner:
    """``model.forward`` in one dtype; keys/values of earlier slots are handed to it as its past."""

    supports_prefix_reuse = False

    def __init__(self, model: Any, device: torch.device, policy: DTypePolicy) -> None:
        config = model.config
        self.model = model
        self.device = device
        self.policy = DTypePolicy.uniform(policy.batch_decode)  # float16 prefill is slow on CPUs
        self.vocab_size = config.vocab_size
        self.layers = config.num_hidden_layers
        self.kv_heads = cached_kv_heads(config)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.format = CacheFormat(model)

    def warm_up(self) -> None:
        self.model.to(device=self.device, dtype=self.policy.decode)

    def to(self, device: torch.device) -> None:
        self.device = device
        self.warm_up()

    def new_cache(self, rows: int, capacity: int, dtype: torch.dtype | None = None) -> KVCache:
        return KVCache.allocate(
            self.layers,
            rows,
            self.kv_heads,
            capacity,
            self.head_dim,
            dtype or self.policy.decode,
            self.device,
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
        """The contract of ``LlamaRunner.forward``; ``mask``'s last query row gives the real key slots."""
        rows, length = tokens.shape
        stop = start + length
        if mask is None:
            attention = torch.ones((rows, stop), dtype=torch.long, device=self.device)
        else:
            attention = mask[:, 0, -1, :stop].long()
        past = None
        if start > 0:
            past = [(k[:, :, :start], v[:, :, :start]) for k, v in zip(cache.keys, cache.values, strict=True)]
        outputs = self.model(
            input_ids=tokens,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            return_dict=True,
            **{self.format.keyword: self.format.past(past)},
        )
        present = self.format.present(outputs)
        for layer in range(self.layers):
            keys, values = self.format.layer(present, layer)
            cache.keys[layer][:, :, start:stop] = keys[:, :, -length:]
            cache.values[layer][:, :, start:stop] = values[:, :, -length:]
        return outputs.logits[:, -1].float()
