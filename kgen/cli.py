"""Command line: ``python -m kgen "1girl, solo" --nl "a girl in a park" ...``.

One prompt from the arguments, or many with ``--input requests.jsonl --output results.jsonl``.
``--dry-run`` prints the first model input without loading any model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .backends.base import SamplingSettings
from .lengths import Length
from .pipeline import (
    DEFAULT_FORMAT,
    RequestError,
    UpsampleRequest,
    UpsampleResult,
    first_model_input,
    upsample_many,
    upsample_variants,
)
from .postprocess import BanTagError
from .variants import variant_sampler

DEFAULT_MODEL = "KBlueLeaf/TIPO-500M-ft"
EXIT_BAD_INPUT = 2
EXIT_NO_MODEL = 3
REQUEST_KEYS = ("tags", "nl", "tag_length", "nl_length", "format", "aspect_ratio", "seed", "ban_tags")


def _length(value: str) -> Length:
    try:
        return Length.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kgen",
        description="Upsample Danbooru tags and/or a caption into a detailed prompt with TIPO or DanTagGen.",
    )
    parser.add_argument(
        "tags", nargs="?", default="", help='comma-separated tags, e.g. "1girl, solo, long hair"'
    )
    parser.add_argument("--nl", default="", help="natural-language caption")
    parser.add_argument(
        "--tag-length",
        type=_length,
        default=Length.LONG,
        help="very_short | short | long | very_long (spaces allowed); default long",
    )
    parser.add_argument("--nl-length", type=_length, default=Length.LONG, help="same choices; default long")
    parser.add_argument(
        "--format",
        default=DEFAULT_FORMAT,
        help=f'a preset ("tag only", "NL only", "both, tag first", "both, NL first", '
        f'"both + generated NL") or a template with <|general|>-style fields; '
        f'default "{DEFAULT_FORMAT}"',
    )
    parser.add_argument(
        "--no-formatting", action="store_true", help="keep your text as typed and only append the new content"
    )
    parser.add_argument("--aspect-ratio", type=float, default=1.0, help="image width / height; default 1.0")
    parser.add_argument("--seed", type=int, default=-1, help="seed; negative draws a random one (default)")
    parser.add_argument("--ban-tags", default="", help='comma-separated tags or regexes, e.g. "hat, .*text"')

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="registry name (see --list-models), 'name | file.gguf', or a local folder, "
        f".safetensors or .gguf path; default {DEFAULT_MODEL}",
    )
    model.add_argument(
        "--models-dir",
        default=None,
        help="where models are downloaded and looked for (default: $KGEN_MODELS_DIR or ~/.cache/kgen/models)",
    )
    model.add_argument("--offline", action="store_true", help="never download; use what is on disk")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N; default auto")
    model.add_argument("--dtype", default=None,
                       help="transformers backend precision: auto (default), float32, bfloat16, float16, or "
                            "int8 (CPU only: quantized matrices, faster decoding, slightly different output)")
    model.add_argument("--list-models", action="store_true", help="list registry and local models, then exit")

    sampling = parser.add_argument_group(
        "sampling",
        "unset values take the model's protocol defaults (TIPO: temperature 0.5, top-p 0.95, "
        "top-k 80, min-p 0.1, repetition penalty 1.17, 512 new tokens; DanTagGen: its own)",
    )
    sampling.add_argument("--temperature", type=float)
    sampling.add_argument("--top-p", type=float)
    sampling.add_argument("--top-k", type=int)
    sampling.add_argument("--min-p", type=float)
    sampling.add_argument("--repetition-penalty", type=float)
    sampling.add_argument("--max-new-tokens", type=int)

    output = parser.add_argument_group("output")
    output.add_argument(
        "--variants",
        type=int,
        default=1,
        help="N different prompts for each request, sampled together with TGTS (transformers models; "
        "other backends sample them independently)",
    )
    output.add_argument(
        "--tgts-policy", default="rw-mcts", help="TGTS search policy: rw-mcts, cg-mcts, greedy, independent"
    )
    output.add_argument(
        "--json", action="store_true", help="print the fields, final prompt, tokens and seconds as JSON"
    )
    output.add_argument(
        "--dry-run", action="store_true", help="print the first model input without loading any model"
    )
    output.add_argument(
        "--input", type=Path, help="JSON lines of requests (keys: " + ", ".join(REQUEST_KEYS) + ")"
    )
    output.add_argument("--output", type=Path, help="JSON lines of results, same order (default: stdout)")
    output.add_argument("--batch-size", type=int, default=8, help="requests generated together in bulk mode")
    parser.add_argument("--version", action="version", version=f"kgen {__version__}")
    return parser


@dataclass(frozen=True)
class BulkLine:
    index: int
    request: UpsampleRequest | None
    error: str | None = None


def request_from_args(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> UpsampleRequest:
    """A request from the command-line values, with ``overrides`` (a JSONL record) taking precedence."""
    values: dict[str, Any] = {
        "tags": args.tags,
        "nl": args.nl,
        "tag_length": args.tag_length,
        "nl_length": args.nl_length,
        "format": args.format,
        "aspect_ratio": args.aspect_ratio,
        "seed": args.seed,
        "ban_tags": args.ban_tags,
    }
    if overrides:
        unknown = sorted(set(overrides) - set(REQUEST_KEYS))
        if unknown:
            raise RequestError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(REQUEST_KEYS)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
    return UpsampleRequest(**values, no_formatting=args.no_formatting)


SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens")


def sampling_from_args(args: argparse.Namespace, spec=None) -> SamplingSettings | None:
    """The protocol's default sampling with the flags given on the command line; None when none was given."""
    overrides = {name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name) is not None}
    if not overrides:
        return None
    from .dtg import DTG_SAMPLING

    base = DTG_SAMPLING if spec is not None and spec.protocol == "dtg" else SamplingSettings()
    return replace(base, **overrides)


