"""Installs what the TIPO extension needs and the WebUI lacks; never changes a package that is already
installed.

The WebUI runs this file at start-up (with its ``launch`` module importable). A requirement is installed
only when
its distribution is missing, and pip runs with a constraints file that pins every installed distribution to
its
current version, so a new package cannot up- or downgrade anything the WebUI pinned (pip refuses instead,
and the
message says which package). llama-cpp-python (GGUF models) is optional: set TIPO_INSTALL_LLAMA_CPP=1 to
install it.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable

# (distribution name, pip requirement) beyond what every WebUI already ships (torch, numpy, safetensors, ...).
REQUIREMENTS = [
    ("transformers", "transformers>=4.30.2"),
    ("huggingface-hub", "huggingface_hub>=0.16"),
    ("tqdm", "tqdm>=4.60"),
    ("sentencepiece", "sentencepiece>=0.1.99"),
    ("safetensors", "safetensors>=0.3"),
]
OPTIONAL = [("llama-cpp-python", "llama-cpp-python>=0.2.60")]


def is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing(
    requirements: Iterable[tuple[str, str]], installed: Callable[[str], bool] = is_installed
) -> list[str]:
    return [spec for name, spec in requirements if not installed(name)]


def constraints_text(distributions: Iterable[importlib.metadata.Distribution] | None = None) -> str:
    """``name==version`` for every installed distribution: pip may add packages, never change these."""
    pins = {}
    for dist in distributions if distributions is not None else importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version:
            pins[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(pins[key] for key in sorted(pins)) + "\n"


def pip_install(specs: list[str], run: Callable[[list[str]], None] | None = None) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as handle:
        handle.write(constraints_text())
        constraints = handle.name
    try:
        args = ["install", *specs, "-c", constraints]
        if run is not None:
            run(args)
            return
        try:
            import launch  # the WebUI's own pip runner (uses its venv and index settings)

            launch.run_pip(" ".join(f'"{a}"' for a in args), f"TIPO requirements: {', '.join(specs)}")
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", *args], check=True)
    finally:
        os.unlink(constraints)


def main(run: Callable[[list[str]], None] | None = None, environ=os.environ) -> list[str]:
    wanted = list(REQUIREMENTS)
    if environ.get("TIPO_INSTALL_LLAMA_CPP", "").strip().lower() in ("1", "true", "yes"):
        wanted += OPTIONAL
    specs = missing(wanted)
    if specs:
        try:
            pip_install(specs, run)
        except Exception as exc:  # the WebUI must still start; the script reports what is missing when used
            print(f"TIPO: could not install {', '.join(specs)}: {exc}", file=sys.stderr)
    return specs


if __name__ == "__main__":
    main()
