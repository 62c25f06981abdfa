"""Optional packages in tests: outside CI a missing one skips the test with the reason; in CI (``CI`` set)
it fails, since .ci/run installs them."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module: str, install: str) -> ModuleType:
    if os.environ.get("CI"):
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            pytest.fail(f"{module} is missing in CI ({exc}); .ci/run installs it with {install}")
    return pytest.importorskip(module, reason=f"{module} is not installed ({install})")
