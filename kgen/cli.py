"""Command line: ``python -m kgen "1girl, solo" --nl "a girl in a park" ...``.

One prompt from the arguments, or many with ``--input requests.jsonl --output results.jsonl`` (or Parquet;
resumable with ``--resume``; on a served engine with ``--server URL``, on a Ray cluster with ``--ray``).
``--dry-run`` prints the first model input without loading any model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .bulk.engine import (
    BatchedExecutor,
    BulkLine,
    ConcurrentExecutor,
    EngineSpec,
    RunSettings,
    model_ref_for,
    model_spec_for,
)
from .bulk.job import job_key, run_to_file, run_to_stream
from .bulk.journal import ResumeError
from .bulk.sources import MissingExtraError, SourceRecord, read_jsonl_records, read_records
from .engine.served import DEFAULT_CONTEXT_LENGTH, ServerError, ServerOptions
from .generation import SamplingSettings
from .pipeline import (
    RequestError,
    UpsampleRequest,
    first_model_input,
    upsample_many,
    upsample_variants,
)
from .protocol.postprocess import BanTagError
from .settings import SettingsError, TipoSettings
from .variants import variant_sampler

EXIT_BAD_INPUT = 2
EXIT_NO_MODEL = 3
EXIT_SERVER = 4
REQUEST_KEYS = ("tags", "nl", "tag_length", "nl_length", "format", "aspect_ratio", "seed", "ban_tags")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kgen",
        description="Upsample Danbooru tags and/or a caption into a detailed prompt with TIPO or DanTagGen.",
    )
    parser.add_argument(
        "tags", nargs="?", default="", help='comma-separated tags, e.g. "1girl, solo, long hair"'
    )
    parser.add_argument("--nl", default="", help="natural-language caption")
    parser.add_argument("--aspect-ratio", type=float, default=1.0, help="image width / height; default 1.0")
    model = parser.add_argument_group("model")
    sampling = parser.add_argument_group(
        "sampling",
        "unset values take the model's protocol defaults (TIPO: temperature 0.5, top-p 0.95, "
        "top-k 80, min-p 0.1, repetition penalty 1.17, 512 new tokens; DanTagGen: its own)",
    )
    add_settings_options({"": parser, "model": model, "sampling": sampling})
    model.add_argument(
        "--models-dir",
        default=None,
        help="where models are downloaded and looked for (default: $KGEN_MODELS_DIR or ~/.cache/kgen/models)",
    )
    model.add_argument("--offline", action="store_true", help="never download; use what is on disk")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N; default auto")
    model.add_argument(
        "--dtype",
        default=None,
        help="transformers backend precision: auto (default), float32, bfloat16, float16, or "
        "int8 (CPU only: quantized matrices, faster decoding, slightly different output)",
    )
    model.add_argument("--list-models", action="store_true", help="list registry and local models, then exit")

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
    _add_bulk_arguments(parser)
    parser.add_argument("--version", action="version", version=f"kgen {__version__}")
    return parser


def _add_bulk_arguments(parser: argparse.ArgumentParser) -> None:
    bulk = parser.add_argument_group("bulk jobs")
    bulk.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed --input/--output job where its last committed line ended",
    )
    bulk.add_argument(
        "--column",
        default=None,
        help="Parquet input: the column holding each request's text (default: columns named "
        "like the request keys)",
    )
    bulk.add_argument(
        "--column-field",
        choices=("nl", "tags"),
        default="nl",
        help="what --column holds: nl (a caption, default) or tags",
    )
    bulk.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run bulk mode on Ray: no ADDRESS starts a local Ray, 'auto' or an address joins a cluster",
    )
    bulk.add_argument(
        "--ray-actors", type=int, default=2, help="Ray actors, each holding one engine; default 2"
    )
    bulk.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs per Ray actor (local models); default 0"
    )

    served = parser.add_argument_group("served engine (OpenAI-compatible: vLLM, SGLang, llama.cpp, TGI)")
    served.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="generate on a server's /v1/completions, e.g. http://127.0.0.1:8000/v1; "
        "--model then only names the protocol and context",
    )
    served.add_argument(
        "--server-model",
        default=None,
        help="the served model's name (default: the first one the server lists)",
    )
    served.add_argument("--concurrency", type=int, default=8, help="requests in flight at once; default 8")
    served.add_argument("--server-timeout", type=float, default=120.0, help="seconds per HTTP request")
    served.add_argument(
        "--server-retries",
        type=int,
        default=5,
        help="retries on connection errors, 429 and 5xx (exponential backoff); default 5",
    )
    served.add_argument(
        "--server-context",
        type=int,
        default=None,
        help="the server's context length (default: what it reports, else the model's)",
    )
    served.add_argument(
        "--server-tokenizer",
        default=None,
        help="tokenizer folder or tokenizer.json to count tokens locally (default: the "
        "--model folder's, else the server's tokenize endpoint, else an estimate)",
    )


def add_settings_options(groups: dict[str, Any]) -> None:
    """One option per setting that has command-line metadata (``OptionInfo.cli`` in kgen.settings), in the
    argparse group it names. Unset sampling options are None: the model's protocol then chooses."""
    for name, info, default in TipoSettings.options():
        flag = info.cli
        if flag is None:
            continue
        group = groups[flag.group]
        if info.kind is bool:
            action = "store_false" if default else "store_true"
            group.add_argument(flag.flag, dest=name, action=action, help=flag.help or None)
            continue
        parse = flag.parse or (_choice_parser(name) if info.choices else info.kind)
        unset = None if info.sampling else default
        group.add_argument(flag.flag, dest=name, type=parse, default=unset, help=flag.help or None)


