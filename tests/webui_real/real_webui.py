"""Drives a real Stable Diffusion WebUI (Forge or reForge) built by the WebUI kit in ``../shared/webui``.

A :class:`Harness` is one kit build (``build.sh NAME DIR``: the WebUI tree, its venv, a random SD1.5
checkpoint, ``start.sh``/``stop.sh``). :func:`stage_extension` copies this checkout's files (what git
tracks or would track: no virtualenvs, caches or models) into a folder installed as the extension
``tipo-webui-kgen``; a :class:`RunningWebUI` is one start of the WebUI with it, talked to through the HTTP
API.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
KIT = Path(os.environ.get("TIPO_WEBUI_KIT", REPO_ROOT.parent / "shared" / "webui"))
# Not under a folder whose name starts with a dot: gradio 3.41 (reForge) refuses to serve any file below one
# (routes.py: is_dotfile), so every javascript/ file of a WebUI under .cache/ would answer 403.
HARNESS_ROOT = Path(os.environ.get("TIPO_WEBUI_HARNESS_ROOT", REPO_ROOT / "build" / "webui"))
EXTENSION_NAME = "tipo-webui-kgen"
WEBUIS = ("forge", "reforge")
# A tiny 64x64 one-step image: the checkpoint has random weights, so only prompts, infotext and UI are tested.
IMAGE_DEFAULTS = {"width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "cfg_scale": 1.0}


class WebUIError(RuntimeError):
    pass


@dataclass(frozen=True)
class Harness:
    name: str
    folder: Path

    @property
    def tree(self) -> Path:
        return self.folder / self.name

    @property
    def log_file(self) -> Path:
        return self.folder / "webui.log"

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def is_built(self) -> bool:
        return (self.folder / ".kit-stamp").exists() and (self.folder / "start.sh").exists()


def harness(name: str, *, build: bool = True) -> Harness:
    """The kit build of ``name`` under ``build/webui`` (built when missing and ``build`` is true)."""
    found = Harness(name, HARNESS_ROOT / name)
    if not found.is_built():
        if not build:
            raise WebUIError(f"no {name} harness in {found.folder}")
        result = subprocess.run(
            [str(KIT / "build.sh"), name, str(found.folder)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not found.is_built():
            raise WebUIError(f"build.sh {name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return found


def stage_extension(target: Path) -> Path:
    """This checkout as a user would clone it: the files git tracks plus new, not ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if not source.is_file():
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return target


@dataclass
class RunningWebUI:
    harness: Harness
    port: int
    probe_out: Path | None = None  # where the test-only second-pass extension writes what it saw

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.harness.log_text()

    def request(self, method: str, path: str, body: Any = None, timeout: float = 600) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, text

    def answers(self) -> bool:
        try:
            return self.request("GET", "/sdapi/v1/sd-models", timeout=5)[0] == 200
        except OSError:
            return False

    def post(self, path: str, body: Any) -> Any:
        status, answer = self.request("POST", path, body)
        if status != 200:
            raise WebUIError(f"POST {path} -> HTTP {status}: {str(answer)[:2000]}")
        return answer

    def get(self, path: str) -> Any:
        status, answer = self.request("GET", path)
        if status != 200:
            raise WebUIError(f"GET {path} -> HTTP {status}: {str(answer)[:2000]}")
        return answer

    def generate(self, kind: str, tipo_args: Any = None, **request: Any) -> Generation:
        """One txt2img/img2img call; ``tipo_args`` is the TIPO script's ``args`` (named dict or list)."""
        body = {**IMAGE_DEFAULTS, "seed": 1, **request}
        if kind == "img2img" and "init_images" not in body:
            body["init_images"] = [noise_png()]
            body.setdefault("denoising_strength", 0.5)
        if tipo_args is not None:
            body["alwayson_scripts"] = {"TIPO": {"args": tipo_args}}
        answer = self.post(f"/sdapi/v1/{kind}", body)
        return Generation(answer["images"], json.loads(answer["info"]))


@dataclass
class Generation:
    images: list[str]
    info: dict[str, Any]

    @property
    def prompts(self) -> list[str]:
        return self.info["all_prompts"]

    @property
    def infotexts(self) -> list[str]:
        return self.info["infotexts"]

    @property
    def params(self) -> dict[str, Any]:
        return self.info.get("extra_generation_params", {})


def noise_png(size: int = 64) -> str:
    """A small deterministic PNG (base64) as an img2img input, made without any image library."""
    import struct
    import zlib

    rows = b"".join(b"\0" + bytes((x * 7 + y * 13) % 256 for x in range(size * 3)) for y in range(size))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()


def png_text(image_b64: str) -> dict[str, str]:
    """The tEXt/iTXt chunks of a PNG the API returned (the infotext lives in 'parameters')."""
    import struct
    import zlib

    data = io.BytesIO(base64.b64decode(image_b64.split(",", 1)[-1]))
    data.read(8)
    found = {}
    while chunk_header := data.read(8):
        length, kind = struct.unpack(">I4s", chunk_header)
        payload = data.read(length)
        data.read(4)
        if kind == b"tEXt":
            key, _, value = payload.partition(b"\0")
            found[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = payload.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            found[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
    return found


def start(
    built: Harness, extensions: dict[str, Path], flags: list[str], env: dict[str, str] | None = None
) -> RunningWebUI:
    """Start the WebUI with ``extensions`` (name -> folder) installed; their installers run first."""
    environment = {
        **os.environ,
        "EXTENSIONS": ":".join(f"{name}={folder}" for name, folder in extensions.items()),
        "RUN_INSTALLERS": "1",
        **(env or {}),
    }
    result = subprocess.run(
        [str(built.folder / "start.sh"), *flags], env=environment, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise WebUIError(f"{built.name} did not start:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    port = int((built.folder / "webui.port").read_text().strip())
    return RunningWebUI(built, port)


def stop(built: Harness) -> None:
    subprocess.run([str(built.folder / "stop.sh"), "--remove-extensions"], capture_output=True, check=False)


def extension_log_problems(log: str) -> list[str]:
    """Log lines that report a failure involving this extension (tracebacks through its files, its
    warnings, errors naming it)."""
    problems = []
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Traceback") or re.search(r"\b(Error|Exception)\b", line):
            context = "\n".join(lines[index : index + 40])
            if EXTENSION_NAME in context or "tipo" in context.lower():
                problems.append(context)
    return problems


def wait_until(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
