"""The served backend's HTTP client against a scripted HTTP server on 127.0.0.1: the request it sends,
retries with backoff on 429/5xx, refusals, bad answers and token counting."""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kgen.engine.served import (
    ServedBackend,
    ServerError,
    ServerOptions,
    ServerRequestError,
    ServerUnavailableError,
)
from kgen.generation import SamplingSettings

MODELS = {"data": [{"id": "tipo-a", "max_model_len": 1024}, {"id": "tipo-b"}]}
COMPLETION = {"choices": [{"text": "tag: a, b", "finish_reason": "stop"}], "usage": {"prompt_tokens": 9,
              "completion_tokens": 4}}  # fmt: skip


class ScriptedServer:
    """Answers each path from a queue of (status, JSON body); an empty queue answers 404."""

    def __init__(self) -> None:
        self.replies: dict[str, deque] = {}
        self.received: list[tuple[str, dict | None]] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, body: dict | None) -> None:
                script.received.append((self.path, body))
                queue = script.replies.get(self.path)
                status, reply = queue.popleft() if queue else (404, {"error": "not found"})
                if queue is not None and not queue and status < 300:
                    queue.append((status, reply))  # the last success repeats
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self._answer(json.loads(self.rfile.read(length)))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def script(self, path: str, *replies: tuple[int, dict]) -> None:
        self.replies[path] = deque(replies)

    def posted(self, path: str) -> list[dict]:
        return [body for p, body in self.received if p == path]


@pytest.fixture
def fake():
    server = ScriptedServer()
    server.thread.start()
    server.script("/v1/models", (200, MODELS))
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=10)


def backend(fake: ScriptedServer, sleeps: list[float] | None = None, **options) -> ServedBackend:
    record = sleeps if sleeps is not None else []
    return ServedBackend(ServerOptions(fake.url, **options), sleep=record.append)


def test_completion_request_carries_the_exact_text_sampling_and_seed(fake):
    fake.script("/v1/completions", (200, COMPLETION))
    served = backend(fake)
    settings = SamplingSettings(temperature=0.7, top_k=0, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                                max_new_tokens=50)  # fmt: skip
    [completion] = served.generate(["rating: general\ntag: 1girl,"], settings, [123])
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == ("tag: a, b", 9, 4)
    assert completion.finished
    sent = fake.posted("/v1/completions")[0]
    assert sent["model"] == "tipo-a" and sent["prompt"] == "rating: general\ntag: 1girl,"
    assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["min_p"]) == (0.7, 0.9, -1, 0.05)
    assert sent["repeat_penalty"] == sent["repetition_penalty"] == 1.2
    assert sent["seed"] == 123 and sent["max_tokens"] == 50 and "ignore_eos" not in sent
    assert served.context_length == 1024  # vLLM's max_model_len


def test_cut_completions_and_no_stop_on_eos(fake):
    cut = {"choices": [{"text": "x", "finish_reason": "length"}], "usage": {}}
    fake.script("/v1/completions", (200, cut))
    served = backend(fake, model="tipo-b", context_length=300)
    [completion] = served.generate(["p"], SamplingSettings(stop_on_eos=False), [1])
    assert not completion.finished
    sent = fake.posted("/v1/completions")[0]
    assert sent["model"] == "tipo-b" and sent["ignore_eos"] is True
    assert served.context_length == 300


def test_429_and_5xx_are_retried_with_growing_backoff(fake):
    fake.script("/v1/completions", (429, {"error": "slow down"}), (503, {"error": "loading"}),
                (500, {"error": {"message": "boom"}}), (200, COMPLETION))  # fmt: skip
    sleeps: list[float] = []
    served = backend(fake, sleeps, backoff_s=0.1, max_backoff_s=0.3)
    assert served.generate(["p"], SamplingSettings(), [1])[0].text == "tag: a, b"
    assert sleeps == [0.1, 0.2, 0.3]
    assert len(fake.posted("/v1/completions")) == 4


def test_a_server_that_keeps_failing_is_unavailable_after_the_retries(fake):
    fake.script("/v1/completions", *[(502, {"error": "bad gateway"})] * 3)
    served = backend(fake, retries=2)
    with pytest.raises(ServerUnavailableError) as info:
        served.generate(["p"], SamplingSettings(), [1])
    assert str(info.value) == (
        f"TIPO server {fake.url} is unavailable: HTTP 502 bad gateway (tried 3 times on /v1/completions)"
    )


def test_a_refused_request_is_not_retried_and_says_why(fake):
    fake.script("/v1/completions", (400, {"error": {"message": "prompt exceeds the context window"}}))
    sleeps: list[float] = []
    served = backend(fake, sleeps)
    with pytest.raises(ServerRequestError, match="refused /v1/completions: HTTP 400 prompt exceeds") as info:
        served.generate(["p"], SamplingSettings(), [1])
    assert info.value.status == 400 and sleeps == []


def test_answers_without_a_model_list_or_completion_are_clear_errors(fake):
    fake.script("/v1/models", (200, {"object": "list"}))
    with pytest.raises(ServerError, match="gave no model list"):
        backend(fake)
    fake.script("/v1/models", (200, MODELS))
    fake.script("/v1/completions", (200, {"choices": []}))
    with pytest.raises(ServerError, match="gave no completion"):
        backend(fake).generate(["p"], SamplingSettings(), [1])


def test_tokens_are_counted_by_the_servers_tokenize_endpoint(fake):
    fake.script("/extras/tokenize", (200, {"tokens": [1, 5, 6, 7]}))
    served = backend(fake)
    assert served.token_counter.source == "server /extras/tokenize"
    assert served.count_tokens("hello there") == 4
    fake.script("/extras/tokenize")  # the counts are kept: no further request for the same text
    assert served.count_tokens("hello there") == 4


def test_vllm_style_tokenize_endpoint_and_the_fallback_estimate(fake):
    fake.script("/tokenize", (200, {"count": 3, "tokens": [1, 2, 3]}))
    assert backend(fake).count_tokens("anything") == 3
    fake.script("/tokenize")
    estimate = backend(fake)
    assert estimate.token_counter.source == "estimate"
    assert estimate.count_tokens("héllo") == len("héllo".encode()) + 2


def test_local_tokenizer_counts_with_bos(fake, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors

    tokenizer = tokenizers.Tokenizer(
        models.WordLevel({"<s>": 0, "a": 1, "b": 2, "[UNK]": 3}, unk_token="[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    served = backend(fake, tokenizer=str(tmp_path))
    assert served.count_tokens("a b a") == 4
    assert fake.posted("/extras/tokenize") == [] and fake.posted("/tokenize") == []


def test_options_are_checked():
    with pytest.raises(ValueError, match="http"):
        ServerOptions("127.0.0.1:8000/v1")
    assert ServerOptions("http://h:1/v1/").root_url == "http://h:1"
