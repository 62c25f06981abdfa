"""Bulk throughput on the tiny format model: lines/s of one job run four ways, in one run.

    .venv/bin/python tests/benchmarks/bulk.py              # 256 lines
    .venv/bin/python tests/benchmarks/bulk.py --lines 64   # quicker

Configurations, each on the same requests (``--lines`` of them, tag length "very short", per-line seeds)
through the real job runner into a JSON-lines file:

* ``local-batched``: the single-process run, transformers, ``--batch-size 8`` (the baseline line);
* ``served-c1`` / ``served-c8``: llama-cpp-python's ``llama_cpp.server`` on a GGUF of the same model on
  127.0.0.1, ``--concurrency`` 1 and 8 (needs ``llama-cpp-python[server]``);
* ``ray-2-actors``: a local Ray (2 CPUs), 2 actors each holding the transformers model (needs ``.[ray]``).

Times are job wall time: model loading is included for the single process and the actors (Ray's own start
is not), the server's is not. The table gives lines/s and the ratio to ``local-batched``; the last line
repeats the ratios as ``ratio_<config>=<x>`` (``nan`` for a configuration that could not run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent
for path in (str(TESTS_DIR), str(REPO_ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

TAGS = ["1girl, solo", "1boy, solo, hat", "2girls, smile", "no humans, scenery", "1girl, long hair, school"]
BATCH = 8
BASELINE = "local-batched"


def bulk_lines(count: int):
    import io

    from kgen import cli

    records = [
        {"tags": TAGS[i % len(TAGS)], "seed": 1000 + i, "tag_length": "very_short"} for i in range(count)
    ]
    stream = io.StringIO("".join(json.dumps(record) + "\n" for record in records))
    return list(cli.read_bulk(cli.build_parser().parse_args([]), stream))


def timed_job(lines, make_executor: Callable[[], object], output: Path) -> float:
    from kgen.bulk.job import run_to_file

    started = time.perf_counter()
    run_to_file(lines, make_executor(), output, "benchmark", show_progress=False)
    return time.perf_counter() - started


def local_batched(model_dir: Path, lines, work: Path) -> float:
    from kgen.bulk.engine import BatchedExecutor, EngineSpec, RunSettings

    engine = EngineSpec(str(model_dir), device="cpu")
    return timed_job(
        lines, lambda: BatchedExecutor(engine.build(), RunSettings(), BATCH), work / "local.jsonl"
    )


def served(gguf: Path, lines, work: Path, concurrency: int) -> float:
    from llama_server import CONTEXT, LlamaServer

    from kgen.bulk.engine import ConcurrentExecutor, EngineSpec, RunSettings
    from kgen.engine.served import ServerOptions

    server = LlamaServer(gguf, log=work / "server.log").start()
    try:
        engine = EngineSpec(str(gguf), server=ServerOptions(server.url, context_length=CONTEXT))
        return timed_job(
            lines,
            lambda: ConcurrentExecutor(engine.build(), RunSettings(), concurrency, BATCH),
            work / f"served-{concurrency}.jsonl",
        )
    finally:
        server.stop()


def ray_actors(model_dir: Path, lines, work: Path, actors: int) -> float:
    import ray

    from kgen.bulk.engine import EngineSpec, RunSettings
    from kgen.bulk.ray_runner import RayExecutor, RayOptions

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        engine = EngineSpec(str(model_dir), device="cpu")
        options = RayOptions(actors=actors)
        return timed_job(
            lines, lambda: RayExecutor(engine, RunSettings(), BATCH, options), work / f"ray-{actors}.jsonl"
        )
    finally:
        ray.shutdown()


def measure(name: str, run: Callable[[], float], results: dict[str, float | None]) -> None:
    try:
        results[name] = run()
    except ImportError as exc:
        print(f"{name}: skipped ({exc})", file=sys.stderr)
        results[name] = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=256)
    args = parser.parse_args(argv)

    from format_model import format_model_dir, load_format_model
    from gguf_convert import convert_llama_to_gguf

    model_dir = format_model_dir()
    lines = bulk_lines(args.lines)
    results: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="kgen-bulk-bench-") as folder:
        work = Path(folder)
        measure(BASELINE, lambda: local_batched(model_dir, lines, work), results)
        try:
            import llama_cpp.server.app  # noqa: F401

            model, tokenizer = load_format_model()
            gguf = convert_llama_to_gguf(model, tokenizer, work / "format.gguf", "f32")
            for concurrency in (1, 8):
                measure(f"served-c{concurrency}", lambda c=concurrency: served(gguf, lines, work, c), results)
        except ImportError as exc:
            print(f"served: skipped ({exc})", file=sys.stderr)
            results.update({"served-c1": None, "served-c8": None})
        measure("ray-2-actors", lambda: ray_actors(model_dir, lines, work, 2), results)
    report(results, args.lines)


def report(results: dict[str, float | None], count: int) -> None:
    base = results.get(BASELINE)
    print(f"{'configuration':<16} {'lines':>6} {'seconds':>9} {'lines/s':>9} {'vs ' + BASELINE:>18}")
    ratios = {}
    for name, seconds in results.items():
        rate = count / seconds if seconds else math.nan
        ratio = (base / seconds) if seconds and base else math.nan
        ratios[name] = ratio
        shown = f"{seconds:9.2f}" if seconds else f"{'-':>9}"
        print(f"{name:<16} {count:>6} {shown} {rate:9.2f} {ratio:17.2f}x")
    print(" ".join(f"ratio_{name}={ratio:.2f}" for name, ratio in ratios.items() if name != BASELINE))


if __name__ == "__main__":
    main()
