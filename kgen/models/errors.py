"""What can go wrong with a model's files; each message says what to do."""

from __future__ import annotations

from .registry import UnknownModelError as RegistryUnknownModelError


class ModelStoreError(Exception):
    """Base class: something about a model's files. The message says what to do."""


class UnknownModelError(ModelStoreError, RegistryUnknownModelError):
    """A name that is not in the registry."""


class HubUnreachableError(ModelStoreError, ConnectionError):
    """The Hugging Face Hub could not be reached (no network, proxy, offline mode)."""


class ModelFileMissingError(ModelStoreError, FileNotFoundError):
    """A file is neither on disk nor obtainable (offline, or not in the hub repo)."""


class CorruptModelFileError(ModelStoreError):
    """A file on disk is truncated or not what its suffix says."""


class UntrustedNameError(ModelStoreError, ValueError):
    """A model name from an untrusted source (e.g. PNG infotext) names nothing we may load."""
