"""Choosing the runner for a transformers model: our forward for LLaMA models, ``model.forward`` otherwise."""

from __future__ import annotations

from typing import Any

import torch

from .foreign import TransformersRunner
from .llama import LlamaRunner
from .policy import DTypePolicy
from .weights import llama_fast_path_problem

Runner = LlamaRunner | TransformersRunner


def build_runner(model: Any, device: torch.device, policy: DTypePolicy, choice: str = "auto") -> Runner:
    """``choice``: "auto" (our forward when the architecture allows), "llama" or "transformers"."""
    if choice not in ("auto", "llama", "transformers"):
        raise ValueError(f"unknown runner {choice!r}; choose auto, llama or transformers")
    problem = llama_fast_path_problem(model.config)
    if choice == "llama" and problem:
        raise ValueError(f"the LLaMA runner cannot run this model: {problem}")
    if choice == "transformers" or (choice == "auto" and problem):
        runner: Runner = TransformersRunner(model, device, policy)
    else:
        model.to(device)
        runner = LlamaRunner(model, device, policy)
    runner.warm_up()
    return runner


def runner_for_model(model: Any) -> Runner:
    """A runner over a transformers model as it is: its device, its dtype in every phase."""
    parameter = next(model.parameters())
    return build_runner(model.eval(), parameter.device, DTypePolicy.uniform(parameter.dtype))


def as_runner(model_or_runner: Any) -> Runner:
    """A runner as it is, or ``runner_for_model`` of a transformers model."""
    if isinstance(model_or_runner, (LlamaRunner, TransformersRunner)):
        return model_or_runner
    return runner_for_model(model_or_runner)
