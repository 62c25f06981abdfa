"""Build a backend for a model (registry entry, local folder, safetensors or GGUF file) on a device; keep it.

``BackendCache`` holds at most one loaded model. The application (WebUI script, CLI) owns the instance:

    cache = BackendCache(ModelStore(models_dir))
    options = LoadOptions(device="auto", memory="offload")
    with cache.session(store.resolve_untrusted(label), options) as backend:
        result = upsample(request, backend, ...)

Memory policy, applied when a session ends: ``keep`` leaves the model where it is; ``offload`` moves a
transformers model to the CPU (back to the GPU on next use) so the image model gets the VRAM; ``unload``
frees it. Running out of GPU memory while loading or generating falls back to the CPU with a warning.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..engine.llamacpp import LlamaCppBackend, LlamaCppOptions, gpu_offload_supported
from ..generation import Backend, Completion, SamplingSettings
from .registry import ModelSpec
from .store import ModelKind, ModelRef, ModelStore, transformers_files_missing

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


class MemoryPolicy(str, Enum):
    KEEP = "keep"  # stay loaded on the device between requests
    OFFLOAD = "offload"  # move to CPU RAM after each request (llama.cpp on a GPU: unload instead)
    UNLOAD = "unload"  # free after each request


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"  # "auto" (GPU when usable), "cpu", "cuda" or "cuda:N"
    memory: MemoryPolicy = MemoryPolicy.KEEP
    dtype: str | None = None  # transformers backend: None lets the backend choose per device; "int8": CPU
    n_ctx: int = 0  # llama.cpp context; 0: the model's
    n_threads: int | None = None  # llama.cpp CPU threads; None: all available
    gpu_layers: int = -1  # llama.cpp layers on the GPU when the device is a GPU (-1: all)
    revision: str | None = None  # hub revision (branch, tag, commit) for files not yet on disk

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "memory", MemoryPolicy(self.memory))
        except ValueError:
            choices = ", ".join(policy.value for policy in MemoryPolicy)
            raise ValueError(f"unknown memory policy {self.memory!r}; choose one of: {choices}") from None
        if self.device.split(":", 1)[0] not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of: auto, cpu, cuda, cuda:N")


@runtime_checkable
class MovableBackend(Protocol):
    """A backend whose weights can move between devices (the transformers backend)."""

    device: Any

    def to(self, device: str) -> Any: ...


class ModelLoadError(RuntimeError):
    """A model could not be turned into a backend; the message says which and why."""


HFLoader = Callable[[Path, str, str | None, Path | None], Backend]
"""(model folder, device, dtype, weights file overriding the folder's weights or None) -> backend"""


def load_transformers_backend(folder: Path, device: str, dtype: str | None, weights: Path | None) -> Backend:
    from ..engine.hf import HFBackend

    kwargs: dict[str, Any] = {"device": device}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if weights is not None:
        kwargs["weights"] = weights
    return HFBackend.from_pretrained(folder, **kwargs)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str, kind: ModelKind) -> str:
    """``auto`` -> ``cuda`` when the backend for ``kind`` can use a GPU here, else ``cpu``.

    An explicit GPU that the backend cannot use here also gives ``cpu``, with a warning.
    """
    if device == "cpu":
        return device
    gpu_usable = gpu_offload_supported() if kind is ModelKind.GGUF else cuda_available()
    if device == "auto":
        return "cuda" if gpu_usable else "cpu"
    if not gpu_usable:
        why = (
            "llama-cpp-python was built without GPU support (reinstall with e.g. CMAKE_ARGS=-DGGML_CUDA=on)"
            if kind is ModelKind.GGUF
            else "PyTorch sees no CUDA device"
        )
        logger.warning("device %s requested but %s; using the CPU", device, why)
        return "cpu"
    return device


def is_out_of_memory(exc: BaseException) -> bool:
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_gpu_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")  # never import torch just to clean up
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class LoadedModel:
    backend: Backend
    ref: ModelRef
    device: str  # where it actually is ("cpu" after an out-of-memory fallback)


def as_model_ref(target: ModelRef | ModelSpec | str | Path) -> ModelRef:
    """A trusted target (CLI argument, code) as a ModelRef: a spec is its transformers weights, a str a path.

    Names from untrusted sources must go through ``ModelStore.resolve_untrusted`` instead.
    """
    if isinstance(target, ModelRef):
        return target
    if isinstance(target, ModelSpec):
        return ModelRef(spec=target)
    return ModelRef(path=Path(target).expanduser())


