"""Generation backends. They know tokens and text, never the TIPO protocol."""

from .base import Backend, Completion, SamplingSettings

__all__ = ["Backend", "Completion", "SamplingSettings"]
