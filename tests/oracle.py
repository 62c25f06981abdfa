"""Run the reference engine (tipo-kgen 0.3.1) in a subprocess as a test oracle.

Its import name is ``kgen`` like ours, so it never shares an interpreter with our package: it is
installed into its own target directory and each driver script in ``tests/oracle_drivers`` runs with
that directory first on ``PYTHONPATH``. Drivers read a JSON payload from ``argv[1]`` and write a JSON
result to ``argv[2]`` (the reference logs to stdout, so stdout cannot carry data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

REFERENCE_REQUIREMENT = "tipo-kgen==0.3.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_DIR = REPO_ROOT / ".cache" / "tipo-kgen-0.3.1"
DRIVERS_DIR = Path(__file__).resolve().parent / "oracle_drivers"


class OracleUnavailable(RuntimeError):
    pass


@lru_cache(maxsize=1)
def reference_dir() -> Path:
    """Install the reference once into ``.cache/`` (needs PyPI the first time)."""
    marker = TARGET_DIR / "kgen" / "executor" / "tipo.py"
    if not marker.exists():
        TARGET_DIR.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(TARGET_DIR),
            REFERENCE_REQUIREMENT,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not marker.exists():
            raise OracleUnavailable(
                f"could not install {REFERENCE_REQUIREMENT}: {proc.stderr.strip()[-500:]}"
            )
    return TARGET_DIR


def run_reference(driver: str, payload: object, timeout: float = 600) -> object:
    """Run ``tests/oracle_drivers/<driver>.py`` under the reference engine and return its JSON result."""
    target = reference_dir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(payload), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, str(DRIVERS_DIR / f"{driver}.py"), str(src), str(dst)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not dst.exists():
            raise RuntimeError(
                f"reference driver {driver} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
        return json.loads(dst.read_text(encoding="utf-8"))


def reference_or_skip(driver: str, payload: object) -> object:
    """Like run_reference, but skips (locally) or fails (in CI) when the reference cannot be installed."""
    try:
        return run_reference(driver, payload)
    except OracleUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"reference engine unavailable: {exc}")
