"""Backend for a model served by an OpenAI-compatible engine: vLLM, SGLang, llama.cpp's server, TGI.

Each prompt goes to ``POST {base_url}/completions`` as a raw completion of the exact model input text, with
the sampling settings and the seed; the protocol, retries and parsing stay in kgen's pipeline, so a served
model gives the prompts the local engine would make from the same completions. Only the standard library
is used for HTTP (one request per call, safe to call from several threads at once).

Errors: a connection failure, a timeout, 429 or 5xx is retried with exponential backoff; when the retries
run out, :class:`ServerUnavailableError` (the job should stop and can be resumed). Any other refusal of one
request (4xx) is :class:`ServerRequestError` (that request fails, the others go on). Both name the server.

Engines name sampling knobs differently: ``repeat_penalty`` (llama.cpp) and ``repetition_penalty`` (vLLM,
SGLang) are both sent; ``top_k``, ``min_p`` and ``seed`` are honoured by vLLM, SGLang and llama.cpp.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

from ..generation import Completion, SamplingSettings

DEFAULT_CONTEXT_LENGTH = 2048
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TOKEN_CACHE_SIZE = 4096


class ServerError(RuntimeError):
    """The server failed or answered something unusable; the message names the server and the problem."""


class ServerUnavailableError(ServerError):
    """The server cannot be reached or keeps failing (after the retries)."""


class ServerRequestError(ServerError):
    """The server refused one request (a 4xx other than 408/429)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServerOptions:
    """Where the model is served and how patiently to talk to it."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # None: the first model the server lists
    timeout_s: float = 120.0  # one HTTP request
    retries: int = 5  # further tries after a retryable failure
    backoff_s: float = 0.5  # wait before the first retry; doubles each time
    max_backoff_s: float = 8.0
    context_length: int | None = None  # None: what the server reports, else default_context_length
    default_context_length: int = DEFAULT_CONTEXT_LENGTH
    tokenizer: str | None = None  # a local tokenizer folder or tokenizer.json for counting tokens

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, not {self.base_url!r}")
        if self.retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("server retries and backoff must be >= 0 and the timeout > 0")

    @property
    def api_url(self) -> str:
        return self.base_url.rstrip("/")

    @property
    def root_url(self) -> str:
        """The server root, where engines put their non-OpenAI endpoints (/tokenize, /props)."""
        api = self.api_url
        return api[: -len("/v1")] if api.endswith("/v1") else api


class JsonClient:
    """JSON over HTTP with bounded retries; failures raise ServerError subclasses naming ``server``."""

    def __init__(self, options: ServerOptions, sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.sleep = sleep

    def get(self, url: str) -> Any:
        return self._call(url, None)

    def post(self, url: str, payload: dict[str, Any]) -> Any:
        return self._call(url, payload)

    def once(self, url: str) -> Any:
        """One GET, no retries: for optional endpoints (raises urllib's errors as they are)."""
        return self._once(url, None)

    def _call(self, url: str, payload: dict[str, Any] | None) -> Any:
        problem = ""
        for attempt in range(self.options.retries + 1):
            if attempt:
                self.sleep(min(self.options.max_backoff_s, self.options.backoff_s * 2 ** (attempt - 1)))
            try:
                return self._once(url, payload)
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if exc.code not in RETRYABLE_STATUS:
                    raise ServerRequestError(
                        f"TIPO server {self.options.base_url} refused {_path(url)}: HTTP {exc.code} {detail}",
                        exc.code,
                    ) from None
                problem = f"HTTP {exc.code} {detail}"
            except (urllib.error.URLError, HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                problem = f"cannot connect ({reason})"
        raise ServerUnavailableError(
            f"TIPO server {self.options.base_url} is unavailable: {problem} "
            f"(tried {self.options.retries + 1} times on {_path(url)})"
        )

    def _once(self, url: str, payload: dict[str, Any] | None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=self.options.timeout_s) as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:
            raise ServerError(
                f"TIPO server {self.options.base_url} answered {_path(url)} with something that is not "
                f"JSON: {body[:120]!r}"
            ) from None


def _path(url: str) -> str:
    return urllib.request.urlparse(url).path or "/"


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", errors="replace")
    except OSError:
        return exc.reason or ""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300]
    error = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)[:300]


