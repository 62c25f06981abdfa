"""Bulk mode on a local Ray (2 CPUs, 2 actors): the same output as the single-process run, line for line,
and a worker that dies mid-job is restarted by Ray with nothing lost."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from optional import require
from ray_workers import CRASH_FLAG, DiesOnceWorker, ScriptedWorker, seeded_tags

from kgen import cli
from kgen.bulk.engine import BatchedExecutor, EngineSpec, RunSettings
from kgen.bulk.job import run_to_file
from kgen.bulk.ray_runner import RayExecutor, RayOptions
from kgen.engine.replay import ReplayBackend

TESTS_DIR = Path(__file__).resolve().parent
LINES = 200
BATCH = 8

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = require("ray", 'pip install -e ".[ray]"')
    require("ray.data", 'pip install -e ".[ray]"')
    flag = tmp_path_factory.mktemp("crash") / "crashed"
    previous = {name: os.environ.get(name) for name in ("PYTHONPATH", CRASH_FLAG)}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), previous["PYTHONPATH"]]))
    os.environ[CRASH_FLAG] = str(flag)  # Ray's workers inherit the environment of the process that starts Ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield flag
    finally:
        ray.shutdown()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def bulk_lines(count: int):
    requests = [
        {"tags": f"1girl, t{i}", "tag_length": "very_short"} | ({"seed": i} if i % 3 else {})
        for i in range(count)
    ]
    requests[41] = {"tags": "1girl", "ban_tags": "(bad"}
    stream = io.StringIO("".join(json.dumps(r) + "\n" for r in requests))
    args = cli.build_parser().parse_args(["--seed", "77"])
    return list(cli.read_bulk(args, stream))


def single_process(tmp_path: Path, lines) -> bytes:
    output = tmp_path / "single.jsonl"
    run_to_file(
        lines,
        BatchedExecutor(ReplayBackend(seeded_tags), RunSettings(), BATCH),
        output,
        "job",
        show_progress=False,
    )
    return output.read_bytes()


def ray_run(tmp_path: Path, lines, worker, name: str) -> tuple[bytes, object]:
    output = tmp_path / name
    executor = RayExecutor(EngineSpec("scripted"), RunSettings(), BATCH, RayOptions(actors=2), worker=worker)
    summary = run_to_file(lines, executor, output, "job", show_progress=False)
    return output.read_bytes(), summary


def test_two_actors_write_what_one_process_writes(ray_cluster, tmp_path):
    lines = bulk_lines(LINES)
    expected = single_process(tmp_path, lines)
    written, summary = ray_run(tmp_path, lines, ScriptedWorker, "ray.jsonl")
    assert written == expected
    assert (summary.lines, summary.failed) == (LINES, 1)
    records = [json.loads(x) for x in written.decode().splitlines()]
    assert records[5]["seed"] == 5 and records[6]["seed"] == 77  # the line's own seed, else --seed


def test_a_worker_that_dies_mid_job_is_retried_and_nothing_is_lost(ray_cluster, tmp_path):
    lines = bulk_lines(LINES)
    expected = single_process(tmp_path, lines)
    written, summary = ray_run(tmp_path, lines, DiesOnceWorker, "crash.jsonl")
    assert ray_cluster.exists(), "a worker died during the job"
    assert written == expected
    assert summary.lines == LINES


def test_the_command_line_on_ray_with_the_format_model_equals_the_single_process_run(ray_cluster, tmp_path):
    from format_model import format_model_dir, format_model_or_skip

    format_model_or_skip()
    requests = tmp_path / "in.jsonl"
    lines = [{"tags": "1girl, solo", "seed": i} for i in range(8)]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    model = str(format_model_dir())
    job = ("--model", model, "--device", "cpu", "--input", str(requests), "--batch-size", "4",
           "--tag-length", "very short")  # fmt: skip
    single, on_ray = tmp_path / "single.jsonl", tmp_path / "ray.jsonl"
    out, err = io.StringIO(), io.StringIO()
    assert cli.main([*job, "--output", str(single)], out=out, err=err) == 0, err.getvalue()
    assert cli.main([*job, "--output", str(on_ray), "--ray", "--ray-actors", "2"], out=out, err=err) == 0
    assert on_ray.read_bytes() == single.read_bytes()
    assert len({json.loads(x)["prompt"] for x in single.read_text().splitlines()}) > 4
