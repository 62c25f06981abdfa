"""Backend for GGUF files through llama-cpp-python (optional dependency).

Importing this module never imports llama_cpp; constructing a LlamaCppBackend does, and raises
LlamaCppUnavailableError with an install hint when it is missing or broken.

Differences from the transformers backend, inherent to llama.cpp's sampler chain: top-k, top-p and min-p are
applied before the temperature (transformers applies the temperature first), and the repetition penalty only
sees the last ``penalty_last_n`` generated tokens, not the prompt. Greedy decoding (temperature 0) is the
same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..generation import Completion, SamplingSettings

INSTALL_HINT = (
    "install it with `pip install llama-cpp-python` (prebuilt CPU wheels: add "
    "`--extra-index-url https://abetlen.github.io/llama-cpp-python/whl/cpu`; CUDA: `.../whl/cu121` etc.), "
    "or use the model's transformers weights instead of a GGUF file"
)


class LlamaCppUnavailableError(ImportError):
    """llama-cpp-python is not installed or fails to import."""


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or LlamaCppUnavailableError saying why not and how to fix it."""
    try:
        import llama_cpp
    except (
        Exception
    ) as exc:  # a missing or broken shared library raises OSError/RuntimeError, not ImportError
        reason = "is not installed" if isinstance(exc, ModuleNotFoundError) else f"failed to import ({exc})"
        raise LlamaCppUnavailableError(
            f"GGUF models need llama-cpp-python, which {reason}; {INSTALL_HINT}"
        ) from exc
    return llama_cpp


def llama_cpp_available() -> bool:
    try:
        import_llama_cpp()
    except LlamaCppUnavailableError:
        return False
    return True


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp was built with a GPU backend."""
    llama_cpp = import_llama_cpp()
    supports = getattr(llama_cpp, "llama_supports_gpu_offload", None)
    return bool(supports()) if supports is not None else False


def default_thread_count() -> int:
    """CPU threads available to this process (llama-cpp-python's own default is half the cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class LlamaCppOptions:
    n_ctx: int = 0  # 0: the model's trained context length
    n_gpu_layers: int = 0  # -1: all layers on the GPU
    n_threads: int | None = None  # None: every CPU this process may use
    n_batch: int = 512
    penalty_last_n: int = 64  # how many recent tokens the repetition penalty looks at
    verbose: bool = False


class LlamaCppBackend:
    """A GGUF model run by llama.cpp. Prompts are tokenized with the GGUF's own tokenizer (BOS added)."""

    def __init__(self, model_path: str | os.PathLike[str], options: LlamaCppOptions | None = None) -> None:
        llama_cpp = import_llama_cpp()
        self.options = options or LlamaCppOptions()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.model_path}")
        n_threads = self.options.n_threads or default_thread_count()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.options.n_ctx,
                n_batch=self.options.n_batch,
                n_gpu_layers=self.options.n_gpu_layers,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                last_n_tokens_size=self.options.penalty_last_n,
                verbose=self.options.verbose,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise RuntimeError(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        self.name = self.model_path.name
        self.context_length = int(self._llm.n_ctx())
        self.eos_token_id = int(self._llm.token_eos())
        self.bos_token_id = int(self._llm.token_bos())

    @property
    def on_gpu(self) -> bool:
        return self.options.n_gpu_layers != 0

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt, always starting with BOS (as the transformers backend does)."""
        ids = list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        return ids if ids[:1] == [self.bos_token_id] else [self.bos_token_id, *ids]

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._llm.detokenize(list(token_ids)).decode("utf-8", errors="replace")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def generate_ids(
        self, prompt_ids: Sequence[int], settings: SamplingSettings, seed: int
    ) -> tuple[list[int], bool]:
        """Token ids generated after ``prompt_ids`` (EOS excluded) and whether generation stopped at EOS."""
        budget = min(settings.max_new_tokens, self.context_length - len(prompt_ids))
        if budget < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room in the "
                f"{self.context_length}-token context"
            )
        self._llm.set_seed(seed % 0xFFFFFFFF)  # a 32-bit seed; 0xFFFFFFFF would mean "pick a random seed"
        stream = self._llm.generate(
            list(prompt_ids),
            top_k=settings.top_k if settings.top_k > 0 else 0,
            top_p=settings.top_p,
            min_p=settings.min_p,
            temp=settings.temperature,
            repeat_penalty=settings.repetition_penalty,
            reset=True,
        )
        new_ids: list[int] = []
        stopped = False
        try:
            for token in stream:
                if token == self.eos_token_id and settings.stop_on_eos:
                    stopped = True
                    break
                new_ids.append(int(token))
                if len(new_ids) >= budget:
                    break
        finally:
            stream.close()
        return new_ids, stopped

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Completion]:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        completions = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            started = time.perf_counter()
            prompt_ids = self.tokenize(prompt)
            new_ids, stopped = self.generate_ids(prompt_ids, settings, seed)
            completions.append(
                Completion(
                    text=self.detokenize(new_ids),
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(new_ids) + int(stopped),
                    seconds=time.perf_counter() - started,
                    finished=stopped,
                )
            )
        return completions

    def close(self) -> None:
        """Free the model's memory now (otherwise it goes with the last reference)."""
        llm, self._llm = self._llm, None
        if llm is not None and hasattr(llm, "close"):
            llm.close()

    def __repr__(self) -> str:
        return f"LlamaCppBackend({str(self.model_path)!r}, n_ctx={self.context_length})"
