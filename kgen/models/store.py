"""The models folder: where model files live, how they get there, and which names may be loaded.

Layout under the models folder (``root``)::

    root/<model name>/config.json, model.safetensors, tokenizer.*   transformers files of a registry model
    root/<model name>/<GGUF path in the hub repo>                   a registry GGUF (subfolders kept)
    root/<anything>.gguf / .safetensors / <folder with config.json> files placed by hand

A registry GGUF is also found when placed by hand as ``root/<file name>`` (when that file name belongs to one
registry model only) or as ``root/<model name>_<file name>`` (the naming of the reference extension), so
existing downloads are reused and nothing on disk is ever downloaded again.

The folder is chosen by: explicit ``root`` argument > ``$KGEN_MODELS_DIR`` > ``~/.cache/kgen/models``.
Offline mode (``offline=True`` or ``$HF_HUB_OFFLINE=1``) never touches the network.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import (
    HubUnreachableError,
    ModelFileMissingError,
    ModelStoreError,
    UnknownModelError,
    UntrustedNameError,
)
from .files import check_gguf, check_model_file, check_safetensors
from .registry import MODELS, ModelSpec

MODELS_DIR_ENV = "KGEN_MODELS_DIR"
DEFAULT_MODELS_DIR = Path("~/.cache/kgen/models")

TRANSFORMERS_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
MODEL_FILE_SUFFIXES = (".gguf", ".safetensors")

_TRUTHY = {"1", "true", "yes", "on"}


# ---- references


class ModelKind(str, Enum):
    TRANSFORMERS = "transformers"  # a folder with config, safetensors weights and tokenizer
    GGUF = "gguf"
    SAFETENSORS = "safetensors"  # one weights file; config and tokenizer come from elsewhere


@dataclass(frozen=True)
class ModelRef:
    """What to load: a registry model (transformers files or one of its GGUFs) or a file in the models folder.

    ``label`` is the stable, human-readable name used in UIs and infotext; ``ModelStore.resolve_untrusted``
    maps a label back to a ModelRef.
    """

    spec: ModelSpec | None = None
    gguf_file: str | None = None  # a path inside the registry model's hub repo
    path: Path | None = None  # a local file or folder

    def __post_init__(self) -> None:
        if self.spec is None and self.path is None:
            raise ValueError("ModelRef needs a registry model or a local path")
        if self.gguf_file is not None and self.spec is None:
            raise ValueError("gguf_file names a file of a registry model; give spec too")

    @property
    def kind(self) -> ModelKind:
        if self.gguf_file is not None:
            return ModelKind.GGUF
        if self.path is not None and self.path.suffix == ".gguf":
            return ModelKind.GGUF
        if self.path is not None and self.path.suffix == ".safetensors":
            return ModelKind.SAFETENSORS
        return ModelKind.TRANSFORMERS

    @property
    def label(self) -> str:
        if self.path is not None and self.gguf_file is None:
            return self.path.name
        assert self.spec is not None
        if self.gguf_file is not None:
            return f"{self.spec.hub_id} | {self.gguf_file}"
        return self.spec.hub_id


@dataclass(frozen=True)
class LocalModel:
    """Something loadable that is already in the models folder."""

    ref: ModelRef
    path: Path
    size_bytes: int

    @property
    def label(self) -> str:
        return self.ref.label


# ---- the store


def default_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    configured = environ.get(MODELS_DIR_ENV, "").strip()
    return Path(configured or DEFAULT_MODELS_DIR).expanduser()


def offline_from_env(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


class ModelStore:
    """One models folder. Create one per application (the WebUI passes its own folder).

    ``hub`` is the module (or any object) providing ``hf_hub_download`` and ``snapshot_download``; it defaults
    to ``huggingface_hub``, imported on first download. ``models`` defaults to the registry.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        offline: bool | None = None,
        models: Sequence[ModelSpec] | None = None,
        hub: Any = None,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_models_dir()
        self.offline = offline_from_env() if offline is None else offline
        self.models: tuple[ModelSpec, ...] = tuple(MODELS if models is None else models)
        self._hub = hub

    def __repr__(self) -> str:
        return f"ModelStore(root={str(self.root)!r}, offline={self.offline})"

    # ---- registry

    def spec(self, name: str) -> ModelSpec:
        """A registry model by name (``TIPO-200M``) or hub id (``KBlueLeaf/TIPO-200M``), case-insensitive."""
        wanted = name.strip().lower()
        for spec in self.models:
            if wanted in (spec.name.lower(), spec.hub_id.lower(), spec.repo_name.lower()):
                return spec
        known = ", ".join(spec.name for spec in self.models)
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}")

    def model_dir(self, spec: ModelSpec) -> Path:
        return self.root / spec.name

    def choices(self) -> list[ModelRef]:
        """Every registry option (downloaded or not) followed by files placed by hand."""
        refs = []
        for spec in self.models:
            if spec.transformers_native:
                refs.append(ModelRef(spec=spec))
            refs.extend(ModelRef(spec=spec, gguf_file=name) for name in spec.gguf_files)
        refs.extend(local.ref for local in self.list_local() if local.ref.spec is None)
        return refs

    # ---- on disk

    def find_gguf(self, spec: ModelSpec, gguf_file: str) -> Path | None:
        """Where a registry GGUF already is on disk, or None."""
        base = Path(gguf_file).name
        candidates = [
            self.model_dir(spec) / gguf_file,
            self.model_dir(spec) / base,
            self.root / f"{spec.name}_{base}",
        ]
        owners = [other for other in self.models if base in (Path(f).name for f in other.gguf_files)]
        if len(owners) == 1:
            candidates.append(self.root / base)
        return next((path for path in candidates if path.is_file()), None)

    def find_transformers(self, spec: ModelSpec) -> Path | None:
        """The folder with a registry model's transformers files when they are all on disk, or None."""
        folder = self.model_dir(spec)
        return folder if transformers_files_missing(folder) == [] else None

    def list_local(self) -> list[LocalModel]:
        """Everything loadable in the models folder, registry downloads first, then other files."""
        found: list[LocalModel] = []
        claimed: set[Path] = set()  # registry files, listed under their registry label
        model_dirs: set[Path] = set()  # transformers folders: their safetensors are not separate models
        for spec in self.models:
            folder = self.find_transformers(spec)
            if folder is not None:
                found.append(LocalModel(ModelRef(spec=spec), folder, _tree_size(folder)))
                model_dirs.add(folder)
            for name in spec.gguf_files:
                path = self.find_gguf(spec, name)
                if path is not None:
                    found.append(LocalModel(ModelRef(spec=spec, gguf_file=name), path, path.stat().st_size))
                    claimed.add(path)
        for path in self._walk():  # top-down: a folder comes before its files
            if path in claimed or path in model_dirs:
                continue
            if path.is_dir():
                if transformers_files_missing(path) == []:
                    found.append(LocalModel(ModelRef(path=path), path, _tree_size(path)))
                    model_dirs.add(path)
            elif path.suffix == ".gguf" or (path.suffix == ".safetensors" and path.parent not in model_dirs):
                found.append(LocalModel(ModelRef(path=path), path, path.stat().st_size))
        return found

    def _walk(self) -> Iterator[Path]:
        """Files and folders under root, sorted, skipping hidden entries (download caches, partial files)."""
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            here = Path(dirpath)
            for name in dirnames:
                yield here / name
            for name in sorted(filenames):
                if not name.startswith("."):
                    yield here / name

    # ---- untrusted names

    def resolve_untrusted(self, name: str) -> ModelRef:
        """Map a model label from an untrusted source (infotext, API) to something safe to load.

        Accepts only registry names / hub ids, ``"<registry model> | <its GGUF file>"``, and names of files or
        model folders that already exist in the models folder. Never a path, a URL or anything outside it.
        """
        if not isinstance(name, str) or not name.strip():
            raise UntrustedNameError("empty model name")
        name = name.strip()
        if "\x00" in name or len(name) > 512:
            raise UntrustedNameError(f"invalid model name {name[:80]!r}")
        if "|" in name:
            model_name, _, gguf_file = (part.strip() for part in name.partition("|"))
            try:
                spec = self.spec(model_name)
            except UnknownModelError as exc:
                raise UntrustedNameError(str(exc)) from None
            return ModelRef(spec=spec, gguf_file=self._registry_gguf(spec, gguf_file, UntrustedNameError))
        try:
            return ModelRef(spec=self.spec(name))
        except UnknownModelError:
            pass
        if re.search(r"[/\\:]", name) or name in (".", "..") or name.startswith("."):
            raise UntrustedNameError(
                f"{name!r} is not a registry model and not a plain file name; only files inside "
                f"{self.root} can be named"
            )
        for local in self.list_local():
            if local.ref.spec is None and local.path.name == name:
                return local.ref
        raise UntrustedNameError(f"no model named {name!r} in the registry or in {self.root}")

    # ---- downloads

    def local_path(self, ref: ModelRef, *, download: bool = True, revision: str | None = None) -> Path:
        """The file/folder to load for ``ref``, downloading registry files when missing (and allowed)."""
        if ref.path is not None and ref.gguf_file is None:
            if not ref.path.exists():
                raise ModelFileMissingError(f"{ref.path} does not exist")
            for file in [ref.path] if ref.path.is_file() else sorted(ref.path.glob("*.safetensors")):
                check_model_file(file)
            return ref.path
        assert ref.spec is not None
        if ref.gguf_file is not None:
            return self.fetch_gguf(ref.spec, ref.gguf_file, revision=revision, download=download)
        return self.fetch_transformers(ref.spec, revision=revision, download=download)

    def fetch_gguf(
        self,
        spec: ModelSpec,
        gguf_file: str | None = None,
        *,
        revision: str | None = None,
        download: bool = True,
    ) -> Path:
        """Path of a registry GGUF, downloaded into ``root/<name>/`` unless already on disk."""
        if not spec.gguf_files:
            raise ModelFileMissingError(f"{spec.name} has no GGUF files; use its transformers weights")
        gguf_file = self._registry_gguf(spec, gguf_file or spec.gguf_files[0], ModelFileMissingError)
        existing = self.find_gguf(spec, gguf_file)
        if existing is not None:
            check_gguf(existing)
            return existing
        target = self.model_dir(spec) / gguf_file
        self._require_online(spec, f"{gguf_file} is not on disk", target, download)
        with self._hub_errors(spec, gguf_file):
            self._call_hub(
                "hf_hub_download",
                spec.hub_id,
                filename=gguf_file,
                local_dir=self.model_dir(spec),
                revision=revision,
            )
        if not target.is_file():
            raise ModelFileMissingError(f"download of {spec.hub_id}/{gguf_file} did not produce {target}")
        check_gguf(target)
        return target

    def fetch_transformers(
        self, spec: ModelSpec, *, revision: str | None = None, download: bool = True
    ) -> Path:
        """Folder with a registry model's config, safetensors weights and tokenizer, downloaded if missing."""
        folder = self.model_dir(spec)
        missing = transformers_files_missing(folder)
        if missing:
            self._require_online(spec, f"missing {', '.join(missing)}", folder, download)
            with self._hub_errors(spec, "transformers files"):
                self._call_hub(
                    "snapshot_download",
                    spec.hub_id,
                    allow_patterns=list(TRANSFORMERS_FILE_PATTERNS),
                    local_dir=folder,
                    revision=revision,
                )
            missing = transformers_files_missing(folder)
            if missing:
                raise ModelFileMissingError(
                    f"{spec.hub_id} has no {', '.join(missing)} (checked {folder}); this model cannot be "
                    "loaded with transformers, pick one of its GGUF files"
                )
        for weights in sorted(folder.glob("*.safetensors")):
            check_safetensors(weights)
        return folder

    @staticmethod
    def _registry_gguf(spec: ModelSpec, name: str, error: type[ModelStoreError]) -> str:
        """The registry path of ``spec``'s GGUF named ``name`` (full path or base name, any case)."""
        wanted = name.strip().lower()
        for path in spec.gguf_files:
            if wanted in (path.lower(), path.rsplit("/", 1)[-1].lower()):
                return path
        raise error(f"{name!r} is not a GGUF file of {spec.name}; known: {', '.join(spec.gguf_files)}")

    def _require_online(self, spec: ModelSpec, problem: str, target: Path, download: bool) -> None:
        if not download:
            raise ModelFileMissingError(
                f"{spec.name}: {problem} in {target}, and downloading was not requested"
            )
        if self.offline:
            raise ModelFileMissingError(
                f"{spec.name}: {problem} in {target} and offline mode is on (HF_HUB_OFFLINE / --offline). "
                f"Turn offline mode off to download it from {spec.hub_id}, or put the file(s) there by hand"
            )

    def _hub_module(self) -> Any:
        if self._hub is None:
            import huggingface_hub

            self._hub = huggingface_hub
        return self._hub

    def _call_hub(self, function_name: str, repo_id: str, **kwargs: Any) -> Any:
        hub = self._hub_module()
        function: Callable[..., Any] = getattr(hub, function_name)
        kwargs["local_dir"] = str(kwargs["local_dir"])
        accepted = _parameters(function)
        staging = None
        if accepted is not None:
            if _version(hub) < (0, 23) and "local_dir_use_symlinks" in accepted:
                # Old hubs download into their cache, then symlink or copy into local_dir. Copy, from a
                # cache inside the models folder (partial files stay there for resuming), then drop it.
                staging = self.root / ".cache" / "hub-staging"
                kwargs.update(local_dir_use_symlinks=False, resume_download=True, cache_dir=str(staging))
            kwargs = {key: value for key, value in kwargs.items() if key in accepted}
        result = function(repo_id, **kwargs)
        if staging is not None:
            shutil.rmtree(staging / f"models--{repo_id.replace('/', '--')}", ignore_errors=True)
        return result

    def _hub_errors(self, spec: ModelSpec, what: str) -> _HubErrorTranslator:
        return _HubErrorTranslator(spec, what, self.model_dir(spec))