def build_backend(
    target: ModelRef | ModelSpec | str | Path,
    store: ModelStore,
    options: LoadOptions | None = None,
    *,
    hf_loader: HFLoader = load_transformers_backend,
) -> LoadedModel:
    """Fetch the files (download when allowed) and load them on the requested device."""
    options = options or LoadOptions()
    ref = as_model_ref(target)
    if ref.spec is not None and ref.kind is not ModelKind.GGUF and not ref.spec.transformers_native:
        files = ", ".join(f"'{ref.spec.hub_id} | {name}'" for name in ref.spec.gguf_files)
        raise ModelLoadError(
            f"{ref.spec.name} has no transformers class (it would need trust_remote_code, which kgen never "
            f"uses); choose one of its GGUF files instead (needs llama-cpp-python): {files}"
        )
    path = store.local_path(ref, revision=options.revision)
    device = resolve_device(options.device, ref.kind)
    if ref.kind is ModelKind.GGUF:
        return _load_gguf(ref, path, device, options)
    folder, weights = _transformers_sources(ref, path, store)
    try:
        return LoadedModel(hf_loader(folder, device, dtype_for(device, options.dtype), weights), ref, device)
    except Exception as exc:
        if device == "cpu" or not is_out_of_memory(exc):
            raise
        logger.warning("out of GPU memory loading %s on %s; loading it on the CPU instead", ref.label, device)
        release_gpu_memory()
        return LoadedModel(hf_loader(folder, "cpu", dtype_for("cpu", options.dtype), weights), ref, "cpu")


def dtype_for(device: str, dtype: str | None) -> str | None:
    """The transformers dtype option on ``device``: "int8" (FBGEMM, CPU only) means automatic on a GPU, and
    on a CPU whose PyTorch lacks FBGEMM's int8 kernel (a warning says so)."""
    if dtype is None or dtype.lower() != "int8":
        return dtype
    if device != "cpu":
        logger.info("dtype int8 is a CPU option; %s uses its automatic precision", device)
        return None
    from ..engine.transformer.policy import fbgemm_available

    if not fbgemm_available("int8"):
        logger.warning("this PyTorch has no FBGEMM int8 kernel; the CPU uses its automatic precision")
        return None
    return dtype


def _load_gguf(ref: ModelRef, path: Path, device: str, options: LoadOptions) -> LoadedModel:
    gpu_layers = 0 if device == "cpu" else options.gpu_layers
    llama_options = LlamaCppOptions(n_ctx=options.n_ctx, n_gpu_layers=gpu_layers, n_threads=options.n_threads)
    try:
        return LoadedModel(LlamaCppBackend(path, llama_options), ref, device)
    except RuntimeError as exc:  # llama.cpp reports a failed GPU allocation as a failed load
        if gpu_layers == 0:
            raise
        logger.warning(
            "llama.cpp could not load %s on the GPU (%s); loading it on the CPU instead", path, exc
        )
        release_gpu_memory()
        return LoadedModel(LlamaCppBackend(path, replace(llama_options, n_gpu_layers=0)), ref, "cpu")


def _transformers_sources(ref: ModelRef, path: Path, store: ModelStore) -> tuple[Path, Path | None]:
    """(folder with config + tokenizer, separate weights file or None) for a transformers load."""
    if ref.kind is ModelKind.TRANSFORMERS:
        return path, None
    # A lone .safetensors file: config and tokenizer from its own folder, else from the registry model.
    sibling_missing = transformers_files_missing(path.parent)
    if all(item == "*.safetensors" for item in sibling_missing):
        return path.parent, path
    if ref.spec is not None:
        return store.fetch_transformers(ref.spec), path
    raise ModelLoadError(
        f"{path.name} holds weights only; put config.json and the tokenizer files next to it "
        f"(missing: {', '.join(m for m in sibling_missing if m != '*.safetensors')}), "
        "or name the registry model it was fine-tuned from"
    )


# ---- keeping one model loaded