class TokenCounter:
    """Counts prompt tokens (BOS included): a local tokenizer, else the server's tokenize endpoint, else a
    conservative estimate (UTF-8 bytes + 2: no token of a byte-fallback vocabulary is shorter than a byte,
    beside BOS and SentencePiece's leading space)."""

    def __init__(self, client: JsonClient, model: str, tokenizer_path: str | None) -> None:
        self.client = client
        self.model = model
        self._count: Callable[[str], int] | None = None
        self.source = "estimate"
        self._cache: dict[str, int] = {}
        if tokenizer_path:
            self._count = _local_tokenizer(tokenizer_path)
            self.source = f"tokenizer {tokenizer_path}"
        else:
            self._count = self._probe_server()

    def __call__(self, text: str) -> int:
        cached = self._cache.get(text)
        if cached is None:
            cached = self._count(text) if self._count is not None else len(text.encode("utf-8")) + 2
            if len(self._cache) >= TOKEN_CACHE_SIZE:
                self._cache.clear()
            self._cache[text] = cached
        return cached

    def _probe_server(self) -> Callable[[str], int] | None:
        root = self.client.options.root_url
        endpoints: list[tuple[str, Callable[[str], dict], Callable[[Any], int]]] = [
            (
                f"{root}/extras/tokenize",
                lambda t: {"input": t, "model": self.model},
                lambda r: len(r["tokens"]),
            ),  # llama-cpp-python (BOS included)
            (
                f"{root}/tokenize",
                lambda t: {"prompt": t, "model": self.model},
                lambda r: int(r["count"]) if "count" in r else len(r["tokens"]),
            ),  # vLLM, SGLang (BOS included)
        ]
        for url, make, read in endpoints:
            try:
                read(self.client.post(url, make("a")))
            except (ServerError, KeyError, TypeError, ValueError):
                continue
            self.source = f"server {_path(url)}"
            return lambda text, url=url, make=make, read=read: read(self.client.post(url, make(text)))
        return None


def _local_tokenizer(path: str) -> Callable[[str], int]:
    from tokenizers import Tokenizer

    location = Path(path).expanduser()
    file = location / "tokenizer.json" if location.is_dir() else location
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {location}")
    tokenizer = Tokenizer.from_file(str(file))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=True).ids)


class ServedBackend:
    """A model behind an OpenAI-compatible ``/v1/completions`` endpoint (see the module docstring)."""

    def __init__(self, options: ServerOptions, sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.client = JsonClient(options, sleep)
        listed = self._list_models()
        names = [str(entry.get("id")) for entry in listed]
        if not names:
            raise ServerError(f"TIPO server {options.base_url} lists no models at /models")
        if options.model is not None and options.model not in names:
            raise ServerError(
                f"TIPO server {options.base_url} has no model {options.model!r}; "
                f"it serves: {', '.join(names)}"
            )
        self.model = options.model or names[0]
        self.name = f"{self.model} @ {options.base_url}"
        entry = listed[names.index(self.model)]
        self.context_length = int(
            options.context_length
            or entry.get("max_model_len")
            or self._props_context()
            or options.default_context_length
        )
        self.token_counter = TokenCounter(self.client, self.model, options.tokenizer)

    def _list_models(self) -> list[dict[str, Any]]:
        reply = self.client.get(f"{self.options.api_url}/models")
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list):
            raise ServerError(
                f"TIPO server {self.options.base_url} gave no model list at /models: {reply!r:.200}"
            )
        return [entry for entry in data if isinstance(entry, dict)]

    def _props_context(self) -> int | None:
        """llama.cpp's own server reports its context size at /props."""
        try:
            props = self.client.once(f"{self.options.root_url}/props")
        except (ServerError, urllib.error.URLError, HTTPException, OSError):
            return None
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None

    def count_tokens(self, text: str) -> int:
        return self.token_counter(text)

    def completion_payload(self, prompt: str, settings: SamplingSettings, seed: int) -> dict[str, Any]:
        budget = min(settings.max_new_tokens, self.context_length - self.count_tokens(prompt))
        if budget < 1:
            raise ValueError(
                f"prompt leaves no room in the {self.context_length}-token context of {self.name}"
            )
        payload: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": budget,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "top_k": settings.top_k if settings.top_k > 0 else -1,
            "min_p": settings.min_p,
            "repeat_penalty": settings.repetition_penalty,
            "repetition_penalty": settings.repetition_penalty,
            "seed": seed % 0xFFFFFFFF,  # llama.cpp: a 32-bit seed, 0xFFFFFFFF would mean "random"
            "stream": False,
            "skip_special_tokens": False,  # vLLM: keep TIPO's <|...|> tokens in the text
            "spaces_between_special_tokens": False,
        }
        if not settings.stop_on_eos:
            payload["ignore_eos"] = True
        return payload

    def complete(self, prompt: str, settings: SamplingSettings, seed: int) -> Completion:
        started = time.perf_counter()
        reply = self.client.post(
            f"{self.options.api_url}/completions", self.completion_payload(prompt, settings, seed)
        )
        try:
            choice = reply["choices"][0]
            text = choice["text"]
            usage = reply.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise ServerError(
                f"TIPO server {self.options.base_url} gave no completion: {reply!r:.200}"
            ) from None
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or self.count_tokens(prompt)),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            seconds=time.perf_counter() - started,
            finished=choice.get("finish_reason") != "length",
        )

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Completion]:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        return [
            self.complete(prompt, settings, int(seed)) for prompt, seed in zip(prompts, seeds, strict=True)
        ]

    def __repr__(self) -> str:
        return f"ServedBackend({self.options.base_url!r}, model={self.model!r}, n_ctx={self.context_length})"
