"""Everything that depends on the transformers version: loading, and the cache objects of ``model.forward``.

Cache APIs: 5.x (``cache=`` keyword on some models, ``DynamicCache(ddp_cache_data)``,
``cache.layers[i].keys``), 4.36-4.5x (``past_key_values=``, ``DynamicCache.from_legacy_cache``,
``key_cache``) and 4.30 (tuples of tensors, no grouped-query attention in the cache).
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

import torch


def transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def cached_kv_heads(config: Any) -> int:
    """Key/value heads per layer in transformers' own cache of a model with ``config``."""
    if transformers_version() < (4, 31):  # grouped-query attention came in 4.31; older caches hold every head
        return config.num_attention_heads
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


class CacheFormat:
    """Converts between per-layer key/value tensors and what a model's ``forward`` takes and returns."""

    def __init__(self, model: Any) -> None:
        parameters = inspect.signature(model.forward).parameters
        self.keyword = "cache" if "cache" in parameters else "past_key_values"
        self.legacy_tuples = transformers_version() < (4, 36)

    def past(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None) -> Any:
        """The cache argument for ``forward`` holding ``layers`` (None: an empty cache)."""
        if self.legacy_tuples:
            return None if layers is None else tuple(layers)
        from transformers import DynamicCache

        if layers is None:
            return DynamicCache()
        if hasattr(DynamicCache, "from_legacy_cache") and transformers_version() < (5, 0):
            return DynamicCache.from_legacy_cache(tuple(layers))
        return DynamicCache(layers)

    @staticmethod
    def present(outputs: Any) -> Any:
        present = getattr(outputs, "cache", None)  # 5.x: reading past_key_values warns
        return present if present is not None else outputs.past_key_values

    @staticmethod
    def layer(cache: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(cache, "layers"):
            entry = cache.layers[layer]
            return entry.keys, entry.values
        if hasattr(cache, "key_cache"):
            return cache.key_cache[layer], cache.value_cache[layer]
        return cache[layer][0], cache[layer][1]


def load_causal_lm(
    location: str,
    *,
    weights: str | Path | None = None,
    config: Any = None,
    dtype: torch.dtype = torch.float32,
    **hub: Any,
) -> Any:
    """LlamaForCausalLM (or another native transformers causal LM class) in ``dtype``, on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM, PretrainedConfig

    if isinstance(config, (str, Path)):
        config = AutoConfig.from_pretrained(str(config), **hub)
    if config is None:
        config = AutoConfig.from_pretrained(location, **hub)
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"config must be a path or a transformers config, not {type(config).__name__}")
    dtype_key = "dtype" if transformers_version() >= (4, 56) else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_key: dtype, "config": config, **hub}
    model_class: Any = LlamaForCausalLM if config.model_type == "llama" else AutoModelForCausalLM
    try:
        if weights is None:
            return model_class.from_pretrained(location, **kwargs)
        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        with tempfile.TemporaryDirectory(prefix="kgen-weights-") as tmp:
            (Path(tmp) / "model.safetensors").symlink_to(weights.resolve())
            config.save_pretrained(tmp)
            kwargs.pop("revision", None)
            return model_class.from_pretrained(tmp, **{**kwargs, "local_files_only": True})
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "does not recognize" in str(exc):
            raise ValueError(
                f"transformers has no native class for model type {config.model_type!r} "
                "(custom code is never run); use a GGUF file with llama.cpp instead"
            ) from exc
        raise


def model_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
