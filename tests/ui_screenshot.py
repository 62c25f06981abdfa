"""Render the TIPO accordion (opened) in a plain gradio page and screenshot it with headless Chromium.

Usage (from the repo root, with a venv that has gradio):
    .venv-gradio3/bin/python tests/ui_screenshot.py /tmp/ui_gradio3.png
Serves on 127.0.0.1 only and stops the server afterwards. Not a test (no test_ prefix).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webui_page import build_page

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,1700",
    "--virtual-time-budget=8000",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(output: str) -> None:
    page = build_page(False)
    accordion = page.controls[0].accordion
    accordion.open = True  # show the controls in the picture
    page.script.extra_prompts["nl_prompt"].value = "A girl reading in a sunlit library."
    page.prompt.value = "<lora:style:0.7>, 1girl, (smile:1.2), [dog:cat:0.5]"
    for block in page.demo.blocks.values():  # open the "Sampling" sub-accordion too
        if getattr(block, "elem_id", "") == "txt2img_tipo_sampling":
            block.open = True
    js = (Path(__file__).resolve().parent.parent / "javascript" / "tipo.js").read_text(encoding="utf-8")
    del js  # the page does not need the WebUI's JS to render
    port = free_port()
    page.demo.queue()
    page.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        time.sleep(2)
        browser = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
        subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--screenshot={output}", f"http://127.0.0.1:{port}/"],
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        page.demo.close()
    print(f"wrote {output}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ui.png")
