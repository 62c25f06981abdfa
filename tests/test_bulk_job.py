"""Bulk jobs: ordered output that survives SIGKILL and Ctrl-C, --resume, error lines, Parquet, summary."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optional import require

from kgen import cli
from kgen.bulk.journal import OutputJournal, Progress, ResumeError, progress_path_for
from kgen.engine.replay import ReplayBackend

DRIVER = Path(__file__).resolve().parent / "bulk_driver.py"


def seeded_tags(prompt: str, seed: int) -> str:
    return "".join(f", tag{seed}x{i}" for i in range(12)) + "</s>"


def write_requests(path: Path, count: int, bad: tuple[int, ...] = ()) -> Path:
    with path.open("w", encoding="utf-8") as stream:
        for i in range(count):
            if i in bad:
                stream.write("{not json\n")
            else:
                request = {"tags": f"1girl, t{i}", "seed": 1000 + i, "tag_length": "very_short"}
                stream.write(json.dumps(request) + "\n")
    return path


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(cli, "load_backend", lambda args: (ReplayBackend(seeded_tags), None))


# ---- the journal


def test_resume_drops_a_commit_cut_short_by_a_kill(tmp_path):
    output = tmp_path / "out.jsonl"
    journal = OutputJournal(output, "job-1")
    journal.open(resume=False)
    journal.commit(['{"a": 1}', '{"a": 2}'], failed=0, tokens=5)
    journal.close()
    with output.open("ab") as stream:  # the next commit's bytes reached the disk, its progress did not
        stream.write(b'{"a": 3}\n{"a"')
    resumed = OutputJournal(output, "job-1")
    progress = resumed.open(resume=True)
    assert (progress.lines, progress.tokens) == (2, 5)
    resumed.commit(['{"a": 3}'])
    assert resumed.finish().complete
    assert output.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 3}\n'


def test_resume_refuses_another_jobs_progress_and_a_shortened_output(tmp_path):
    output = tmp_path / "out.jsonl"
    journal = OutputJournal(output, "job-1")
    journal.open(resume=False)
    journal.commit(['{"a": 1}'])
    journal.close()
    with pytest.raises(ResumeError, match="another job"):
        OutputJournal(output, "job-2").open(resume=True)
    output.write_text("")
    with pytest.raises(ResumeError, match="shorter"):
        OutputJournal(output, "job-1").open(resume=True)


def test_without_resume_a_job_starts_again(tmp_path):
    output = tmp_path / "out.jsonl"
    for _ in range(2):
        journal = OutputJournal(output, "job-1")
        journal.open(resume=False)
        journal.commit(['{"a": 1}'])
        journal.finish()
    assert output.read_text() == '{"a": 1}\n'
    assert Progress.read(progress_path_for(output)).lines == 1


# ---- the command line


def test_bad_lines_get_error_records_in_place_and_the_job_goes_on(tmp_path, scripted):
    requests = write_requests(tmp_path / "in.jsonl", 10, bad=(3, 7))
    output = tmp_path / "out.jsonl"
    code, _, err = run_cli("--input", str(requests), "--output", str(output), "--batch-size", "4")
    assert code == 1
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 10
    assert [i for i, r in enumerate(records) if "error" in r] == [3, 7]
    assert records[3]["error"].startswith("line 4:")
    good = [i for i in range(10) if i not in (3, 7)]
    assert [r["seed"] for r in records if "error" not in r] == [1000 + i for i in good]
    assert "seconds" not in records[0]  # wall time would make reruns differ
    assert "10 lines done, 2 failed" in err and "lines/s" in err
    progress = Progress.read(progress_path_for(output))
    assert progress.complete and progress.lines == 10 and progress.bytes == output.stat().st_size


def test_ctrl_c_mid_job_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    requests = write_requests(tmp_path / "in.jsonl", 40)
    reference = tmp_path / "reference.jsonl"
    monkeypatch.setattr(cli, "load_backend", lambda args: (ReplayBackend(seeded_tags), None))
    assert run_cli("--input", str(requests), "--output", str(reference), "--seed", "3")[0] == 0

    calls = []

    def interrupted(prompt: str, seed: int) -> str:
        calls.append(seed)
        if len(calls) == 200:  # each request makes 11 generations here
            raise KeyboardInterrupt
        return seeded_tags(prompt, seed)

    output = tmp_path / "out.jsonl"
    monkeypatch.setattr(cli, "load_backend", lambda args: (ReplayBackend(interrupted), None))
    with pytest.raises(KeyboardInterrupt):
        run_cli("--input", str(requests), "--output", str(output), "--seed", "3")
    done = Progress.read(progress_path_for(output)).lines
    assert 0 < done < 40
    monkeypatch.setattr(cli, "load_backend", lambda args: (ReplayBackend(seeded_tags), None))
    code, _, err = run_cli("--input", str(requests), "--output", str(output), "--seed", "3", "--resume")
    assert code == 0 and f"resumed at line {done + 1}" in err
    assert output.read_bytes() == reference.read_bytes()


def test_resume_with_other_settings_is_refused(tmp_path, scripted):
    requests = write_requests(tmp_path / "in.jsonl", 4)
    output = tmp_path / "out.jsonl"
    assert run_cli("--input", str(requests), "--output", str(output))[0] == 0
    code, _, err = run_cli("--input", str(requests), "--output", str(output), "--resume", "--top-k", "5")
    assert code == cli.EXIT_BAD_INPUT and "another job" in err


def _driver(*argv: str, delay: float = 0.003) -> subprocess.Popen:
    """The CLI on a scripted engine, ``delay`` seconds a generation (the output does not depend on it)."""
    env = {**os.environ, "KGEN_TEST_DELAY": str(delay), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(DRIVER), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait_for_a_commit_after(
    output: Path, lines: int, process: subprocess.Popen, timeout_s: float = 120
) -> None:
    """Until this run has committed past ``lines`` (however slowly the machine starts Python today)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        progress = Progress.read(progress_path_for(output)) if progress_path_for(output).exists() else None
        if progress is not None and progress.lines > lines:
            return
        time.sleep(0.01)
    raise AssertionError(f"the job committed nothing past line {lines} (exit code {process.poll()})")


