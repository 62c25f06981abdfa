"""The served backend against a real OpenAI-compatible server: llama-cpp-python's ``llama_cpp.server`` on
a GGUF of the format model, on 127.0.0.1. Served results equal the local llama.cpp backend's for the same
seeds (llama.cpp's server honours the seed); kills, refusals, wrong names and dead URLs give clear messages.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from llama_server import CONTEXT, MODEL_ALIAS, LlamaServer, free_port
from optional import require

from kgen import cli
from kgen.bulk.journal import Progress, progress_path_for

pytestmark = pytest.mark.slow
INSTALL = "pip install 'llama-cpp-python[server]==0.3.36'"
TAGS = ["1girl, solo", "1boy, solo, hat", "2girls, smile", "no humans, scenery", "1girl, long hair, school"]
BULK_LINES = 200
# Token counts are left out of comparisons: llama.cpp's server does not count the EOS token, the local
# backend does (and vLLM does too).
TOKEN_KEYS = ("prompt_tokens", "completion_tokens")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def comparable(text: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        for key in (*TOKEN_KEYS, "seconds"):
            record.pop(key, None)
    return records


@pytest.fixture(scope="module")
def format_gguf(tmp_path_factory) -> Path:
    require("llama_cpp", INSTALL)
    require("llama_cpp.server.app", INSTALL)
    from format_model import format_model_or_skip
    from gguf_convert import convert_llama_to_gguf

    model, tokenizer = format_model_or_skip()
    return convert_llama_to_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "format.gguf", "f32")


@pytest.fixture(scope="module")
def server(format_gguf, tmp_path_factory):
    running = LlamaServer(format_gguf, log=tmp_path_factory.mktemp("server") / "server.log").start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("requests") / "in.jsonl"
    lines = [
        {"tags": TAGS[i % len(TAGS)], "seed": 500 + i, "tag_length": "very_short"} for i in range(BULK_LINES)
    ]
    lines[13] = {"tags": "1girl", "ban_tags": "(unclosed"}
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def served(server: LlamaServer, *argv: str) -> tuple[str, ...]:
    return ("--server", server.url, "--model", str(server.gguf), "--server-context", str(CONTEXT), *argv)


@pytest.fixture(scope="module")
def served_reference(server, requests_file, tmp_path_factory) -> str:
    """The uninterrupted bulk job on the server: 200 lines, 8 requests in flight."""
    output = tmp_path_factory.mktemp("served") / "served.jsonl"
    argv = served(server, "--input", str(requests_file), "--output", str(output), "--concurrency", "8")
    code, _, err = run_cli(*argv)
    assert code == 1, err  # the one bad line
    assert f"{BULK_LINES} lines done, 1 failed" in err
    return output.read_text()


def test_single_prompt_equals_the_local_engine(server, format_gguf):
    prompt = ("1girl, solo, long hair", "--seed", "7", "--json")
    code, local, err = run_cli(*prompt, "--model", str(format_gguf))
    assert code == 0, err
    code, remote, err = run_cli(*served(server, *prompt))
    assert code == 0, err
    assert comparable(remote) == comparable(local)
    assert len(json.loads(remote)["general"]) > 3


def test_bulk_of_200_lines_with_concurrency_8_equals_the_local_engine(
    served_reference, format_gguf, requests_file, tmp_path
):
    """The local llama.cpp backend on every 8th line (each line's result depends only on its request)."""
    lines = requests_file.read_text().splitlines()
    sample = [*range(0, BULK_LINES, 8), 13]  # and the bad line
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(lines[i] + "\n" for i in sample))
    output = tmp_path / "local.jsonl"
    code, _, err = run_cli("--model", str(format_gguf), "--input", str(subset), "--output", str(output))
    assert code == 1, err
    local = comparable(output.read_text())
    remote = comparable(served_reference)
    assert len(remote) == BULK_LINES
    for position, line in enumerate(sample):
        if "error" in local[position]:
            assert (
                "error" in remote[line]
                and remote[line]["error"].split(": ", 1)[1] == (local[position]["error"].split(": ", 1)[1])
            )
        else:
            assert remote[line] == local[position], f"line {line + 1}"
    assert len({record["prompt"] for record in remote if "prompt" in record}) > 100