def _choice_parser(name: str):
    def parse(text: str) -> Any:
        try:
            return getattr(TipoSettings.from_mapping({name: text}), name)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def settings_from_args(args: argparse.Namespace) -> TipoSettings:
    """The settings the command-line options give; raises SettingsError. Sampling options are left out: they
    go straight to the sampling (:func:`sampling_from_args`), in the ranges the backends accept."""
    values: dict[str, Any] = {}
    for name, info, _ in TipoSettings.options():
        if info.cli is None or info.sampling:
            continue
        value = getattr(args, name)
        values.update(info.cli.to_settings(value) if info.cli.to_settings else {name: value})
    return TipoSettings.from_mapping(values)


def request_from_args(
    args: argparse.Namespace, overrides: dict[str, Any] | None = None, settings: TipoSettings | None = None
) -> UpsampleRequest:
    """A request from the command-line values, with ``overrides`` (a JSONL record) taking precedence."""
    values: dict[str, Any] = {"tags": args.tags, "nl": args.nl, "aspect_ratio": args.aspect_ratio}
    if overrides:
        unknown = sorted(set(overrides) - set(REQUEST_KEYS))
        if unknown:
            raise RequestError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(REQUEST_KEYS)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
    return (settings or settings_from_args(args)).to_request(**values)


# Sampling knobs the WebUI does not offer, so they are no TipoSettings field: command-line options only.
CLI_SAMPLING_FLAGS = ("repetition_penalty", "max_new_tokens")


def sampling_from_args(args: argparse.Namespace, spec=None) -> SamplingSettings | None:
    """The protocol's default sampling with the options given on the command line; None when none was."""
    given = {name: getattr(args, name) for name in TipoSettings.names(lambda info: bool(info.sampling))}
    overrides = TipoSettings.sampling_values({k: v for k, v in given.items() if v is not None})
    overrides.update({k: getattr(args, k) for k in CLI_SAMPLING_FLAGS if getattr(args, k) is not None})
    if not overrides:
        return None
    from .protocol.dtg import DTG_SAMPLING

    base = DTG_SAMPLING if spec is not None and spec.protocol == "dtg" else SamplingSettings()
    return replace(base, **overrides)


def read_bulk(args: argparse.Namespace, stream: TextIO) -> Iterator[BulkLine]:
    """Parse each JSONL line into a request; a bad line becomes an error entry, never an abort."""
    yield from _bulk_lines(args, settings_from_args(args), read_jsonl_records(iter(stream)))


def bulk_input(args: argparse.Namespace) -> Iterator[BulkLine]:
    """The requests of ``--input`` (JSON lines, ``-`` for standard input, or Parquet)."""
    records = read_records(args.input, REQUEST_KEYS, args.column, args.column_field)
    yield from _bulk_lines(args, settings_from_args(args), records)


def _bulk_lines(
    args: argparse.Namespace, settings: TipoSettings, records: Iterator[SourceRecord]
) -> Iterator[BulkLine]:
    for record in records:
        if record.fields is None:
            yield BulkLine(record.index, None, record.error)
            continue
        try:
            yield BulkLine(record.index, request_from_args(args, record.fields, settings))
        except (RequestError, BanTagError, ValueError, TypeError) as exc:
            yield BulkLine(record.index, None, f"line {record.index + 1}: {exc}")


_model_spec = model_spec_for


