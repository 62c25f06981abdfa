"""Fixtures of the real-WebUI suite: each chosen WebUI started once with this checkout installed as an
extension, a tiny TIPO-format model in its models folder, and a headless Chromium.

Run: ``.venv/bin/python -m pytest tests/webui_real --real-webui forge,reforge`` (the WebUI kit must be at
``../shared/webui``; each harness is built on first use into ``build/webui``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import real_webui

TEST_MODEL = "tipo-format-test"
HERE = Path(__file__).resolve().parent
SCREENSHOTS = real_webui.REPO_ROOT / ".cache" / "webui-screenshots"
# Settings → TIPO as the suite starts the WebUI: the test model, kept loaded, short prompts (CPU time).
CONFIG = {
    "tipo_default_model": TEST_MODEL,
    "tipo_memory": "keep",
    "tipo_default_tag_length": "short",
    "tipo_default_nl_length": "short",
}


def pytest_generate_tests(metafunc):
    if "webui" in metafunc.fixturenames:
        chosen = [
            name.strip() for name in metafunc.config.getoption("--real-webui").split(",") if name.strip()
        ]
        metafunc.parametrize("webui", chosen or ["(not requested)"], indirect=True, scope="session")


@pytest.fixture(scope="session")
def tipo_models_dir(tmp_path_factory) -> Path:
    from format_model import format_model_dir

    folder = tmp_path_factory.mktemp("tipo-models")
    model = folder / TEST_MODEL
    shutil.copytree(format_model_dir(log=lambda *_: None), model)
    # Saved by this venv's transformers (5.x writes its own tokenizer class name); the WebUIs run 4.46 and
    # 4.48, which read the same tokenizer.json through the class every version has.
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def _write_config(built: real_webui.Harness, values: dict) -> None:
    """Settings the WebUI reads at start (its config.json), merged into what is there."""
    path = built.tree / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    config.update(values)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _clear_tipo_config(built: real_webui.Harness) -> None:
    path = built.tree / "config.json"
    if path.exists():
        config = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps({k: v for k, v in config.items() if not k.startswith("tipo_")}, indent=2))


@pytest.fixture(scope="session")
def webui(request, tmp_path_factory):
    name = request.param
    if name not in real_webui.WEBUIS:
        pytest.skip(
            "real-WebUI suite not requested: `.venv/bin/python -m pytest tests/webui_real --real-webui "
            "forge,reforge` (needs the WebUI kit in ../shared/webui)"
        )
    if not (real_webui.KIT / "build.sh").exists():
        pytest.fail(f"--real-webui {name}: no WebUI kit at {real_webui.KIT}")
    built = real_webui.harness(name)
    tipo_models_dir = request.getfixturevalue("tipo_models_dir")
    extension = real_webui.stage_extension(tmp_path_factory.mktemp(f"ext-{name}"))
    probe_out = tmp_path_factory.mktemp(f"probe-{name}") / "probe.json"
    _clear_tipo_config(built)
    _write_config(built, CONFIG)
    flags = ["--tipo-models-dir", str(tipo_models_dir), "--tipo-offline"]
    running = real_webui.start(
        built,
        {real_webui.EXTENSION_NAME: extension, "tipo-probe": HERE / "probe_ext"},
        flags,
        env={"TIPO_PROBE_OUT": str(probe_out)},
    )
    running.probe_out = probe_out
    yield running
    real_webui.stop(built)
    _clear_tipo_config(built)


@pytest.fixture(scope="session")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, webui):
    context = browser.new_context(viewport={"width": 1500, "height": 1800})
    opened = context.new_page()
    opened.errors = []
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    opened.goto(webui.url, wait_until="domcontentloaded", timeout=180_000)
    opened.locator("#txt2img_prompt textarea").first.wait_for(timeout=180_000)
    opened.wait_for_timeout(1500)
    yield opened
    context.close()


@pytest.fixture
def screenshot(webui):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(target, label: str) -> Path:
        path = SCREENSHOTS / f"{webui.harness.name}-{label}.png"
        target.screenshot(path=str(path))
        return path

    return take


def pytest_report_header(config):
    chosen = config.getoption("--real-webui")
    return f"real WebUIs: {chosen or 'none'} (kit: {real_webui.KIT}; CI={os.environ.get('CI', '')})"
