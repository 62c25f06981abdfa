"""A bulk job: input lines through an executor into the ordered, resumable output, with a progress bar and
a final summary.

With an output file, results go through :class:`~kgen.bulk.journal.OutputJournal` (a Parquet output is
journaled as JSON lines beside it and written when the job completes); ``resume`` continues a killed job.
Without one, lines stream to standard output and cannot be resumed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from .engine import BulkLine, ChunkResult
from .journal import OutputJournal, Progress, progress_path_for
from .sources import is_parquet, write_parquet_from_jsonl


class Executor(Protocol):
    def results(self, lines: Sequence[BulkLine]) -> Iterator[ChunkResult]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class JobSummary:
    lines: int  # output lines of the whole job
    failed: int
    tokens: int
    seconds: float  # generation wall time over all runs of the job
    resumed_at: int = 0  # lines already done when this run started

    def describe(self) -> str:
        rate = self.lines / self.seconds if self.seconds > 0 else 0.0
        resumed = ""
        if self.resumed_at:
            resumed = (
                ", already complete"
                if self.resumed_at >= self.lines
                else f", resumed at line {self.resumed_at + 1}"
            )
        return (
            f"bulk: {self.lines} lines done, {self.failed} failed, {self.tokens} tokens, "
            f"{self.seconds:.1f} s ({rate:.2f} lines/s){resumed}"
        )


def job_key(input_path: Path, settings: dict[str, object]) -> str:
    """Identifies a job: the input file (path, size, modification time) and the settings that shape output."""
    stat = input_path.stat() if input_path.is_file() else None
    identity = {
        "input": str(input_path.resolve()),
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:32]


def journal_path_for(output: Path) -> Path:
    """Where the committed lines go: the output itself, or for Parquet a JSON-lines journal beside it."""
    return output.with_name(output.name + ".partial.jsonl") if is_parquet(output) else output


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="line",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def run_to_file(
    lines: Sequence[BulkLine],
    executor: Executor,
    output: Path,
    key: str,
    resume: bool = False,
    show_progress: bool = True,
) -> JobSummary:
    """Run the job into ``output`` (JSON lines or Parquet), continuing a killed run when ``resume``."""
    journal = OutputJournal(journal_path_for(output), key, progress_path_for(output))
    done = journal.open(resume)
    if done.lines > len(lines):
        journal.close()
        raise ValueError(f"{output} records {done.lines} lines done but the input has only {len(lines)}")
    progress: Progress = done
    try:
        if not done.complete:
            with _progress_bar(len(lines), done.lines, show_progress) as bar:
                for chunk in executor.results(lines[done.lines :]):
                    journal.commit(chunk.lines, chunk.failed, chunk.tokens, chunk.seconds)
                    bar.update(len(chunk.lines))
        progress = journal.finish()
    finally:
        journal.close()
        executor.close()
    if is_parquet(output) and journal.output != output and journal.output.exists():
        write_parquet_from_jsonl(journal.output, output)
        journal.output.unlink()
    return JobSummary(progress.lines, progress.failed, progress.tokens, progress.seconds, done.lines)


def run_to_stream(
    lines: Sequence[BulkLine], executor: Executor, sink: TextIO, show_progress: bool = True
) -> JobSummary:
    started = time.perf_counter()
    failed = tokens = 0
    try:
        with _progress_bar(len(lines), 0, show_progress) as bar:
            for chunk in executor.results(lines):
                sink.writelines(text + "\n" for text in chunk.lines)
                sink.flush()
                failed += chunk.failed
                tokens += chunk.tokens
                bar.update(len(chunk.lines))
    finally:
        executor.close()
    return JobSummary(len(lines), failed, tokens, time.perf_counter() - started)
