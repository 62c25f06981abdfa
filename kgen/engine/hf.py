"""transformers backend: our own batched decode loop over a causal LM with a preallocated KV cache.

The loop (``HFBackend._run_batch``) drives a runner (``transformer.runners``): our forward pass over the
model's own weights for LLaMA-architecture models (TIPO and DanTagGen), ``model.forward`` for any other
native causal LM. Batches are left-padded; padding is masked out of attention and position ids count real
tokens only, so a row's tokens do not depend on what else is in the batch. On CPUs the KV cache of the
previous batch is kept: a new prompt that starts with tokens already in it (the pipeline's retries share a
long prefix) copies those keys/values instead of recomputing them (CPU kernels give a row the same bits
whatever the batch; GPU kernels do not, so there it is off by default). Dtypes per phase: see
``transformer.policy``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..generation import Completion, SamplingSettings
from .continuation import ContinuationDecoder
from .sampling import SamplerChain, build_chain, make_generator
from .transformer.cache import KVCache
from .transformer.compat import load_causal_lm
from .transformer.llama import LlamaRunner
from .transformer.policy import DTypePolicy, policy_for
from .transformer.runners import Runner, build_runner

# --------------------------------------------------------------------------------------------------------
# Batch layout and KV cache


@dataclass
class Batch:
    """Left-padded prompts of one generate call; slot ``j`` of row ``i`` is a real token iff j >= pads[i]."""

    prompts: list[list[int]]
    capacity: int  # prompt slots + new tokens
    device: torch.device
    pad_id: int
    width: int = field(init=False)
    pads: torch.Tensor = field(init=False)  # (rows,) int64
    valid: torch.Tensor = field(init=False)  # (rows, capacity) bool

    def __post_init__(self) -> None:
        self.width = max(len(p) for p in self.prompts)
        pads = [self.width - len(p) for p in self.prompts]
        self.pads = torch.tensor(pads, dtype=torch.long, device=self.device)
        slots = torch.arange(self.capacity, device=self.device)
        self.valid = slots.unsqueeze(0) >= self.pads.unsqueeze(1)

    @property
    def rows(self) -> int:
        return len(self.prompts)

    def token_grid(self) -> torch.Tensor:
        rows = [[self.pad_id] * (self.width - len(p)) + p for p in self.prompts]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def positions(self, start: int, stop: int) -> torch.Tensor:
        """(rows, stop - start) position ids of slots [start, stop); 0 on padding."""
        slots = torch.arange(start, stop, device=self.device).unsqueeze(0)
        return (slots - self.pads.unsqueeze(1)).clamp_(min=0)

    def attention_mask(self, start: int, stop: int) -> torch.Tensor:
        """(rows, 1, stop - start, stop) bool: query slot q sees real key slots <= q (padding sees itself)."""
        queries = torch.arange(start, stop, device=self.device).view(1, -1, 1)
        keys = torch.arange(stop, device=self.device).view(1, 1, -1)
        allowed = (keys <= queries) & (self.valid[:, None, :stop] | (keys == queries))
        return allowed.unsqueeze(1)


@dataclass
class CachedSequences:
    """The KV cache of the previous batch and, per row, the tokens whose keys/values it holds."""

    cache: KVCache
    tokens: list[list[int]]
    pads: list[int]


@dataclass
class TokenHistory:
    """Each row's prompt and generated token ids as one (rows, prompt ids + new tokens) grid, for the
    repetition penalty. Rows are padded with their own first id (repeats change nothing)."""

    ids: torch.Tensor
    filled: int  # columns in use

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token per row (any value for finished rows: they are not sampled again)."""
        self.ids[:, self.filled] = tokens
        self.filled += 1

    def rows(self, active: list[int]) -> torch.Tensor:
        grid = self.ids[:, : self.filled]
        return grid if len(active) == grid.shape[0] else grid[active]


def token_history(prompts: list[list[int]], new_tokens: int) -> TokenHistory:
    known = [sorted(set(prompt)) for prompt in prompts]  # ids already checked to be in the vocabulary
    width = max(len(ids) for ids in known)
    grid = torch.tensor([ids + [ids[0]] * (width + new_tokens - len(ids)) for ids in known], dtype=torch.long)
    return TokenHistory(grid, width)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# --------------------------------------------------------------------------------------------------------
