"""ModelStore: folder layout, downloads through a fake hub, offline use, file checks, untrusted names."""

from __future__ import annotations

import fnmatch
import json
import struct
from pathlib import Path

import pytest

from kgen.models.errors import (
    CorruptModelFileError,
    HubUnreachableError,
    ModelFileMissingError,
    UnknownModelError,
    UntrustedNameError,
)
from kgen.models.files import check_gguf, check_safetensors
from kgen.models.registry import MODELS, ModelSpec
from kgen.models.registry import UnknownModelError as RegistryUnknownModelError
from kgen.models.store import (
    DEFAULT_MODELS_DIR,
    MODELS_DIR_ENV,
    ModelKind,
    ModelRef,
    ModelStore,
    default_models_dir,
    offline_from_env,
)

TIPO_SPEC = ModelSpec(
    name="TIPO-test", hub_id="Owner/TIPO-test", gguf_files=("TIPO-test-F16.gguf", "gguf/TIPO-test-Q8_0.gguf"),
    protocol="dtg", has_quality=True, architecture="llama", context_length=64, vocab_size=32,
)  # fmt: skip
DTG_A = ModelSpec(
    name="DTG-a", hub_id="Owner/DTG-a", gguf_files=("ggml-model-f16.gguf",), protocol="dtg",
    has_quality=False, architecture="llama", context_length=64, vocab_size=32,
)  # fmt: skip
DTG_B = ModelSpec(
    name="DTG-b", hub_id="Owner/DTG-b", gguf_files=("ggml-model-f16.gguf",), protocol="dtg",
    has_quality=False, architecture="llama", context_length=64, vocab_size=32,
)  # fmt: skip
TEST_MODELS = (TIPO_SPEC, DTG_A, DTG_B)


# ---- tiny valid model files, written byte by byte (no gguf / torch needed)


