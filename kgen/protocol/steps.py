"""A request's protocol steps: the step generator for the model's protocol, and its first model input.

``model`` is a ``kgen.models.registry.ModelSpec`` (None: TIPO v1); only its ``protocol``, ``dialect``
(a name, see :func:`kgen.protocol.dialects.dialect_named`) and ``has_quality`` are read. A step
generator yields :class:`GenerationCall` and receives the :class:`Completion`; it needs of the model
only its :class:`TokenBudget`, so the drivers in ``kgen.pipeline`` decide how calls reach a backend.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from ..generation import Completion, SamplingSettings
from . import dtg, tipo
from .assembly import GeneratedContent, assemble, canonical_tags
from .budget import TokenBudget
from .dialects import TIPO_V1, TipoDialect, dialect_named
from .postprocess import split_sentences
from .request import (
    SEED_LIMIT,
    Attempt,
    GenerationCall,
    RequestError,
    RetryPolicy,
    UpsampleRequest,
    UpsampleResult,
)
from .tags import classify
from .tipo_steps import tipo_request_of, tipo_steps

Steps = Generator[GenerationCall, Completion, UpsampleResult]


def protocol_of(model: Any) -> str:
    if model is None:
        return "tipo"
    protocol = getattr(model, "protocol", None)
    if protocol not in ("tipo", "tipo2", "dtg"):
        raise RequestError(f"model must be a kgen.models.registry.ModelSpec or None, not {model!r}")
    return protocol


def tipo_dialect_of(model: Any) -> TipoDialect:
    """The prompt dialect ``kgen.protocol.tipo`` should use for a model spec (TIPO v1 without one)."""
    name = getattr(model, "dialect", None)
    return TIPO_V1 if name is None else dialect_named(name)


def _has_quality(model: Any) -> bool:
    return bool(getattr(model, "has_quality", False))


def first_model_input(request: UpsampleRequest, model: Any = None) -> str:
    """The model input of the first generation step (``--dry-run``); "" when nothing is generated.

    Needs no backend and imports no torch.
    """
    user_tags = classify(request.tag_list)
    if protocol_of(model) == "dtg":
        return dtg.build_prompt(
            user_tags, request.tag_length, request.aspect_ratio or 1.0, with_quality=_has_quality(model)
        )
    prompt = tipo.first_prompt(tipo_request_of(request, user_tags), tipo_dialect_of(model))
    return prompt or ""


def request_steps(
    request: UpsampleRequest,
    budget: TokenBudget,
    model: Any,
    sampling: SamplingSettings | None,
    policy: RetryPolicy,
) -> Steps:
    """The step generator that runs ``request`` on ``model``; ``sampling`` None: the protocol's defaults."""
    if not isinstance(request, UpsampleRequest):
        raise RequestError(f"expected an UpsampleRequest, got {type(request).__name__}")
    protocol = protocol_of(model)
    if protocol == "dtg":
        return _dtg_steps(request, budget, _has_quality(model), sampling or dtg.DTG_SAMPLING)
    return tipo_steps(
        request, budget, tipo_dialect_of(model), sampling or SamplingSettings(), policy, protocol=protocol
    )


def _dtg_steps(
    request: UpsampleRequest, budget: TokenBudget, with_quality: bool, sampling: SamplingSettings
) -> Steps:
    """DanTagGen: ``kgen.protocol.dtg.tag_steps`` runs the loop, with its own bounds (no RetryPolicy)."""
    started = time.perf_counter()
    user_tags = classify(request.tag_list)
    result = yield from dtg.tag_steps(
        user_tags,
        budget,
        length=request.tag_length,
        aspect_ratio=request.aspect_ratio or 1.0,
        seed=request.seed % SEED_LIMIT,
        with_quality=with_quality,
        ban=request.bans,
        settings=sampling,
    )
    attempts = [
        Attempt("dtg", i, a.seed, a.prompt, a.completion, a.new_tags) for i, a in enumerate(result.attempts)
    ]
    sentences = split_sentences(request.nl)
    content = GeneratedContent(user_tags, canonical_tags(result.new_tags), sentences, [], sentences)
    return assemble(
        request, content, protocol="dtg", attempts=attempts, banned=[], seconds=time.perf_counter() - started
    )