def read_bulk(args: argparse.Namespace, stream: TextIO) -> Iterator[BulkLine]:
    """Parse each JSONL line into a request; a bad line becomes an error entry, never an abort."""
    index = 0
    for raw in stream:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise RequestError("each line must be a JSON object")
            yield BulkLine(index, request_from_args(args, record))
        except (json.JSONDecodeError, RequestError, BanTagError, ValueError, TypeError) as exc:
            yield BulkLine(index, None, f"line {index + 1}: {exc}")
        index += 1


def _model_spec(name: str):
    """The registry entry for a model argument, or None for local paths (TIPO v1 conventions)."""
    from .registry import UnknownModelError, parse_model_choice

    if Path(name).expanduser().exists():
        return None
    try:
        return parse_model_choice(name)[0]
    except UnknownModelError:
        return None


def _model_ref(name: str, store):
    from .model_store import ModelRef
    from .registry import parse_model_choice

    path = Path(name).expanduser()
    if path.exists():
        return ModelRef(path=path)
    spec, gguf = parse_model_choice(name)
    if gguf is None and not spec.transformers_native:
        gguf = spec.gguf_files[0]  # only its GGUF files can be loaded
    return ModelRef(spec=spec, gguf_file=gguf)


def list_models(args: argparse.Namespace, out: TextIO) -> int:
    from .model_store import ModelStore
    from .registry import MODELS

    store = ModelStore(args.models_dir, offline=args.offline or None)
    local = {item.label: item for item in store.list_local()}
    out.write(f"models folder: {store.root}\n")
    for spec in MODELS:
        for label in spec.choices():
            mark = "on disk" if label in local else "download"
            out.write(f"  {label:<60} {spec.protocol:<5} {mark}\n")
    for label, item in local.items():
        if item.ref.spec is None:
            out.write(f"  {label:<60} local {item.path}\n")
    return 0


def dry_run(args: argparse.Namespace, out: TextIO) -> int:
    spec = _model_spec(args.model)
    sampling_from_args(args, spec)  # the same validation as a real run
    if args.input is None:
        request = request_from_args(args)
        text = first_model_input(request, model=spec)
        out.write(json.dumps({"model_input": text}, ensure_ascii=False) + "\n" if args.json else text + "\n")
        return 0
    with _open_input(args.input) as stream, _open_output(args.output, out) as sink:
        for line in read_bulk(args, stream):
            if line.request is None:
                record: dict[str, Any] = {"error": line.error}
            else:
                record = {"model_input": first_model_input(line.request, model=spec)}
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


def _open_input(path: Path):
    return sys.stdin if str(path) == "-" else path.open(encoding="utf-8")


class _Unclosed:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __enter__(self) -> TextIO:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()


def _open_output(path: Path | None, default: TextIO):
    if path is None or str(path) == "-":
        return _Unclosed(default)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8")


