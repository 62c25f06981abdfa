"""The shape of the code base: kgen's layers (import-linter contracts in pyproject.toml), size limits, ruff.

README "Architecture" describes the layers these tests hold in place.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
LAYER_PACKAGES = {"protocol", "engine", "models", "generation"}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# Declarative tables: long because they list every option, not because they branch.
DECLARATIVE_FUNCTIONS = {"kgen/cli.py::build_parser"}


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed; it comes with `pip install -e .[test]`"
    return found


def run_tool(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def importlinter_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_import_contracts_hold():
    result = run_tool([tool("lint-imports"), "--no-cache"], REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_contract_names_every_top_level_module():
    """The lower layers' 'never reach up' contract lists the top level by name: a new module must join it."""
    top_level = {
        path.stem if path.is_file() else path.name
        for path in (REPO / "kgen").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    contract = next(c for c in importlinter_config()["contracts"] if "reach up" in c["name"])
    listed = {name.removeprefix("kgen.") for name in contract["forbidden_modules"]}
    assert top_level - LAYER_PACKAGES == listed


def test_a_protocol_module_importing_torch_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "kgen", tmp_path / "kgen", ignore=shutil.ignore_patterns("__pycache__", "*.bin"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    tags = tmp_path / "kgen" / "protocol" / "tags.py"
    tags.write_text("import torch  # noqa\n" + tags.read_text())
    env = {"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    result = run_tool([tool("lint-imports"), "--no-cache"], tmp_path, env)
    assert result.returncode != 0
    assert "kgen.protocol.tags -> torch" in result.stdout


def source_files() -> list[Path]:
    files = [*sorted((REPO / "kgen").rglob("*.py")), *sorted((REPO / "scripts").rglob("*.py"))]
    return [*files, REPO / "install.py", REPO / "preload.py"]


def test_no_module_over_the_line_limit():
    long = {
        str(p.relative_to(REPO)): n
        for p in source_files()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_the_line_limit():
    long = {}
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{path.relative_to(REPO)}::{node.name}"
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES and key not in DECLARATIVE_FUNCTIONS:
                    long[key] = size
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(command):
    result = run_tool([tool("ruff"), *command, "."], REPO)
    assert result.returncode == 0, result.stdout + result.stderr
