"""The crash-safe, ordered output of a bulk job and its progress file.

Lines are appended in input order; each commit writes its lines, flushes and fsyncs the output, then
replaces the progress file atomically (write, fsync, rename) with the number of committed lines and the
byte offset where they end. Whatever a kill leaves past that offset is a partial commit: resuming
truncates the output there and continues with the next line, so nothing is lost, duplicated or reordered.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

PROGRESS_VERSION = 1


class ResumeError(ValueError):
    """The progress file does not describe this job, or the output no longer matches it."""


@dataclass(frozen=True)
class Progress:
    """What the progress file records after each commit."""

    job: str  # identifies the input and the settings; a resume of another job is refused
    lines: int = 0  # committed output lines (= input lines done)
    bytes: int = 0  # output size after the last commit
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0  # generation wall time over all runs of the job
    complete: bool = False
    version: int = PROGRESS_VERSION

    @classmethod
    def read(cls, path: Path) -> Progress | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ResumeError(f"progress file {path} is unreadable: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != PROGRESS_VERSION:
            raise ResumeError(f"progress file {path} has an unknown format")
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def progress_path_for(output: Path) -> Path:
    return output.with_name(output.name + ".progress.json")


def _fsync_directory(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


class OutputJournal:
    """Ordered, resumable JSON-lines output: ``open`` it, ``commit`` lines in order, ``finish``."""

    def __init__(self, output: Path, job: str, progress_file: Path | None = None) -> None:
        self.output = output
        self.progress_file = progress_file or progress_path_for(output)
        self.progress = Progress(job)
        self._handle = None

    def open(self, resume: bool) -> Progress:
        """Start the job, or with ``resume`` continue it where its last commit ended; returns the progress."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        recorded = Progress.read(self.progress_file) if resume else None
        if recorded is None:
            self.progress = Progress(self.progress.job)
            self._handle = self.output.open("wb")
            self._save()
            return self.progress
        if recorded.job != self.progress.job:
            raise ResumeError(
                f"{self.progress_file} belongs to another job (other input or settings); "
                "run without --resume to start again"
            )
        if recorded.complete:  # nothing left to do (a Parquet job's journal is gone by now)
            self.progress = recorded
            return recorded
        size = self.output.stat().st_size if self.output.exists() else -1
        if size < recorded.bytes:
            raise ResumeError(
                f"{self.output} is shorter ({max(size, 0)} bytes) than its progress file records "
                f"({recorded.bytes} bytes); run without --resume to start again"
            )
        self.progress = recorded
        self._handle = self.output.open("r+b")
        self._handle.truncate(recorded.bytes)  # drop a commit that a kill interrupted
        self._handle.seek(recorded.bytes)
        os.fsync(self._handle.fileno())
        return self.progress

    def commit(self, lines: list[str], failed: int = 0, tokens: int = 0, seconds: float = 0.0) -> None:
        """Append ``lines`` (JSON texts without newline) durably, then record them as done."""
        if self._handle is None:
            raise RuntimeError("the journal is not open")
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        previous = self.progress
        self.progress = Progress(
            job=previous.job,
            lines=previous.lines + len(lines),
            bytes=previous.bytes + len(data),
            failed=previous.failed + failed,
            tokens=previous.tokens + tokens,
            seconds=round(previous.seconds + seconds, 3),
        )
        self._save()

    def finish(self) -> Progress:
        self.close()
        self.progress = Progress(**{**asdict(self.progress), "complete": True})
        self._save()
        return self.progress

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _save(self) -> None:
        write_atomically(self.progress_file, json.dumps(asdict(self.progress)).encode("utf-8"))
