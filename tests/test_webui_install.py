"""install.py installs only what is missing and pins everything already installed; preload.py adds the
flags."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"tipo_ext_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


install = load("install")
preload = load("preload")


def test_nothing_installed_when_everything_is_present(monkeypatch):
    calls = []
    monkeypatch.setattr(install, "is_installed", lambda name: True)
    monkeypatch.setattr(install, "missing", lambda reqs: [s for n, s in reqs if not install.is_installed(n)])
    assert install.main(run=calls.append, environ={}) == []
    assert calls == []


def test_only_missing_packages_are_installed_with_installed_versions_pinned(monkeypatch):
    calls = []
    present = {"transformers", "huggingface-hub", "safetensors"}
    monkeypatch.setattr(install, "missing", lambda reqs: [s for n, s in reqs if n not in present])
    seen_constraints = []

    def run(args):
        calls.append(args)
        seen_constraints.append(Path(args[args.index("-c") + 1]).read_text())

    assert install.main(run=run, environ={}) == ["tqdm>=4.60", "sentencepiece>=0.1.99"]
    assert calls[0][:3] == ["install", "tqdm>=4.60", "sentencepiece>=0.1.99"]
    assert "pytest==" in seen_constraints[0].lower()  # every installed distribution is pinned


def test_llama_cpp_is_optional(monkeypatch):
    monkeypatch.setattr(install, "missing", lambda reqs: [s for n, s in reqs if n == "llama-cpp-python"])
    assert install.main(run=lambda args: None, environ={}) == []
    assert install.main(run=lambda args: None, environ={"TIPO_INSTALL_LLAMA_CPP": "1"}) == [
        "llama-cpp-python>=0.2.60"
    ]


def test_a_pip_failure_does_not_stop_the_webui(monkeypatch, capsys):
    monkeypatch.setattr(install, "missing", lambda reqs: ["tqdm>=4.60"])

    def fail(args):
        raise RuntimeError("pip refused: conflicts with transformers==4.30.2")

    assert install.main(run=fail, environ={}) == ["tqdm>=4.60"]
    assert "could not install tqdm" in capsys.readouterr().err


def test_constraints_text_pins_given_distributions():
    class Dist:
        def __init__(self, name, version):
            self.metadata = {"Name": name}
            self.version = version

    text = install.constraints_text([Dist("Torch", "2.1.2"), Dist("gradio", "3.41.2")])
    assert text == "gradio==3.41.2\nTorch==2.1.2\n"


def test_preload_flags():
    parser = argparse.ArgumentParser()
    preload.preload(parser)
    args = parser.parse_args(["--tipo-models-dir", "/m", "--tipo-device", "cpu", "--tipo-offline"])
    assert (args.tipo_models_dir, args.tipo_device, args.tipo_offline) == ("/m", "cpu", True)
    defaults = parser.parse_args([])
    assert (defaults.tipo_models_dir, defaults.tipo_device, defaults.tipo_offline) == (None, None, False)
