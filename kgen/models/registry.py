"""The models kgen knows: where they live on the Hugging Face hub and which protocol they speak.

Facts were checked against the public hub pages / configs where reachable (see README "Models" for
which ones are verified and which are taken from tipo-kgen 0.3.1's model list only).
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOLS = ("tipo", "tipo2", "dtg")
DTG_GGUF_FILES = ("ggml-model-Q6_K.gguf", "ggml-model-Q8_0.gguf", "ggml-model-f16.gguf")


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable model.

    ``gguf_files`` are paths inside the hub repo (a file in a subfolder keeps its folder, e.g.
    ``gguf/X.gguf``), best-quality first. ``has_quality`` is whether the model was trained with a
    ``quality:`` line. ``dialect`` names the TIPO dialect (``None`` for DanTagGen); the protocol maps the
    name to its conventions (``kgen.protocol.dialects.dialect_named``).
    ``context_length`` is prompt + completion tokens the model was built for.
    """

    name: str
    hub_id: str
    gguf_files: tuple[str, ...]
    protocol: str
    has_quality: bool
    architecture: str
    context_length: int
    vocab_size: int
    dialect: str | None = None
    notes: str = ""
    transformers_native: bool = True  # False: transformers has no class for it (never trust_remote_code)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        if (self.protocol == "dtg") != (self.dialect is None):
            raise ValueError(f"{self.name}: a TIPO model needs a dialect and a DanTagGen model has none")

    @property
    def repo_name(self) -> str:
        """The hub repo's name without the owner: ``TIPO-500M-ft``."""
        return self.hub_id.rsplit("/", 1)[-1]

    def choices(self) -> list[str]:
        """UI choices for this model: the hub id (when transformers can load it), then ``"repo | file"`` per
        GGUF (the reference's form)."""
        native = [self.hub_id] if self.transformers_native else []
        return native + [f"{self.hub_id} | {f}" for f in self.gguf_files]


_LLAMA_TIPO = "LLaMA (LlamaForCausalLM), 32,013-token SentencePiece vocabulary"
_MOE_TIPO = (
    "KohakUwU MoE (DeepSeekMoE-style: 16 layers, 64 routed experts top-8 + 1 shared, GQA, QK-norm), "
    "~991M total / ~193M active parameters, 65,536-token vocabulary; GGUF architecture 'dots1'"
)
_LLAMA_DTG = "LLaMA (LlamaForCausalLM, mish activation), ~400M, 32,006-token SentencePiece vocabulary"


def _tipo_v1(repo: str, gguf: str, notes: str = "") -> ModelSpec:
    return ModelSpec(
        name=repo,
        hub_id=f"KBlueLeaf/{repo}",
        gguf_files=(gguf,),
        protocol="tipo",
        has_quality=True,
        architecture=_LLAMA_TIPO,
        context_length=2048,
        vocab_size=32013,
        dialect="tipo-v1",
        notes=notes,
    )


