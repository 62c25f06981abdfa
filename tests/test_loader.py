"""Backend loading: what gets built from which target, device fallback, the one-model cache, memory policy."""

from __future__ import annotations

import json
import logging
import struct
import sys
from pathlib import Path

import pytest

from kgen.engine.llamacpp import LlamaCppUnavailableError
from kgen.generation import Backend, Completion, SamplingSettings
from kgen.models.loader import (
    BackendCache,
    LoadedModel,
    LoadOptions,
    MemoryPolicy,
    ModelLoadError,
    as_model_ref,
    build_backend,
    is_out_of_memory,
    resolve_device,
)
from kgen.models.registry import ModelSpec
from kgen.models.store import ModelKind, ModelRef, ModelStore

SPEC = ModelSpec(
    name="Tiny", hub_id="Owner/Tiny", gguf_files=("Tiny-F16.gguf",), protocol="dtg", has_quality=False,
    architecture="llama", context_length=64, vocab_size=32,
)  # fmt: skip
OOM = "CUDA out of memory. Tried to allocate 20.00 MiB"
GREEDY = SamplingSettings(temperature=0, max_new_tokens=4)


class FixedBackend:
    """A backend that cannot move between devices (like llama.cpp) and can run out of GPU memory."""

    name = "fake"
    context_length = 64

    def __init__(self, device: str, oom_on_gpu: bool = False) -> None:
        self.device = device
        self.oom_on_gpu = oom_on_gpu
        self.moves: list[str] = []
        self.closed = False

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    def generate(self, prompts, settings, seeds):
        if self.oom_on_gpu and self.device != "cpu":
            raise RuntimeError(OOM)
        return [Completion(f"{p} on {self.device}", self.count_tokens(p), 2) for p in prompts]

    def close(self) -> None:
        self.closed = True


class FakeBackend(FixedBackend):
    """Movable between devices, like the transformers backend."""

    def to(self, device: str) -> FakeBackend:
        self.device = device
        self.moves.append(device)
        return self


class RecordingBuilder:
    def __init__(self, backend_class=FakeBackend, oom_on_gpu: bool = False) -> None:
        self.backend_class, self.oom_on_gpu = backend_class, oom_on_gpu
        self.built: list[tuple[ModelRef, str, FakeBackend]] = []

    def __call__(self, ref: ModelRef, store: ModelStore, options: LoadOptions) -> LoadedModel:
        device = "cuda" if options.device == "auto" else options.device
        backend = self.backend_class(device, self.oom_on_gpu)
        self.built.append((ref, device, backend))
        return LoadedModel(backend, ref, device)


def store_at(root: Path) -> ModelStore:
    return ModelStore(root, offline=True, models=(SPEC,))


def write_transformers_folder(folder: Path, weights: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.model").write_bytes(b"spm")
    if weights:
        write_safetensors(folder / "model.safetensors")


def write_safetensors(path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))


class RecordingHFLoader:
    def __init__(self, oom_on: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[Path, str, str | None, Path | None]] = []
        self.oom_on = oom_on

    def __call__(self, folder, device, dtype, weights):
        self.calls.append((folder, device, dtype, weights))
        if device in self.oom_on:
            raise RuntimeError(OOM)
        return FakeBackend(device)


# ---- options and small helpers