def load_backend(args: argparse.Namespace):
    """(backend, model spec) for the ``--model`` argument; raises ModelStoreError / ModelLoadError."""
    from .backends.loader import LoadOptions, build_backend
    from .model_store import ModelStore

    store = ModelStore(args.models_dir, offline=args.offline or None)
    ref = _model_ref(args.model, store)
    loaded = build_backend(ref, store, LoadOptions(device=args.device, dtype=args.dtype))
    return loaded.backend, ref.spec


def generate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    sampling = sampling_from_args(args, _model_spec(args.model))  # validate before loading a model
    if args.input is None:
        requests = [request_from_args(args)]
    backend, spec = load_backend(args)
    if args.input is None:
        if args.variants > 1:
            sampler = variant_sampler(backend, args.tgts_policy)
            results = upsample_variants(requests[0], backend, args.variants, spec, sampling, sampler=sampler)
        else:
            results = upsample_many(requests, backend, model=spec, sampling=sampling)
        if args.json:
            out.writelines(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results)
        else:
            out.write(VARIANT_SEPARATOR.join(r.prompt for r in results) + "\n")
        return 0
    return _generate_bulk(args, backend, spec, sampling, out)


VARIANT_SEPARATOR = "\n---\n"


def _run_chunk(args, backend, spec, sampling, requests: list[UpsampleRequest]) -> list[object]:
    """Results (or exceptions) for a chunk of bulk requests; with --variants each is a list of results."""
    if args.variants <= 1:
        return upsample_many(requests, backend, model=spec, sampling=sampling, return_exceptions=True)
    sampler = variant_sampler(backend, args.tgts_policy)
    outcomes: list[object] = []
    for request in requests:
        try:
            outcomes.append(
                upsample_variants(request, backend, args.variants, spec, sampling, sampler=sampler)
            )
        except Exception as exc:  # one bad request must not end the bulk run
            outcomes.append(exc)
    return outcomes


def _record(outcome) -> dict[str, Any]:
    if isinstance(outcome, UpsampleResult):
        return outcome.to_dict()
    return {"variants": [r.to_dict() for r in outcome]}


def _generate_bulk(args, backend, spec, sampling: SamplingSettings, out: TextIO) -> int:
    from tqdm import tqdm

    with _open_input(args.input) as stream:
        lines = list(read_bulk(args, stream))
    failures = 0
    with (
        _open_output(args.output, out) as sink,
        tqdm(total=len(lines), unit="prompt", file=sys.stderr) as bar,
    ):
        for start in range(0, len(lines), max(1, args.batch_size)):
            chunk = lines[start : start + max(1, args.batch_size)]
            runnable = [line for line in chunk if line.request is not None]
            results = _run_chunk(args, backend, spec, sampling, [line.request for line in runnable])
            by_index = dict(zip((line.index for line in runnable), results, strict=True))
            for line in chunk:
                outcome = by_index.get(line.index)
                if line.request is None or isinstance(outcome, Exception):
                    failures += 1
                    record: dict[str, Any] = {"error": line.error or f"line {line.index + 1}: {outcome}"}
                else:
                    record = _record(outcome)
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(len(chunk))
    return 0 if failures == 0 else 1


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        return list_models(args, out)
    if args.input is None and not args.tags.strip() and not args.nl.strip() and not args.dry_run:
        err.write("note: no tags and no caption given; the model will invent a prompt from scratch\n")
    try:
        if args.dry_run:
            return dry_run(args, out)
        return generate(args, out, err)
    except (RequestError, BanTagError, ValueError) as exc:
        err.write(f"error: {exc}\n")
        return EXIT_BAD_INPUT
    except Exception as exc:
        return _report_model_failure(exc, args, err)


def _report_model_failure(exc: Exception, args: argparse.Namespace, err: TextIO) -> int:
    from .backends.llamacpp import LlamaCppUnavailableError
    from .backends.loader import ModelLoadError
    from .model_store import ModelStoreError

    if not isinstance(exc, (ModelStoreError, ModelLoadError, LlamaCppUnavailableError, OSError)):
        raise exc
    err.write(
        f"error: could not load model {args.model!r}: {exc}\n"
        "hint: download needs network access to the Hugging Face hub; offline, place the model folder or "
        "a .gguf file in the models folder (see --list-models), pass a local path with --model, "
        "or use --dry-run to see the model input without a model.\n"
    )
    return EXIT_NO_MODEL