def _dtg(repo: str, has_quality: bool, notes: str = "") -> ModelSpec:
    return ModelSpec(
        name=repo,
        hub_id=f"KBlueLeaf/{repo}",
        gguf_files=DTG_GGUF_FILES,
        protocol="dtg",
        has_quality=has_quality,
        architecture=_LLAMA_DTG,
        context_length=2048,
        vocab_size=32006,
        notes=notes,
    )


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="TIPO-v2.1-1B-A200M",
        hub_id="KBlueLeaf/TIPO-v2.1-1B-A200M",
        gguf_files=("TIPO-v2.1-1B-A200M-f16.gguf", "gguf/TIPO-v2.1-1B-A200M-Q8_0.gguf"),
        protocol="tipo2",
        has_quality=True,
        architecture=_MOE_TIPO,
        context_length=4096,
        vocab_size=65536,
        dialect="tipo-v2.1",
        transformers_native=False,
        notes="retrain of v2 on corrected metadata (ratings, quality per year, person-count tags)",
    ),
    ModelSpec(
        name="TIPOv2-1B-A200M",
        hub_id="KBlueLeaf/TIPOv2-1B-A200M",
        gguf_files=("TIPOv2-1B-A200M-f16.gguf",),
        protocol="tipo2",
        has_quality=True,
        architecture=_MOE_TIPO,
        context_length=2048,
        vocab_size=65536,
        dialect="tipo-v2",
        transformers_native=False,
        notes="trained on 2048-token packed sequences (v2.1 raised this to 4096)",
    ),
    _tipo_v1("TIPO-500M-ft", "TIPO-500M-ft-F16.gguf"),
    _tipo_v1("TIPO-200M-ft2", "TIPO-200M-ft2-F16.gguf"),
    _tipo_v1("TIPO-200M-ft", "TIPO-200M-ft-F16.gguf"),
    _tipo_v1("TIPO-500M", "TIPO-500M_epoch5-F16.gguf"),
    _tipo_v1("TIPO-200M", "TIPO-200M-40Btok-F16.gguf"),
    _tipo_v1("TIPO-100M", "TIPO-100M-F16.gguf"),
    _dtg("DanTagGen-delta-rev2", True, "delta resumed for 2 more epochs"),
    _dtg("DanTagGen-delta", True, "quality tags introduced"),
    _dtg("DanTagGen-gamma", False, "beta fine-tuned on 3.6M recent / popular posts"),
    _dtg("DanTagGen-beta", False),
    _dtg("DanTagGen-alpha", False),
)

DEFAULT_TIPO_MODEL = "TIPO-500M-ft"
DEFAULT_DTG_MODEL = "DanTagGen-delta-rev2"


class UnknownModelError(ValueError):
    pass


def _key(text: str) -> str:
    return text.strip().lower()


def find_model(name: str) -> ModelSpec:
    """Look a model up by hub id, repo name or the reference UI's ``"repo | file"`` form (any case).

    ``"KBlueLeaf/TIPO-500M-ft"``, ``"TIPO-500M-ft"`` and ``"TIPO-500M-ft | TIPO-500M-ft-F16.gguf"`` all
    give the TIPO-500M-ft spec; use :func:`parse_model_choice` to also get the file.
    """
    return parse_model_choice(name)[0]


def parse_model_choice(choice: str) -> tuple[ModelSpec, str | None]:
    """``"KBlueLeaf/X | file.gguf"`` -> (spec of X, ``"file.gguf"``); a plain name gives ``None`` as file.

    The file must be one of the model's GGUF files (matched by full path or by base name, any case).
    """
    if not isinstance(choice, str) or not choice.strip():
        raise UnknownModelError(f"a model name is required; choose one of: {', '.join(available_names())}")
    model_part, sep, file_part = choice.partition("|")
    key = _key(model_part)
    for spec in MODELS:
        if key in (_key(spec.hub_id), _key(spec.repo_name)):
            break
    else:
        raise UnknownModelError(
            f"unknown model {model_part.strip()!r}; choose one of: {', '.join(available_names())}"
        )
    if not sep:
        return spec, None
    wanted = _key(file_part)
    for gguf in spec.gguf_files:
        if wanted in (_key(gguf), _key(gguf.rsplit("/", 1)[-1])):
            return spec, gguf
    raise UnknownModelError(
        f"{spec.name} has no GGUF file {file_part.strip()!r}; choose one of: {', '.join(spec.gguf_files)}"
    )


def available_names() -> list[str]:
    return [spec.name for spec in MODELS]


def models_for(protocol: str) -> list[ModelSpec]:
    """The models speaking a protocol family: ``"tipo"`` includes v2 (``"tipo2"``) models."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if protocol == "tipo":
        return [s for s in MODELS if s.protocol in ("tipo", "tipo2")]
    return [s for s in MODELS if s.protocol == protocol]