def _run_in_thread(argv: tuple[str, ...]) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        outcome["result"] = run_cli(*argv)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _wait_for_lines(output: Path, at_least: int, timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = Progress.read(progress_path_for(output)) if progress_path_for(output).exists() else None
        if progress is not None and progress.lines >= at_least:
            return progress.lines
        time.sleep(0.05)
    raise AssertionError(f"the job did not reach {at_least} lines in {timeout_s} s")


def test_server_killed_mid_job_and_restarted_the_job_goes_on(
    format_gguf, requests_file, served_reference, tmp_path
):
    server = LlamaServer(format_gguf, log=tmp_path / "server.log").start()
    try:
        output = tmp_path / "served.jsonl"
        argv = served(
            server, "--input", str(requests_file), "--output", str(output), "--server-retries", "12"
        )
        thread, outcome = _run_in_thread(argv)
        done_at_kill = _wait_for_lines(output, 40)
        server.kill()
        time.sleep(1.0)
        server.start()  # same port: the job's retries reach it again
        thread.join(timeout=600)
        assert not thread.is_alive()
        code, _, err = outcome["result"]
        assert code == 1, err
        assert done_at_kill < BULK_LINES
        assert output.read_text() == served_reference
    finally:
        server.stop()


def test_server_down_longer_than_the_retries_stops_the_job_and_resume_finishes_it(
    format_gguf, requests_file, served_reference, tmp_path
):
    server = LlamaServer(format_gguf, log=tmp_path / "server.log").start()
    try:
        output = tmp_path / "served.jsonl"
        argv = served(server, "--input", str(requests_file), "--output", str(output), "--server-retries", "1")
        thread, outcome = _run_in_thread(argv)
        _wait_for_lines(output, 40)
        server.kill()
        thread.join(timeout=300)
        code, _, err = outcome["result"]
        assert code == cli.EXIT_SERVER
        assert f"TIPO server {server.url} is unavailable" in err and "--resume" in err
        stopped_at = Progress.read(progress_path_for(output)).lines
        assert 40 <= stopped_at < BULK_LINES
        server.start()
        code, _, err = run_cli(*argv, "--resume")
        assert code == 1 and f"resumed at line {stopped_at + 1}" in err
        assert output.read_text() == served_reference
    finally:
        server.stop()


def test_a_request_the_server_refuses_gets_an_error_line_and_the_job_goes_on(server, tmp_path):
    requests = tmp_path / "in.jsonl"
    long_caption = " ".join(["a girl standing in a wide field of flowers under a blue sky"] * 60)
    lines = [{"tags": "1girl", "seed": 1}, {"nl": long_caption, "seed": 2}, {"tags": "1boy", "seed": 3}]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "out.jsonl"
    # The server's context is 512 tokens; told 4096, the pipeline sends a prompt the server must refuse.
    argv = ("--server", server.url, "--model", str(server.gguf), "--server-context", "4096")
    code, _, err = run_cli(
        *argv, "--input", str(requests), "--output", str(output), "--tag-length", "very short"
    )
    assert code == 1, err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [("error" in r) for r in records] == [False, True, False]
    assert records[1]["error"].startswith(
        f"line 2: TIPO server {server.url} refused /v1/completions: HTTP 400"
    )
    assert "context" in records[1]["error"]


def test_a_wrong_model_name_is_refused_naming_the_served_ones(server):
    code, out, err = run_cli(*served(server, "1girl", "--server-model", "TIPO-500M"))
    assert code == cli.EXIT_SERVER and out == ""
    assert f"TIPO server {server.url} has no model 'TIPO-500M'; it serves: {MODEL_ALIAS}" in err


def test_an_unreachable_url_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    code, _, err = run_cli("1girl", "--server", url, "--server-retries", "2")
    assert code == cli.EXIT_SERVER
    assert f"TIPO server {url} is unavailable: cannot connect" in err and "refused" in err.lower()
    assert "tried 3 times" in err
    assert time.monotonic() - started < 30
