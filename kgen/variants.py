"""Choosing how the ``n`` variants of one request are sampled (shared by the CLI and the WebUI)."""

from __future__ import annotations

from .generation import Backend, Completion, SamplingSettings
from .pipeline import VariantSampler, independent_variants

DEFAULT_POLICY = "rw-mcts"


def supports_tgts(backend: Backend) -> bool:
    """TGTS grows its tree through our forward's KV cache: it needs the backend's runner and tokenizer
    (the transformers model itself may have been released after loading)."""
    return getattr(backend, "runner", None) is not None and getattr(backend, "tokenizer", None) is not None


def model_backend(backend: Backend) -> Backend:
    """The model's own backend behind the loader's ``ManagedBackend`` (other backends: themselves)."""
    from .models.loader import ManagedBackend

    return backend.backend if isinstance(backend, ManagedBackend) else backend


def variant_sampler(backend: Backend, policy: str = DEFAULT_POLICY) -> VariantSampler:
    """TGTS over a transformers backend; independent samples (one batch) for any other backend."""
    model = model_backend(backend)
    if not supports_tgts(model):
        return independent_variants(backend)
    from .engine.tgts import sample_variants  # needs torch: imported only when a tree is grown

    def sample(prompt: str, n: int, settings: SamplingSettings, seed: int) -> list[Completion]:
        return sample_variants(model, prompt, n, settings, seed, policy=policy).completions()

    return sample