class _HubErrorTranslator:
    """Context manager turning huggingface_hub / network exceptions into ModelStoreErrors."""

    def __init__(self, spec: ModelSpec, what: str, folder: Path) -> None:
        self.spec, self.what, self.folder = spec, what, folder

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, ModelStoreError) or not isinstance(exc, Exception):
            return False
        names = {cls.__name__ for cls in type(exc).__mro__}
        where = f"{self.spec.hub_id} ({self.what})"
        if "OfflineModeIsEnabled" in names:
            raise HubUnreachableError(
                f"cannot download {where}: huggingface_hub is in offline mode (HF_HUB_OFFLINE). "
                f"Unset it to download, or put the files in {self.folder}"
            ) from exc
        if "LocalEntryNotFoundError" in names or _is_network_error(exc):
            raise HubUnreachableError(
                f"cannot reach the Hugging Face Hub to download {where}: {_first_line(exc)}. Check the "
                f"network/proxy (HF_ENDPOINT for a mirror), or put the files in {self.folder} and use "
                "offline mode"
            ) from exc
        if names & {"EntryNotFoundError", "RemoteEntryNotFoundError"}:
            raise ModelFileMissingError(f"{where} is not in the hub repo: {_first_line(exc)}") from exc
        if "RevisionNotFoundError" in names:
            raise ModelFileMissingError(f"revision not found for {where}: {_first_line(exc)}") from exc
        if names & {"RepositoryNotFoundError", "GatedRepoError"}:
            raise ModelFileMissingError(
                f"hub repo {self.spec.hub_id} is not available: {_first_line(exc)}"
            ) from exc
        if "HfHubHTTPError" in names or "HTTPError" in names:
            raise HubUnreachableError(f"download of {where} failed: {_first_line(exc)}") from exc
        return False


def _is_network_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = {cls.__name__ for cls in type(exc).__mro__}
        if isinstance(exc, ConnectionError | TimeoutError) or names & {
            "ConnectionError", "ConnectError", "ConnectTimeout", "ReadTimeout", "Timeout", "ProxyError",
            "NetworkError", "TimeoutException",
        }:  # fmt: skip
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parameters(function: Callable[..., Any]) -> set[str] | None:
    """Names ``function`` accepts, or None when it takes ``**kwargs`` (then pass everything)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def _version(module: Any) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", str(getattr(module, "__version__", "")))[:2]
    return tuple(int(n) for n in numbers) if numbers else (999,)


def transformers_files_missing(folder: Path) -> list[str]:
    """What a transformers model folder lacks: config, weights, tokenizer (empty list: complete)."""
    if not folder.is_dir():
        return ["config.json", "*.safetensors", "tokenizer"]
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        missing.extend(sorted(shard for shard in shards if not (folder / shard).is_file()))
    elif not any(fnmatch.fnmatch(p.name, "*.safetensors") for p in folder.iterdir()):
        missing.append("*.safetensors")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer")
    return missing


def _tree_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