@pytest.mark.slow
def test_sigkill_at_random_points_twenty_times_then_resume_equals_an_uninterrupted_run(tmp_path):
    requests = write_requests(tmp_path / "in.jsonl", 400, bad=(17, 250))
    job = ("--input", str(requests), "--batch-size", "3", "--seed", "9")
    reference = tmp_path / "reference.jsonl"
    assert _driver(*job, "--output", str(reference), delay=0).wait(timeout=120) == 1  # two bad lines

    output = tmp_path / "out.jsonl"
    rng = random.Random(20261201)
    committed = [0]
    for _ in range(20):
        process = _driver(*job, "--output", str(output), "--resume")
        _wait_for_a_commit_after(output, committed[-1], process)
        time.sleep(rng.uniform(0.0, 0.3))  # then a random point of the job, mid-write or between writes
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        committed.append(Progress.read(progress_path_for(output)).lines)
    assert committed == sorted(set(committed)), f"each run went on from the last commit: {committed}"
    assert committed[-1] < 400, "the job must still be unfinished after the kills"
    assert _driver(*job, "--output", str(output), "--resume", delay=0).wait(timeout=120) == 1
    assert output.read_bytes() == reference.read_bytes()


def test_parquet_input_column_and_parquet_output(tmp_path, scripted):
    pyarrow = require("pyarrow", 'pip install -e ".[parquet]"')
    parquet = require("pyarrow.parquet", 'pip install -e ".[parquet]"')

    captions = ["a girl in a park.", None, "a cat on a roof."]
    source = tmp_path / "captions.parquet"
    parquet.write_table(pyarrow.table({"id": [1, 2, 3], "caption": captions}), str(source))
    output = tmp_path / "out.parquet"
    code, _, err = run_cli(
        "--input",
        str(source),
        "--column",
        "caption",
        "--output",
        str(output),
        "--seed",
        "4",
        "--format",
        "NL only",
        "--nl-length",
        "very short",
    )
    assert code == 1, err  # the row without a caption
    table = parquet.read_table(str(output)).to_pylist()
    assert len(table) == 3
    assert table[1]["error"].startswith("row 2:") and table[1]["prompt"] is None
    for row, caption in zip((table[0], table[2]), (captions[0], captions[2]), strict=True):
        assert row["error"] is None and row["seed"] == 4
        assert json.loads(row["result"])["extended"].startswith(caption)
    assert not (tmp_path / "out.parquet.partial.jsonl").exists()
    assert run_cli("--input", str(source), "--column", "nope", "--output", str(output))[0] == 2


def test_missing_ray_is_one_clear_message(tmp_path, monkeypatch, scripted):
    monkeypatch.setitem(sys.modules, "ray", None)
    requests = write_requests(tmp_path / "in.jsonl", 2)
    code, _, err = run_cli("--input", str(requests), "--output", str(tmp_path / "o.jsonl"), "--ray")
    assert code == cli.EXIT_BAD_INPUT
    assert err.count("error:") == 1 and 'pip install -e ".[ray]"' in err


def test_a_backend_failing_a_whole_batch_fails_only_the_line_that_caused_it(tmp_path, monkeypatch):
    def refuses_t5(prompt: str, seed: int) -> str:
        if "t5" in prompt:
            raise RuntimeError("the server refused this prompt")
        return seeded_tags(prompt, seed)

    requests = write_requests(tmp_path / "in.jsonl", 8)
    monkeypatch.setattr(cli, "load_backend", lambda args: (ReplayBackend(refuses_t5), None))
    output = tmp_path / "out.jsonl"
    code, _, _ = run_cli("--input", str(requests), "--output", str(output), "--batch-size", "4")
    assert code == 1
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [i for i, r in enumerate(records) if "error" in r] == [5]
    assert records[5]["error"] == "line 6: the server refused this prompt"
    monkeypatch.setattr(cli, "load_backend", lambda args: (ReplayBackend(seeded_tags), None))
    clean = tmp_path / "clean.jsonl"
    run_cli("--input", str(requests), "--output", str(clean), "--batch-size", "4")
    assert [r for i, r in enumerate(records) if i != 5] == [
        json.loads(line) for i, line in enumerate(clean.read_text().splitlines()) if i != 5
    ]