class BackendCache:
    """Holds one loaded model; loads again only when the model or the load options change."""

    def __init__(
        self,
        store: ModelStore,
        *,
        builder: Callable[[ModelRef, ModelStore, LoadOptions], LoadedModel] = build_backend,
    ) -> None:
        self.store = store
        self._builder = builder
        self._loaded: LoadedModel | None = None
        self._key: tuple[ModelRef, LoadOptions] | None = None
        self._options: LoadOptions | None = None
        self._offloaded = False

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def get(
        self, target: ModelRef | ModelSpec | str | Path, options: LoadOptions | None = None
    ) -> ManagedBackend:
        """The backend for ``target``, loading it (and dropping the previous model) when needed."""
        options = options or LoadOptions()
        ref = as_model_ref(target)
        key = (ref, replace(options, memory=MemoryPolicy.KEEP))  # the policy alone never needs a reload
        if self._loaded is None or key != self._key:
            self.unload()
            self._loaded = self._builder(ref, self.store, options)
            self._key = key
        elif self._offloaded:
            self._move_back()
        self._options = options
        self._offloaded = False
        return ManagedBackend(self)

    def release(self) -> None:
        """End of a request: apply the memory policy of the last ``get``."""
        if self._loaded is None or self._options is None:
            return
        policy = self._options.memory
        if policy is MemoryPolicy.UNLOAD:
            self.unload()
        elif policy is MemoryPolicy.OFFLOAD and self._loaded.device != "cpu":
            if isinstance(self._loaded.backend, MovableBackend):
                self._move("cpu")
                self._offloaded = True
            else:  # llama.cpp cannot move layers off the GPU: free them
                self.unload()

    @contextmanager
    def session(
        self, target: ModelRef | ModelSpec | str | Path, options: LoadOptions | None = None
    ) -> Iterator[ManagedBackend]:
        """``get`` for the duration of one request, then ``release``."""
        backend = self.get(target, options)
        try:
            yield backend
        finally:
            self.release()

    def unload(self) -> None:
        loaded, self._loaded, self._key, self._offloaded = self._loaded, None, None, False
        if loaded is None:
            return
        close = getattr(loaded.backend, "close", None)
        if callable(close):
            close()
        del loaded, close
        release_gpu_memory()

    def _move(self, device: str) -> None:
        assert self._loaded is not None
        self._loaded.backend.to(device)  # type: ignore[attr-defined]
        if device == "cpu":
            release_gpu_memory()

    def _move_back(self) -> None:
        """Return an offloaded model to its device; stay on the CPU when the GPU has no room now."""
        assert self._loaded is not None
        try:
            self._move(self._loaded.device)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            logger.warning(
                "out of GPU memory moving %s back (%s); running on the CPU", self._loaded.ref.label, exc
            )
            self._move("cpu")
            self._loaded = replace(self._loaded, device="cpu")

    def _fall_back_to_cpu(self, exc: BaseException) -> None:
        """After an out-of-memory error on the GPU, continue on the CPU (moving or reloading the model)."""
        assert self._loaded is not None and self._options is not None
        loaded = self._loaded
        logger.warning("out of GPU memory running %s (%s); continuing on the CPU", loaded.ref.label, exc)
        if isinstance(loaded.backend, MovableBackend):
            self._move("cpu")
            self._loaded = replace(loaded, device="cpu")
        else:
            options = replace(self._options, device="cpu")
            self.unload()
            self._loaded = self._builder(loaded.ref, self.store, options)
            self._options = options
        # The cache key keeps the requested device: later requests stay on the CPU until the model changes.


class ManagedBackend:
    """The cached backend as the pipeline sees it: retries once on the CPU after a GPU out-of-memory error."""

    def __init__(self, cache: BackendCache) -> None:
        self._cache = cache

    @property
    def backend(self) -> Backend:
        loaded = self._cache.loaded
        if loaded is None:
            raise RuntimeError("the model was unloaded; get it from the BackendCache again")
        return loaded.backend

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def context_length(self) -> int:
        return self.backend.context_length

    @property
    def device(self) -> str:
        loaded = self._cache.loaded
        return "unloaded" if loaded is None else loaded.device

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Completion]:
        try:
            return self.backend.generate(prompts, settings, seeds)
        except Exception as exc:
            if self.device == "cpu" or not is_out_of_memory(exc):
                raise
            self._cache._fall_back_to_cpu(exc)
            return self.backend.generate(prompts, settings, seeds)