# Backend


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class HFBackend:
    """Backend over a transformers causal LM and its tokenizer. The model stays resident between calls.

    ``dtype``: None/"auto" picks per phase and device (see module docstring); "int8" (CPU, opt-in) is the
    automatic policy with decoding over int8-quantized matrices (``Int8Matrix``): faster, but
    results differ from the unquantized model; any other value is used for every phase.
    ``max_batch_size`` bounds how many prompts run together. ``runner``: "auto" (fast LLaMA path when the
    architecture allows), "llama" or "transformers". ``reuse_prefix`` keeps the last batch's
    KV cache for prompts that start the same way (None: on CPUs only, where it changes no result).
    ``eos_token_id`` overrides the tokenizer's EOS.
    ``keep_model=False`` frees the transformers model once the LLaMA runner holds its own weight copies
    (``from_pretrained`` does this: the model is then only reachable through this backend).
    Each Completion's ``seconds`` is the wall time of the batch it ran in. Thread count is torch's global
    setting (``torch.set_num_threads``), left to the application.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        name: str | None = None,
        max_batch_size: int = 8,
        runner: str = "auto",
        reuse_prefix: bool | None = None,
        eos_token_id: int | None = None,
        keep_model: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        config = model.config
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name or Path(str(getattr(config, "_name_or_path", "") or "transformers-model")).name
        self.context_length = int(getattr(config, "max_position_embeddings", 2048))
        self.max_batch_size = max_batch_size
        self.reuse_prefix = reuse_prefix
        self._dtype_argument = dtype
        self._runner_choice = runner
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if self.eos_id is None:
            self.eos_id = config.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_id
        self._drop_ids = {i for i in (self.bos_id, self.eos_id, self.pad_id) if i is not None}
        self._previous: CachedSequences | None = None
        self.device = _resolve_device(device)
        self._build_runner()
        if not keep_model and isinstance(self.runner, LlamaRunner):
            self.runner.release_model()
            self.model = None

    # -- setup -------------------------------------------------------------------------------------------

    def _build_runner(self) -> None:
        policy = policy_for(self.device, self._dtype_argument)
        self.config = self.model.config
        self.runner: Runner = build_runner(self.model, self.device, policy, self._runner_choice)
        self._previous = None

    @property
    def reuses_prefix(self) -> bool:
        if self.reuse_prefix is not None:
            return self.reuse_prefix
        # On CPUs a row's keys/values come out bit-identical whatever else is in the batch (tested); GPU
        # kernels pick other reduction orders for other shapes, so reused keys/values would make a
        # request's result depend on the request before it.
        return self.device.type == "cpu"

    @property
    def policy(self) -> DTypePolicy:
        return self.runner.policy

    def to(self, device: str | torch.device) -> HFBackend:
        """Move the model (e.g. off the GPU between requests) and rebuild the weights there."""
        target = _resolve_device(device)
        if target == self.device:
            return self
        self.device = target
        if self.model is None:
            self.runner.to(target)
            self._previous = None
        else:
            self.model.to(target)
            self._build_runner()
        return self

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = None,
        *,
        weights: str | Path | None = None,
        config: str | Path | Any | None = None,
        tokenizer: str | Path | Any | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **backend_kwargs: Any,
    ) -> HFBackend:
        """Load a model folder, a hub id, or a single ``.safetensors`` file (with ``config`` / a folder).

        ``weights`` replaces the folder's weights with that safetensors file. ``config`` and ``tokenizer``
        default to the folder (the file's folder for a file). Never runs code from the model repository.
        """
        source = Path(path_or_hub_id).expanduser()
        if source.suffix == ".safetensors" and source.is_file():
            weights, folder = source, source.parent
        else:
            folder = source if source.exists() else None
        location = str(folder) if folder is not None else str(path_or_hub_id)
        hub = {"revision": revision, "local_files_only": local_files_only}
        policy = policy_for(_resolve_device(device), dtype)
        # Load straight into the one dtype the policy uses (less peak memory), else float32 to convert from.
        uniform = len({policy.prefill, policy.decode, policy.batch_decode}) == 1
        load_dtype = policy.prefill if uniform else torch.float32
        model = load_causal_lm(location, weights=weights, config=config, dtype=load_dtype, **hub)
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or location), **hub)
        name = source.stem if weights is not None and source.suffix == ".safetensors" else source.name
        backend_kwargs.setdefault("name", name)
        backend_kwargs.setdefault("keep_model", False)
        return cls(model, tokenizer, device=device, dtype=dtype, **backend_kwargs)

    # -- Backend protocol --------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text)["input_ids"])
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Completion]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        encoded = [self.encode(p) for p in prompts]
        for text, ids in zip(prompts, encoded, strict=True):
            if len(ids) >= self.context_length:
                raise ValueError(
                    f"prompt of {len(ids)} tokens does not fit the model's context of "
                    f"{self.context_length} tokens: {text[:80]!r}..."
                )
        chain = build_chain(settings)
        results: list[Completion] = []
        for first in range(0, len(encoded), self.max_batch_size):
            chunk = slice(first, first + self.max_batch_size)
            results += self._generate_batch(encoded[chunk], list(seeds[chunk]), settings, chain)
        return results

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[list[int]]:
        """Token-level generate (prompts as ids, BOS included); returns new token ids per prompt."""
        out = self._run_batch([list(p) for p in prompts], list(seeds), settings, build_chain(settings))
        return out[0]

    # -- decode loop -------------------------------------------------------------------------------------

    def _generate_batch(
        self, prompts: list[list[int]], seeds: list[int], settings: SamplingSettings, chain: SamplerChain
    ) -> list[Completion]:
        started = time.perf_counter()
        generated, finished = self._run_batch(prompts, seeds, settings, chain)
        seconds = time.perf_counter() - started
        return [
            Completion(
                text=ContinuationDecoder(self.tokenizer, p, self._drop_ids)(g),
                prompt_tokens=len(p),
                completion_tokens=len(g),
                seconds=seconds,
                finished=f,
            )
            for p, g, f in zip(prompts, generated, finished, strict=True)
        ]

    def _run_batch(
        self, prompts: list[list[int]], seeds: list[int], settings: SamplingSettings, chain: SamplerChain
    ) -> tuple[list[list[int]], list[bool]]:
        runner = self.runner
        for prompt in prompts:
            if not prompt or min(prompt) < 0 or max(prompt) >= runner.vocab_size:
                raise ValueError(
                    f"prompt token ids must be 0..{runner.vocab_size - 1} and at least one; got {prompt[:20]}"
                )
        width = max(len(p) for p in prompts)
        new_tokens = min(settings.max_new_tokens, self.context_length - width)
        batch = Batch(prompts, width + new_tokens, self.device, self.pad_id)
        rows = batch.rows
        cache = runner.new_cache(rows, batch.capacity)
        start = self._restore_prefix(batch, cache) if runner.supports_prefix_reuse else 0
        generators = [make_generator(seed) for seed in seeds]
        history = token_history(prompts, new_tokens) if chain.uses_history else None
        generated: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        logits = self._prefill(batch, cache, start)
        for step in range(new_tokens):
            active = [row for row in range(rows) if not done[row]]
            everyone = len(active) == rows
            picked = chain(
                logits.cpu() if everyone else logits[active].cpu(),
                generators if everyone else [generators[r] for r in active],
                history=None if history is None else history.rows(active),
            )
            tokens = torch.full((rows,), self.pad_id, dtype=torch.long)
            tokens[active] = picked
            if history is not None:
                history.append(tokens)
            for row, token in zip(active, picked.tolist(), strict=True):
                generated[row].append(token)
                if settings.stop_on_eos and token == self.eos_id:
                    done[row] = True
            if all(done) or step == new_tokens - 1:
                break
            logits = self._decode(batch, cache, tokens.to(self.device), width + step)
        if runner.supports_prefix_reuse and self.reuses_prefix:
            fed = [p + g[:-1] for p, g in zip(prompts, generated, strict=True)]
            self._previous = CachedSequences(cache, fed, batch.pads.tolist())
        finished = [d or not settings.stop_on_eos for d in done]
        return generated, finished

    def _restore_prefix(self, batch: Batch, cache: KVCache) -> int:
        """Copy cached keys/values of each row's longest known prefix; return the first slot to compute."""
        previous = self._previous if self.reuses_prefix else None
        if previous is not None and previous.cache.dtype != cache.dtype:
            previous = None  # keys/values of another precision would change the results slightly
        pads = batch.pads.tolist()
        reused = [0] * batch.rows
        sources = [0] * batch.rows
        if previous is not None:
            for row, prompt in enumerate(batch.prompts):
                for source, tokens in enumerate(previous.tokens):
                    n = min(common_prefix(prompt, tokens), len(prompt) - 1)
                    if n > reused[row]:
                        reused[row], sources[row] = n, source
        start = min(p + n for p, n in zip(pads, reused, strict=True))
        for row in range(batch.rows):
            for layer in range(len(cache.keys)):
                cache.keys[layer][row, :, : min(pads[row], start)].zero_()
                cache.values[layer][row, :, : min(pads[row], start)].zero_()
                if reused[row] and previous is not None:
                    src, n, old_pad = sources[row], reused[row], previous.pads[sources[row]]
                    dst = slice(pads[row], pads[row] + n)
                    old = slice(old_pad, old_pad + n)
                    cache.keys[layer][row, :, dst] = previous.cache.keys[layer][src, :, old]
                    cache.values[layer][row, :, dst] = previous.cache.values[layer][src, :, old]
        self.last_reused_tokens = reused
        return start

    def _prefill(self, batch: Batch, cache: KVCache, start: int) -> torch.Tensor:
        """Logits after each row's prompt; slots before ``start`` are already in ``cache``."""
        tokens = batch.token_grid()[:, start:]
        positions = batch.positions(start, batch.width)
        mask = batch.attention_mask(start, batch.width)
        return self.runner.forward(tokens, positions, cache, start, mask, prompt=True)

    def _decode(self, batch: Batch, cache: KVCache, tokens: torch.Tensor, slot: int) -> torch.Tensor:
        """Logits (rows, vocab) of the token after slot ``slot``, given each row's token at that slot."""
        # One row has no padding, so no mask; a strided mask slows CPU attention, hence the copy.
        mask = None if batch.rows == 1 else batch.valid[:, None, None, : slot + 1].contiguous()
        positions = batch.positions(slot, slot + 1)
        return self.runner.forward(tokens.view(-1, 1), positions, cache, slot, mask)