def list_models(args: argparse.Namespace, out: TextIO) -> int:
    from .models.registry import MODELS
    from .models.store import ModelStore

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
        request = request_from_args(args, settings=settings_from_args(args))
        text = first_model_input(request, model=spec)
        out.write(json.dumps({"model_input": text}, ensure_ascii=False) + "\n" if args.json else text + "\n")
        return 0
    with _open_output(args.output, out) as sink:
        for line in bulk_input(args):
            if line.request is None:
                record: dict[str, Any] = {"error": line.error}
            else:
                record = {"model_input": first_model_input(line.request, model=spec)}
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


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
    engine = engine_from_args(args)
    spec = _model_spec(args.model) if engine.server is not None else model_ref_for(args.model).spec
    return engine.build(), spec


def engine_from_args(args: argparse.Namespace) -> EngineSpec:
    server = None
    if args.server:
        tokenizer = args.server_tokenizer
        if tokenizer is None and (Path(args.model).expanduser() / "tokenizer.json").is_file():
            tokenizer = str(Path(args.model).expanduser())
        spec = _model_spec(args.model)
        server = ServerOptions(
            base_url=args.server,
            model=args.server_model,
            timeout_s=args.server_timeout,
            retries=args.server_retries,
            tokenizer=tokenizer,
            context_length=args.server_context,
            default_context_length=spec.context_length if spec is not None else DEFAULT_CONTEXT_LENGTH,
        )
    return EngineSpec(args.model, args.models_dir, bool(args.offline), args.device, args.dtype, server)


def generate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    sampling = sampling_from_args(args, _model_spec(args.model))  # validate before loading a model
    if args.input is not None:
        return _generate_bulk(args, sampling, out, err)
    requests = [request_from_args(args)]
    backend, spec = load_backend(args)
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


VARIANT_SEPARATOR = "\n---\n"
# Flags that change how fast or where a job runs, never what it writes: a resume may change them.
NOT_IN_JOB_KEY = frozenset(
    {
        "resume",
        "input",
        "output",
        "concurrency",
        "ray",
        "ray_actors",
        "num_gpus",
        "server",
        "server_timeout",
        "server_retries",
        "json",
        "dry_run",
        "list_models",
        "models_dir",
        "offline",
        "device",
    }
)


def _bulk_executor(args: argparse.Namespace, sampling: SamplingSettings | None):
    if args.ray is not None:
        from .bulk.ray_runner import RayExecutor, RayOptions

        options = RayOptions(address=args.ray, actors=args.ray_actors, gpus_per_actor=args.num_gpus)
        run = RunSettings(_model_spec(args.model), sampling, args.variants, args.tgts_policy)
        return RayExecutor(engine_from_args(args), run, args.batch_size, options)
    backend, loaded_spec = load_backend(args)
    run = RunSettings(loaded_spec, sampling, args.variants, args.tgts_policy)
    if args.server:
        return ConcurrentExecutor(backend, run, args.concurrency, args.batch_size)
    return BatchedExecutor(backend, run, args.batch_size)


def _generate_bulk(args, sampling: SamplingSettings | None, out: TextIO, err: TextIO) -> int:
    if args.resume and (args.output is None or str(args.output) == "-"):
        raise ValueError("--resume needs --output FILE")
    lines = list(bulk_input(args))
    executor = _bulk_executor(args, sampling)
    if args.output is None or str(args.output) == "-":
        summary = run_to_stream(lines, executor, out)
    else:
        settings = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IN_JOB_KEY}
        key = job_key(args.input, settings)
        summary = run_to_file(lines, executor, args.output, key, resume=args.resume)
    err.write(summary.describe() + "\n")
    return 0 if summary.failed == 0 else 1


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
    except (RequestError, BanTagError, ResumeError, MissingExtraError, ValueError) as exc:
        err.write(f"error: {exc}\n")
        return EXIT_BAD_INPUT
    except ServerError as exc:
        resumable = " (--resume continues the job)" if args.input is not None and args.output else ""
        err.write(f"error: {exc}{resumable}\n")
        return EXIT_SERVER
    except Exception as exc:
        return _report_model_failure(exc, args, err)


def _report_model_failure(exc: Exception, args: argparse.Namespace, err: TextIO) -> int:
    from .engine.llamacpp import LlamaCppUnavailableError
    from .models.errors import ModelStoreError
    from .models.loader import ModelLoadError

    if not isinstance(exc, (ModelStoreError, ModelLoadError, LlamaCppUnavailableError, OSError)):
        raise exc
    err.write(
        f"error: could not load model {args.model!r}: {exc}\n"
        "hint: download needs network access to the Hugging Face hub; offline, place the model folder or "
        "a .gguf file in the models folder (see --list-models), pass a local path with --model, "
        "or use --dry-run to see the model input without a model.\n"
    )
    return EXIT_NO_MODEL