def test_options_validate_device_and_coerce_memory_policy():
    assert LoadOptions(memory="offload").memory is MemoryPolicy.OFFLOAD
    assert LoadOptions(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        LoadOptions(device="gpu")
    with pytest.raises(
        ValueError, match="unknown memory policy 'forget'; choose one of: keep, offload, unload"
    ):
        LoadOptions(memory="forget")


def test_explicit_device_is_kept_and_auto_follows_cuda(monkeypatch):
    import kgen.models.loader as loader

    monkeypatch.setattr(loader, "cuda_available", lambda: True)
    assert resolve_device("auto", ModelKind.SAFETENSORS) == "cuda"
    assert resolve_device("cuda:1", ModelKind.TRANSFORMERS) == "cuda:1"
    assert resolve_device("cpu", ModelKind.TRANSFORMERS) == "cpu"
    monkeypatch.setattr(loader, "cuda_available", lambda: False)
    assert resolve_device("auto", ModelKind.TRANSFORMERS) == "cpu"


def test_gpu_that_cannot_be_used_falls_back_to_cpu_with_reason(monkeypatch, caplog):
    import kgen.models.loader as loader

    monkeypatch.setattr(loader, "cuda_available", lambda: False)
    monkeypatch.setattr(loader, "gpu_offload_supported", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert resolve_device("cuda", ModelKind.TRANSFORMERS) == "cpu"
        assert resolve_device("cuda", ModelKind.GGUF) == "cpu"
    assert "PyTorch sees no CUDA device" in caplog.text and "GGML_CUDA" in caplog.text
    monkeypatch.setattr(loader, "gpu_offload_supported", lambda: True)
    assert resolve_device("auto", ModelKind.GGUF) == "cuda"


def test_out_of_memory_detection():
    class OutOfMemoryError(RuntimeError):
        pass

    assert is_out_of_memory(OutOfMemoryError("whatever"))
    assert is_out_of_memory(RuntimeError(OOM))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_trusted_targets_become_refs(tmp_path):
    assert as_model_ref(SPEC) == ModelRef(spec=SPEC)
    assert as_model_ref(str(tmp_path / "m.gguf")).kind is ModelKind.GGUF
    assert as_model_ref(tmp_path / "m.safetensors").kind is ModelKind.SAFETENSORS
    assert as_model_ref(tmp_path).kind is ModelKind.TRANSFORMERS


# ---- build_backend


def test_registry_model_loads_its_transformers_folder(tmp_path):
    write_transformers_folder(tmp_path / "Tiny")
    hf = RecordingHFLoader()
    loaded = build_backend(SPEC, store_at(tmp_path), LoadOptions(device="cpu", dtype="bf16"), hf_loader=hf)
    assert hf.calls == [(tmp_path / "Tiny", "cpu", "bf16", None)]
    assert (loaded.device, loaded.ref) == ("cpu", ModelRef(spec=SPEC))


def test_local_folder_loads_as_is(tmp_path):
    write_transformers_folder(tmp_path / "mine")
    hf = RecordingHFLoader()
    build_backend(tmp_path / "mine", store_at(tmp_path), LoadOptions(device="cpu"), hf_loader=hf)
    assert hf.calls == [(tmp_path / "mine", "cpu", None, None)]


def test_safetensors_file_takes_config_and_tokenizer_from_its_folder(tmp_path):
    write_transformers_folder(tmp_path / "ft", weights=False)
    write_safetensors(tmp_path / "ft" / "epoch3.safetensors")
    hf = RecordingHFLoader()
    build_backend(
        tmp_path / "ft" / "epoch3.safetensors", store_at(tmp_path), LoadOptions("cpu"), hf_loader=hf
    )
    assert hf.calls == [(tmp_path / "ft", "cpu", None, tmp_path / "ft" / "epoch3.safetensors")]


def test_safetensors_file_of_a_registry_model_uses_the_registry_config(tmp_path):
    write_transformers_folder(tmp_path / "Tiny")
    write_safetensors(tmp_path / "finetune.safetensors")
    hf = RecordingHFLoader()
    ref = ModelRef(spec=SPEC, path=tmp_path / "finetune.safetensors")
    build_backend(ref, store_at(tmp_path), LoadOptions("cpu"), hf_loader=hf)
    assert hf.calls == [(tmp_path / "Tiny", "cpu", None, tmp_path / "finetune.safetensors")]


def test_lone_safetensors_file_explains_what_is_missing(tmp_path):
    write_safetensors(tmp_path / "lone.safetensors")
    with pytest.raises(ModelLoadError, match=r"weights only.*missing: config\.json, tokenizer"):
        build_backend(tmp_path / "lone.safetensors", store_at(tmp_path), LoadOptions("cpu"), hf_loader=None)


def test_gpu_out_of_memory_while_loading_falls_back_to_cpu(tmp_path, caplog, monkeypatch):
    import kgen.models.loader as loader

    monkeypatch.setattr(loader, "cuda_available", lambda: True)
    write_transformers_folder(tmp_path / "Tiny")
    hf = RecordingHFLoader(oom_on=("cuda",))
    with caplog.at_level(logging.WARNING):
        loaded = build_backend(SPEC, store_at(tmp_path), LoadOptions(device="cuda"), hf_loader=hf)
    assert [call[1] for call in hf.calls] == ["cuda", "cpu"]
    assert loaded.device == "cpu"
    assert "out of GPU memory" in caplog.text


def test_int8_option_reaches_the_cpu_loader_and_means_automatic_on_a_gpu(tmp_path, monkeypatch):
    import kgen.models.loader as loader

    monkeypatch.setattr(loader, "cuda_available", lambda: True)
    write_transformers_folder(tmp_path / "Tiny")
    hf = RecordingHFLoader(oom_on=("cuda",))
    build_backend(SPEC, store_at(tmp_path), LoadOptions(device="cuda", dtype="int8"), hf_loader=hf)
    build_backend(SPEC, store_at(tmp_path), LoadOptions(device="cpu", dtype="int8"), hf_loader=hf)
    # GPU: automatic precision (int8 matrices are a CPU kernel); its out-of-memory fallback and the CPU: int8
    assert [(call[1], call[2]) for call in hf.calls] == [("cuda", None), ("cpu", "int8"), ("cpu", "int8")]


def test_int8_without_fbgemm_falls_back_to_automatic_with_a_warning(tmp_path, monkeypatch, caplog):
    import kgen.engine.transformer.policy as hf

    monkeypatch.setattr(hf, "fbgemm_available", lambda kind: False)
    write_transformers_folder(tmp_path / "Tiny")
    hf_loader = RecordingHFLoader()
    with caplog.at_level(logging.WARNING):
        build_backend(SPEC, store_at(tmp_path), LoadOptions(device="cpu", dtype="int8"), hf_loader=hf_loader)
    assert [call[2] for call in hf_loader.calls] == [None]
    assert "no FBGEMM int8 kernel" in caplog.text


def test_out_of_memory_on_cpu_and_other_errors_propagate(tmp_path):
    write_transformers_folder(tmp_path / "Tiny")
    with pytest.raises(RuntimeError, match="out of memory"):
        build_backend(
            SPEC, store_at(tmp_path), LoadOptions("cpu"), hf_loader=RecordingHFLoader(oom_on=("cpu",))
        )

    def broken(*args):
        raise RuntimeError("size mismatch for lm_head.weight")

    with pytest.raises(RuntimeError, match="size mismatch"):
        build_backend(SPEC, store_at(tmp_path), LoadOptions("cuda"), hf_loader=broken)


def test_gguf_without_llama_cpp_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    with pytest.raises(LlamaCppUnavailableError, match=r"llama-cpp-python.*pip install llama-cpp-python"):
        build_backend(tmp_path / "m.gguf", store_at(tmp_path), LoadOptions(device="cpu"))


def test_missing_registry_files_offline_are_reported_before_loading(tmp_path):
    from kgen.models.errors import ModelFileMissingError

    with pytest.raises(ModelFileMissingError, match="offline"):
        build_backend(SPEC, store_at(tmp_path), LoadOptions("cpu"), hf_loader=RecordingHFLoader())


# ---- BackendCache


def test_cache_keeps_one_model_and_reloads_only_on_change(tmp_path):
    builder = RecordingBuilder()
    cache = BackendCache(store_at(tmp_path), builder=builder)
    a, b = ModelRef(path=tmp_path / "a.gguf"), ModelRef(path=tmp_path / "b.gguf")
    first = cache.get(a, LoadOptions("cpu")).backend
    assert cache.get(a, LoadOptions("cpu", memory="keep")).backend is first
    assert len(builder.built) == 1
    second = cache.get(b, LoadOptions("cpu")).backend
    assert first.closed and second is not first
    cache.get(b, LoadOptions("cuda"))
    assert [device for _, device, _ in builder.built] == ["cpu", "cpu", "cuda"]
    cache.unload()
    assert cache.loaded is None and builder.built[-1][2].closed


def test_managed_backend_is_a_backend(tmp_path):
    cache = BackendCache(store_at(tmp_path), builder=RecordingBuilder())
    backend = cache.get(ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cpu"))
    assert isinstance(backend, Backend)
    assert (backend.name, backend.context_length, backend.count_tokens("a b")) == ("fake", 64, 3)
    assert backend.generate(["x"], GREEDY, [1])[0].text == "x on cpu"


def test_keep_policy_leaves_model_on_gpu(tmp_path):
    builder = RecordingBuilder()
    cache = BackendCache(store_at(tmp_path), builder=builder)
    with cache.session(ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cuda", memory="keep")):
        pass
    assert cache.loaded is not None and builder.built[0][2].moves == []


def test_offload_policy_moves_to_cpu_after_use_and_back_before_next(tmp_path):
    builder = RecordingBuilder()
    cache = BackendCache(store_at(tmp_path), builder=builder)
    ref, options = ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cuda", memory=MemoryPolicy.OFFLOAD)
    with cache.session(ref, options) as backend:
        assert backend.generate(["x"], GREEDY, [1])[0].text == "x on cuda"
    fake = builder.built[0][2]
    assert fake.moves == ["cpu"]
    with cache.session(ref, options) as backend:
        assert backend.generate(["x"], GREEDY, [1])[0].text == "x on cuda"
    assert fake.moves == ["cpu", "cuda", "cpu"]
    assert len(builder.built) == 1


def test_offload_of_unmovable_gpu_model_unloads_it(tmp_path):
    builder = RecordingBuilder(FixedBackend)
    cache = BackendCache(store_at(tmp_path), builder=builder)
    with cache.session(ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cuda", memory="offload")):
        pass
    assert cache.loaded is None and builder.built[0][2].closed


def test_offload_on_cpu_changes_nothing(tmp_path):
    builder = RecordingBuilder()
    cache = BackendCache(store_at(tmp_path), builder=builder)
    with cache.session(ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cpu", memory="offload")):
        pass
    assert cache.loaded is not None and builder.built[0][2].moves == []


def test_unload_policy_frees_after_each_session(tmp_path):
    builder = RecordingBuilder()
    cache = BackendCache(store_at(tmp_path), builder=builder)
    ref, options = ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cpu", memory="unload")
    for _ in range(2):
        with cache.session(ref, options) as backend:
            backend.generate(["x"], GREEDY, [1])
        assert cache.loaded is None
    assert len(builder.built) == 2 and all(fake.closed for _, _, fake in builder.built)
    with pytest.raises(RuntimeError, match="unloaded"):
        backend.generate(["x"], GREEDY, [1])


def test_session_releases_even_when_the_request_fails(tmp_path):
    cache = BackendCache(store_at(tmp_path), builder=RecordingBuilder())
    with (
        pytest.raises(KeyError),
        cache.session(ModelRef(path=tmp_path / "a"), LoadOptions("cpu", memory="unload")),
    ):
        raise KeyError("boom")
    assert cache.loaded is None


def test_gpu_out_of_memory_while_generating_moves_to_cpu_and_stays(tmp_path, caplog):
    builder = RecordingBuilder(oom_on_gpu=True)
    cache = BackendCache(store_at(tmp_path), builder=builder)
    ref, options = ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cuda")
    with caplog.at_level(logging.WARNING):
        completions = cache.get(ref, options).generate(["x"], GREEDY, [1])
    assert completions[0].text == "x on cpu"
    assert "out of GPU memory" in caplog.text
    again = cache.get(ref, options)
    assert again.device == "cpu" and again.generate(["y"], GREEDY, [1])[0].text == "y on cpu"
    assert len(builder.built) == 1


def test_gpu_out_of_memory_with_unmovable_model_reloads_on_cpu(tmp_path):
    builder = RecordingBuilder(FixedBackend, oom_on_gpu=True)
    cache = BackendCache(store_at(tmp_path), builder=builder)
    backend = cache.get(ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cuda"))
    assert backend.generate(["x"], GREEDY, [1])[0].text == "x on cpu"
    assert [device for _, device, _ in builder.built] == ["cuda", "cpu"]
    assert builder.built[0][2].closed


def test_errors_other_than_out_of_memory_propagate_from_generate(tmp_path):
    class Failing(FakeBackend):
        def generate(self, prompts, settings, seeds):
            raise ValueError("prompt too long")

    cache = BackendCache(store_at(tmp_path), builder=RecordingBuilder(Failing))
    with pytest.raises(ValueError, match="prompt too long"):
        cache.get(ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cuda")).generate(["x"], GREEDY, [1])


def test_gpu_full_when_moving_back_from_offload_keeps_running_on_cpu(tmp_path, caplog):
    class GpuFillsUp(FakeBackend):
        def to(self, device: str) -> FakeBackend:
            if device != "cpu" and self.moves:  # the second trip to the GPU finds it full
                raise RuntimeError(OOM)
            return super().to(device)

    cache = BackendCache(store_at(tmp_path), builder=RecordingBuilder(GpuFillsUp))
    ref, options = ModelRef(path=tmp_path / "a.gguf"), LoadOptions("cuda", memory="offload")
    with cache.session(ref, options):
        pass
    with caplog.at_level(logging.WARNING), cache.session(ref, options) as backend:
        assert backend.device == "cpu"
        assert backend.generate(["x"], GREEDY, [1])[0].text == "x on cpu"
    assert "moving" in caplog.text


# ---- with the real transformers backend on a tiny model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    pytest.importorskip("torch")
    from tiny_models import save_tiny_model

    root = tmp_path_factory.mktemp("loader_models")
    save_tiny_model(root / "Tiny", num_key_value_heads=4)  # no GQA, like TIPO (transformers 4.30 has none)
    return root


def test_registry_model_loads_as_transformers_backend(tiny_folder):
    from kgen.engine.hf import HFBackend
    from kgen.models.loader import MovableBackend

    store = store_at(tiny_folder)
    loaded = build_backend(SPEC, store, LoadOptions(device="cpu"))
    assert isinstance(loaded.backend, HFBackend) and isinstance(loaded.backend, MovableBackend)
    completion = loaded.backend.generate(["a girl with long hair"], GREEDY, [0])[0]
    assert completion.completion_tokens >= 1


def test_weights_file_overrides_registry_weights(tiny_folder, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    store = store_at(tiny_folder)
    weights = load_file(str(tiny_folder / "Tiny" / "model.safetensors"))
    head = torch.zeros_like(weights["lm_head.weight"])
    head[7], head[8] = 1.0, -1.0  # logits are 0 except +-x for tokens 7 and 8: greedy picks one of them
    save_file(
        {**weights, "lm_head.weight": head}, str(tmp_path / "head.safetensors"), metadata={"format": "pt"}
    )
    options = LoadOptions(device="cpu", dtype="float32")
    base = build_backend(SPEC, store, options).backend
    tuned = build_backend(ModelRef(spec=SPEC, path=tmp_path / "head.safetensors"), store, options).backend
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=8, stop_on_eos=False)
    prompt = base.encode("a girl with long hair")
    assert set(tuned.generate_ids([prompt], settings, [0])[0]) <= {7, 8}
    assert not set(base.generate_ids([prompt], settings, [0])[0]) <= {7, 8}


def test_cache_with_transformers_backend_reuses_it(tiny_folder):
    cache = BackendCache(store_at(tiny_folder))
    options = LoadOptions(device="cpu", memory="offload")
    with cache.session(SPEC, options) as first:
        text = first.generate(["1girl, solo"], GREEDY, [0])[0].text
    assert cache.loaded is not None and cache.loaded.device == "cpu"
    with cache.session(SPEC, options) as second:
        assert second.backend is first.backend
        assert second.generate(["1girl, solo"], GREEDY, [0])[0].text == text


def test_gguf_that_fails_on_gpu_is_loaded_on_cpu(tmp_path, monkeypatch, caplog):
    import kgen.models.loader as loader

    made = []

    class FakeLlama:
        def __init__(self, path, options):
            if options.n_gpu_layers != 0:
                raise RuntimeError("llama.cpp could not load x.gguf: failed to allocate CUDA buffer")
            made.append(options)

    monkeypatch.setattr(loader, "LlamaCppBackend", FakeLlama)
    monkeypatch.setattr(loader, "gpu_offload_supported", lambda: True)
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    with caplog.at_level(logging.WARNING):
        loaded = build_backend(tmp_path / "m.gguf", store_at(tmp_path), LoadOptions(device="auto", n_ctx=512))
    assert loaded.device == "cpu" and made[0].n_gpu_layers == 0 and made[0].n_ctx == 512
    assert "could not load" in caplog.text