def gguf_bytes(tensor_elems: int = 16) -> bytes:
    """A valid GGUF v3 file: one string metadata entry and one f32 tensor of ``tensor_elems`` values."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    out += string("general.architecture") + struct.pack("<I", 8) + string("llama")
    out += (
        string("weight") + struct.pack("<I", 1) + struct.pack("<Q", tensor_elems) + struct.pack("<IQ", 0, 0)
    )
    out += b"\0" * (-len(out) % 32)
    return out + struct.pack(f"<{tensor_elems}f", *range(tensor_elems))


def safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    return struct.pack("<Q", len(header)) + header + struct.pack("<4f", 1, 2, 3, 4)


def transformers_repo() -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": safetensors_bytes(),
        "tokenizer.model": b"spm",
        "tokenizer_config.json": b"{}",
        "README.md": b"not downloaded",
        "pytorch_model.bin": b"never downloaded (pickle)",
        "TIPO-test-F16.gguf": gguf_bytes(),
    }


class FakeHub:
    """Stands in for huggingface_hub: serves in-memory repos, records calls, can fail on demand."""

    __version__ = "0.30.0"

    def __init__(self, repos: dict[str, dict[str, bytes]] | None = None, error: Exception | None = None):
        self.repos = repos or {}
        self.error = error
        self.calls: list[tuple[str, str, dict]] = []

    def hf_hub_download(self, repo_id, filename, *, local_dir, revision=None, subfolder=None):
        self.calls.append(("hf_hub_download", repo_id, {"filename": filename, "revision": revision}))
        if self.error is not None:
            raise self.error
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.repos[repo_id][filename])
        return str(target)

    def snapshot_download(self, repo_id, *, local_dir, revision=None, allow_patterns=None):
        self.calls.append(
            ("snapshot_download", repo_id, {"allow_patterns": allow_patterns, "revision": revision})
        )
        if self.error is not None:
            raise self.error
        for name, data in self.repos[repo_id].items():
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(local_dir) / name).write_bytes(data)
        return str(local_dir)


class NotCalledHub:
    def __getattr__(self, name):
        raise AssertionError(f"the hub must not be used, but {name} was")


# Same class names as huggingface_hub's (the store recognises hub errors by class name across hub versions).
class LocalEntryNotFoundError(FileNotFoundError):
    pass


class EntryNotFoundError(Exception):
    pass


class RepositoryNotFoundError(Exception):
    pass


@pytest.fixture
def gguf_repo() -> dict[str, dict[str, bytes]]:
    return {
        "Owner/TIPO-test": {"TIPO-test-F16.gguf": gguf_bytes(), "gguf/TIPO-test-Q8_0.gguf": gguf_bytes(32)},
        "Owner/DTG-a": {"ggml-model-f16.gguf": gguf_bytes()},
    }


def store_at(root: Path, hub=None, offline: bool = False) -> ModelStore:
    return ModelStore(root, offline=offline, models=TEST_MODELS, hub=hub or NotCalledHub())


# ---- where the models folder is


def test_models_dir_precedence(monkeypatch, tmp_path):
    assert default_models_dir({}) == DEFAULT_MODELS_DIR.expanduser()
    assert default_models_dir({MODELS_DIR_ENV: str(tmp_path / "env")}) == tmp_path / "env"
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "env"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert ModelStore().root == tmp_path / "env"
    assert ModelStore(tmp_path / "explicit").root == tmp_path / "explicit"


def test_offline_flag_and_env():
    assert offline_from_env({"HF_HUB_OFFLINE": "1"}) and offline_from_env({"HF_HUB_OFFLINE": "true"})
    assert not offline_from_env({}) and not offline_from_env({"HF_HUB_OFFLINE": "0"})


def test_offline_env_sets_default_and_argument_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ModelStore(tmp_path).offline
    assert not ModelStore(tmp_path, offline=False).offline


def test_default_models_are_the_registry(tmp_path):
    assert ModelStore(tmp_path).models == tuple(MODELS)


# ---- registry lookups


def test_spec_by_name_hub_id_any_case(tmp_path):
    store = store_at(tmp_path)
    assert store.spec("TIPO-test") is TIPO_SPEC
    assert store.spec("owner/tipo-TEST") is TIPO_SPEC


def test_unknown_model_lists_known_names(tmp_path):
    with pytest.raises(UnknownModelError, match=r"unknown model 'nope'.*TIPO-test, DTG-a, DTG-b") as info:
        store_at(tmp_path).spec("nope")
    assert isinstance(info.value, RegistryUnknownModelError)


# ---- GGUF downloads


def test_gguf_download_goes_into_model_folder_and_is_reused(tmp_path, gguf_repo):
    hub = FakeHub(gguf_repo)
    store = store_at(tmp_path, hub)
    path = store.fetch_gguf(TIPO_SPEC, "gguf/TIPO-test-Q8_0.gguf", revision="abc123")
    assert path == tmp_path / "TIPO-test" / "gguf" / "TIPO-test-Q8_0.gguf"
    assert path.read_bytes() == gguf_repo["Owner/TIPO-test"]["gguf/TIPO-test-Q8_0.gguf"]
    assert hub.calls == [
        ("hf_hub_download", "Owner/TIPO-test", {"filename": "gguf/TIPO-test-Q8_0.gguf", "revision": "abc123"})
    ]
    assert store.fetch_gguf(TIPO_SPEC, "TIPO-test-Q8_0.gguf") == path  # base name works too
    assert len(hub.calls) == 1


def test_gguf_default_is_first_registry_file(tmp_path, gguf_repo):
    path = store_at(tmp_path, FakeHub(gguf_repo)).fetch_gguf(TIPO_SPEC)
    assert path == tmp_path / "TIPO-test" / "TIPO-test-F16.gguf"


def test_gguf_not_of_this_model_is_rejected(tmp_path):
    with pytest.raises(
        ModelFileMissingError, match=r"not a GGUF file of TIPO-test; known: TIPO-test-F16\.gguf"
    ):
        store_at(tmp_path).fetch_gguf(TIPO_SPEC, "other.gguf")


@pytest.mark.parametrize(
    "placed",
    ["TIPO-test-F16.gguf", "TIPO-test_TIPO-test-F16.gguf", "TIPO-test/TIPO-test-F16.gguf"],
    ids=["root", "reference-naming", "model-folder"],
)
def test_gguf_placed_by_hand_is_found_and_never_downloaded(tmp_path, placed):
    (tmp_path / placed).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / placed).write_bytes(gguf_bytes())
    store = store_at(tmp_path, NotCalledHub())
    assert store.fetch_gguf(TIPO_SPEC, "TIPO-test-F16.gguf") == tmp_path / placed
    assert store.find_gguf(TIPO_SPEC, "gguf/TIPO-test-Q8_0.gguf") is None


def test_shared_gguf_name_at_root_is_not_attributed_to_a_model(tmp_path):
    (tmp_path / "ggml-model-f16.gguf").write_bytes(gguf_bytes())
    store = store_at(tmp_path)
    assert store.find_gguf(DTG_A, "ggml-model-f16.gguf") is None  # DTG-a or DTG-b? unknowable
    (tmp_path / "DTG-b").mkdir()
    (tmp_path / "DTG-b" / "ggml-model-f16.gguf").write_bytes(gguf_bytes())
    assert store.find_gguf(DTG_B, "ggml-model-f16.gguf") == tmp_path / "DTG-b" / "ggml-model-f16.gguf"


def test_offline_missing_gguf_says_where_to_put_it(tmp_path):
    store = store_at(tmp_path, NotCalledHub(), offline=True)
    with pytest.raises(ModelFileMissingError, match="offline mode is on") as info:
        store.fetch_gguf(TIPO_SPEC, "TIPO-test-F16.gguf")
    assert str(tmp_path / "TIPO-test" / "TIPO-test-F16.gguf") in str(info.value)


def test_offline_uses_what_is_on_disk(tmp_path):
    (tmp_path / "TIPO-test").mkdir()
    (tmp_path / "TIPO-test" / "TIPO-test-F16.gguf").write_bytes(gguf_bytes())
    store = store_at(tmp_path, NotCalledHub(), offline=True)
    assert store.fetch_gguf(TIPO_SPEC).is_file()


def test_download_false_never_downloads(tmp_path):
    with pytest.raises(ModelFileMissingError, match="downloading was not requested"):
        store_at(tmp_path, NotCalledHub()).fetch_gguf(TIPO_SPEC, download=False)


@pytest.mark.parametrize(
    ("error", "expected", "message"),
    [
        (
            LocalEntryNotFoundError("connection error"),
            HubUnreachableError,
            "cannot reach the Hugging Face Hub",
        ),
        (ConnectionError("Name or service not known"), HubUnreachableError, "Name or service not known"),
        (EntryNotFoundError("404"), ModelFileMissingError, "is not in the hub repo"),
        (RepositoryNotFoundError("401"), ModelFileMissingError, "hub repo Owner/TIPO-test is not available"),
    ],
    ids=["no-network", "connection", "missing-file", "missing-repo"],
)
def test_hub_failures_become_clear_errors(tmp_path, error, expected, message):
    store = store_at(tmp_path, FakeHub(error=error))
    with pytest.raises(expected, match=message) as info:
        store.fetch_gguf(TIPO_SPEC)
    assert info.value.__cause__ is error


def test_wrapped_network_error_is_recognised(tmp_path):
    class HfHubHTTPError(Exception):
        pass

    try:
        try:
            raise TimeoutError("timed out")
        except TimeoutError as inner:
            raise HfHubHTTPError("request failed") from inner
    except HfHubHTTPError as outer:
        error = outer
    with pytest.raises(HubUnreachableError, match="cannot reach"):
        store_at(tmp_path, FakeHub(error=error)).fetch_gguf(TIPO_SPEC)


def test_unrelated_exceptions_pass_through(tmp_path):
    with pytest.raises(KeyError):
        store_at(tmp_path, FakeHub({"Owner/TIPO-test": {}})).fetch_gguf(TIPO_SPEC)


def test_real_huggingface_hub_in_offline_mode_reports_unreachable(tmp_path, monkeypatch):
    """Our keyword arguments fit the installed huggingface_hub, and its errors are translated."""
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for module_name in ("file_download", "_snapshot_download"):
        module = getattr(huggingface_hub, module_name, None)
        if module is not None and hasattr(module, "HF_HUB_OFFLINE"):  # old hubs copied the constant
            monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    store = ModelStore(tmp_path, offline=False, models=TEST_MODELS)
    with pytest.raises(HubUnreachableError):
        store.fetch_gguf(TIPO_SPEC)
    with pytest.raises((HubUnreachableError, ModelFileMissingError)):
        store.fetch_transformers(TIPO_SPEC)


# ---- transformers downloads


def test_transformers_download_takes_only_needed_safe_files(tmp_path):
    hub = FakeHub({"Owner/TIPO-test": transformers_repo()})
    store = store_at(tmp_path, hub)
    folder = store.fetch_transformers(TIPO_SPEC, revision="v1")
    assert folder == tmp_path / "TIPO-test"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
    ]  # fmt: skip
    assert hub.calls[0][2]["revision"] == "v1"
    assert store.fetch_transformers(TIPO_SPEC) == folder
    assert len(hub.calls) == 1
    assert store.find_transformers(TIPO_SPEC) == folder


def test_repo_without_safetensors_is_reported(tmp_path):
    repo = {k: v for k, v in transformers_repo().items() if k != "model.safetensors"}
    with pytest.raises(ModelFileMissingError, match=r"has no \*\.safetensors.*pick one of its GGUF files"):
        store_at(tmp_path, FakeHub({"Owner/TIPO-test": repo})).fetch_transformers(TIPO_SPEC)


def test_offline_incomplete_transformers_folder_names_missing_files(tmp_path):
    (tmp_path / "TIPO-test").mkdir()
    (tmp_path / "TIPO-test" / "config.json").write_text("{}")
    with pytest.raises(ModelFileMissingError, match=r"missing \*\.safetensors, tokenizer.*offline"):
        store_at(tmp_path, offline=True).fetch_transformers(TIPO_SPEC)


def test_sharded_weights_need_every_shard(tmp_path):
    folder = tmp_path / "TIPO-test"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model-00001-of-00002.safetensors").write_bytes(safetensors_bytes())
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    store = store_at(tmp_path, offline=True)
    assert store.find_transformers(TIPO_SPEC) is None
    (folder / "model-00002-of-00002.safetensors").write_bytes(safetensors_bytes())
    assert store.fetch_transformers(TIPO_SPEC) == folder


# ---- corrupt files


def test_truncated_gguf_on_disk_is_reported_not_loaded(tmp_path):
    (tmp_path / "TIPO-test").mkdir()
    (tmp_path / "TIPO-test" / "TIPO-test-F16.gguf").write_bytes(gguf_bytes()[:-4])
    with pytest.raises(CorruptModelFileError, match=r"truncated.*download again"):
        store_at(tmp_path).fetch_gguf(TIPO_SPEC)


def test_truncated_download_is_reported(tmp_path):
    hub = FakeHub({"Owner/TIPO-test": {"TIPO-test-F16.gguf": gguf_bytes()[:40]}})
    with pytest.raises(CorruptModelFileError):
        store_at(tmp_path, hub).fetch_gguf(TIPO_SPEC)


def test_truncated_safetensors_is_reported(tmp_path):
    repo = transformers_repo() | {"model.safetensors": safetensors_bytes()[:-1]}
    with pytest.raises(CorruptModelFileError, match=r"model\.safetensors is truncated"):
        store_at(tmp_path, FakeHub({"Owner/TIPO-test": repo})).fetch_transformers(TIPO_SPEC)


@pytest.mark.parametrize(
    "data", [b"", b"GGUF", b"GGML" + bytes(40), b"GGUF" + struct.pack("<IQQ", 3, 10**12, 0)],
    ids=["empty", "magic-only", "wrong-magic", "absurd-count"],
)  # fmt: skip
def test_gguf_garbage_is_corrupt(tmp_path, data):
    path = tmp_path / "x.gguf"
    path.write_bytes(data)
    with pytest.raises(CorruptModelFileError):
        check_gguf(path)


@pytest.mark.parametrize(
    "data", [b"", struct.pack("<Q", 5) + b"{}", struct.pack("<Q", 2**40), struct.pack("<Q", 4) + b"nope"],
    ids=["empty", "short-header", "absurd-length", "not-json"],
)  # fmt: skip
def test_safetensors_garbage_is_corrupt(tmp_path, data):
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with pytest.raises(CorruptModelFileError):
        check_safetensors(path)


def test_check_gguf_reads_files_written_by_gguf_package(tmp_path):
    gguf = pytest.importorskip("gguf", reason="the gguf package (test extra) is not installed")
    np = pytest.importorskip("numpy")
    path = tmp_path / "w.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["<unk>", "<s>", "</s>"])
    writer.add_token_scores([0.0, -1.0, -2.0])
    writer.add_tensor("a", np.ones((3, 32), dtype=np.float32))
    writer.add_tensor("b", np.ones((64,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    summary = check_gguf(path)
    assert summary.tensor_count == 2
    assert summary.metadata["llama.block_count"] == 2
    assert summary.metadata["tokenizer.ggml.tokens"] == 3  # arrays are summarised by length
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptModelFileError):
        check_gguf(path)


def test_check_safetensors_reads_files_written_by_safetensors(tmp_path):
    np = pytest.importorskip("numpy")
    from safetensors.numpy import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": np.ones((3, 5), dtype=np.float32), "b": np.zeros(7, dtype=np.float16)}, str(path))
    assert set(check_safetensors(path)) >= {"a", "b"}
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(CorruptModelFileError):
        check_safetensors(path)


# ---- listing


def populate(root: Path) -> None:
    (root / "TIPO-test" / "gguf").mkdir(parents=True)
    for name, data in transformers_repo().items():
        if name.endswith((".json", ".safetensors", ".model")):
            (root / "TIPO-test" / name).write_bytes(data)
    (root / "TIPO-test" / "gguf" / "TIPO-test-Q8_0.gguf").write_bytes(gguf_bytes())
    (root / "DTG-a_ggml-model-f16.gguf").write_bytes(gguf_bytes())
    (root / "my-finetune.gguf").write_bytes(gguf_bytes())
    (root / "loose.safetensors").write_bytes(safetensors_bytes())
    (root / "my-hf-model").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (root / "my-hf-model" / name).write_bytes(safetensors_bytes() if name.endswith("tensors") else b"{}")
    (root / "notes.txt").write_text("hello")
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "partial.gguf.incomplete").write_bytes(b"GG")
    (root / ".cache" / "huggingface" / "hidden.gguf").write_bytes(gguf_bytes())


def test_list_local_finds_registry_downloads_and_hand_placed_files(tmp_path):
    populate(tmp_path)
    listed = {local.label: (local.path, local.ref.kind) for local in store_at(tmp_path).list_local()}
    assert listed == {
        "Owner/TIPO-test": (tmp_path / "TIPO-test", ModelKind.TRANSFORMERS),
        "Owner/TIPO-test | gguf/TIPO-test-Q8_0.gguf": (
            tmp_path / "TIPO-test" / "gguf" / "TIPO-test-Q8_0.gguf", ModelKind.GGUF,
        ),
        "Owner/DTG-a | ggml-model-f16.gguf": (tmp_path / "DTG-a_ggml-model-f16.gguf", ModelKind.GGUF),
        "my-finetune.gguf": (tmp_path / "my-finetune.gguf", ModelKind.GGUF),
        "loose.safetensors": (tmp_path / "loose.safetensors", ModelKind.SAFETENSORS),
        "my-hf-model": (tmp_path / "my-hf-model", ModelKind.TRANSFORMERS),
    }  # fmt: skip


def test_list_local_of_missing_folder_is_empty(tmp_path):
    assert store_at(tmp_path / "absent").list_local() == []


def test_choices_offer_every_registry_option_then_local_files(tmp_path):
    (tmp_path / "mine.gguf").write_bytes(gguf_bytes())
    labels = [ref.label for ref in store_at(tmp_path).choices()]
    assert labels[:3] == ["Owner/TIPO-test", "Owner/TIPO-test | TIPO-test-F16.gguf",
                          "Owner/TIPO-test | gguf/TIPO-test-Q8_0.gguf"]  # fmt: skip
    assert labels[-1] == "mine.gguf"
    assert len(labels) == 3 + 2 + 2 + 1


# ---- names from untrusted sources (PNG infotext, API)


def test_resolve_untrusted_accepts_registry_names_and_labels(tmp_path):
    store = store_at(tmp_path)
    for ref in store.choices():
        assert store.resolve_untrusted(ref.label) == ref
    assert store.resolve_untrusted("tipo-test") == ModelRef(spec=TIPO_SPEC)
    assert store.resolve_untrusted("TIPO-test | TIPO-test-Q8_0.gguf") == ModelRef(
        spec=TIPO_SPEC, gguf_file="gguf/TIPO-test-Q8_0.gguf"
    )


def test_resolve_untrusted_accepts_files_in_models_folder(tmp_path):
    populate(tmp_path)
    store = store_at(tmp_path)
    assert store.resolve_untrusted("my-finetune.gguf").path == tmp_path / "my-finetune.gguf"
    assert store.resolve_untrusted(" my-hf-model ").path == tmp_path / "my-hf-model"


@pytest.mark.parametrize(
    "name",
    [
        "", "   ", "../outside.gguf", "..", "/etc/passwd", "TIPO-test/model.safetensors",
        "gguf\\TIPO-test-Q8_0.gguf", "C:evil.gguf", "https://example.com/x.gguf", "file:x.gguf",
        "notes.txt", "absent.gguf", "hidden.gguf", ".cache", "Owner/TIPO-test | ../../x.gguf",
        "Nope | TIPO-test-F16.gguf", "x\x00.gguf",
    ],
)  # fmt: skip
def test_resolve_untrusted_rejects_everything_else(tmp_path, name):
    populate(tmp_path)
    (tmp_path.parent / "outside.gguf").write_bytes(gguf_bytes())
    with pytest.raises(UntrustedNameError):
        store_at(tmp_path).resolve_untrusted(name)


# ---- local_path: what the loader asks for


def test_local_path_of_each_kind(tmp_path, gguf_repo):
    populate(tmp_path)
    store = store_at(tmp_path, FakeHub(gguf_repo))
    assert store.local_path(ModelRef(spec=TIPO_SPEC)) == tmp_path / "TIPO-test"
    assert store.local_path(ModelRef(path=tmp_path / "my-finetune.gguf")) == tmp_path / "my-finetune.gguf"
    fetched = store.local_path(ModelRef(spec=TIPO_SPEC, gguf_file="TIPO-test-F16.gguf"))
    assert fetched == tmp_path / "TIPO-test" / "TIPO-test-F16.gguf"
    with pytest.raises(ModelFileMissingError):
        store.local_path(ModelRef(path=tmp_path / "gone.gguf"))
    (tmp_path / "broken.gguf").write_bytes(b"GGUF")
    with pytest.raises(CorruptModelFileError):
        store.local_path(ModelRef(path=tmp_path / "broken.gguf"))
    assert store.local_path(ModelRef(path=tmp_path / "my-hf-model")) == tmp_path / "my-hf-model"
    (tmp_path / "my-hf-model" / "model.safetensors").write_bytes(safetensors_bytes()[:-1])
    with pytest.raises(CorruptModelFileError):
        store.local_path(ModelRef(path=tmp_path / "my-hf-model"))


def test_model_ref_validation():
    with pytest.raises(ValueError, match="needs a registry model or a local path"):
        ModelRef()
    with pytest.raises(ValueError, match="give spec too"):
        ModelRef(path=Path("x.gguf"), gguf_file="x.gguf")


class OldHub(FakeHub):
    """huggingface_hub < 0.23: downloads go through its cache and are copied into local_dir."""

    __version__ = "0.16.4"

    def hf_hub_download(
        self, repo_id, filename, *, local_dir, revision=None, cache_dir=None, local_dir_use_symlinks="auto",
        resume_download=False,
    ):  # fmt: skip
        self.calls.append(("hf_hub_download", repo_id, {
            "cache_dir": cache_dir, "local_dir_use_symlinks": local_dir_use_symlinks,
            "resume_download": resume_download,
        }))  # fmt: skip
        blob = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "blobs" / "abc"
        blob.parent.mkdir(parents=True)
        blob.write_bytes(self.repos[repo_id][filename])
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob.read_bytes())
        return str(target)


def test_old_hub_copies_from_a_staging_cache_it_then_removes(tmp_path, gguf_repo):
    hub = OldHub(gguf_repo)
    path = store_at(tmp_path, hub).fetch_gguf(TIPO_SPEC)
    assert path.read_bytes() == gguf_repo["Owner/TIPO-test"]["TIPO-test-F16.gguf"]
    staging = tmp_path / ".cache" / "hub-staging"
    assert hub.calls[0][2] == {
        "cache_dir": str(staging),
        "local_dir_use_symlinks": False,
        "resume_download": True,
    }
    assert not (staging / "models--Owner--TIPO-test").exists()  # no second copy of the model on disk
