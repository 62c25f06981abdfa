"""Where bulk requests come from and where Parquet results go: JSON lines or Parquet files.

A JSON-lines input has one request object a line (blank lines are skipped). A Parquet input gives one
request a row: with ``column``, that column's text is the request's ``field`` (``nl`` for a caption,
``tags`` for a tag string); without it, the columns named like request keys are the request.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_BATCH_ROWS = 4096


class MissingExtraError(ImportError):
    """An optional package a bulk feature needs is not installed."""


def import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise MissingExtraError(
            f'Parquet files need pyarrow ({exc}); install it with `pip install -e ".[parquet]"`'
        ) from None
    return pyarrow


def is_parquet(path: Path | None) -> bool:
    return path is not None and path.suffix.lower() in PARQUET_SUFFIXES


@dataclass(frozen=True)
class SourceRecord:
    """One input line or row: its request fields, or why it could not be read."""

    index: int
    fields: dict[str, Any] | None
    error: str | None = None


def read_jsonl_records(lines: Iterator[str]) -> Iterator[SourceRecord]:
    index = 0
    for raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield SourceRecord(index, None, f"line {index + 1}: {exc}")
        else:
            if isinstance(record, dict):
                yield SourceRecord(index, record)
            else:
                yield SourceRecord(index, None, f"line {index + 1}: each line must be a JSON object")
        index += 1


def read_parquet_records(
    path: Path, request_keys: Sequence[str], column: str | None = None, field: str = "nl"
) -> Iterator[SourceRecord]:
    pyarrow = import_pyarrow()
    parquet_file = pyarrow.parquet.ParquetFile(str(path))
    names = parquet_file.schema_arrow.names
    if column is not None and column not in names:
        raise ValueError(f"{path} has no column {column!r}; its columns: {', '.join(names)}")
    wanted = [column] if column is not None else [name for name in names if name in request_keys]
    if not wanted:
        raise ValueError(
            f"{path} has none of the request columns ({', '.join(request_keys)}); name one with --column"
        )
    index = 0
    for batch in parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
        for row in batch.to_pylist():
            if column is None:
                yield SourceRecord(index, row)
            elif isinstance(row[column], str):
                yield SourceRecord(index, {field: row[column]})
            else:
                yield SourceRecord(index, None, f"row {index + 1}: column {column!r} holds no text")
            index += 1


def read_records(
    path: Path, request_keys: Sequence[str], column: str | None = None, field: str = "nl"
) -> Iterator[SourceRecord]:
    """The records of a JSON-lines file (``-``: standard input) or a Parquet file."""
    if is_parquet(path):
        yield from read_parquet_records(path, request_keys, column, field)
    elif str(path) == "-":
        yield from read_jsonl_records(iter(sys.stdin))
    else:
        with path.open(encoding="utf-8") as stream:
            yield from read_jsonl_records(iter(stream))


def write_parquet_from_jsonl(journal: Path, output: Path) -> int:
    """Write the JSON-lines results as Parquet rows in the same order (atomically); returns the row count.

    Columns: ``prompt`` and ``seed`` (null for a failed line or one with variants), ``error`` (null when
    it worked) and ``result``, the whole JSON record.
    """
    pyarrow = import_pyarrow()
    prompts: list[str | None] = []
    seeds: list[int | None] = []
    errors: list[str | None] = []
    results: list[str] = []
    with journal.open(encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            prompts.append(record.get("prompt"))
            seeds.append(record.get("seed"))
            errors.append(record.get("error"))
            results.append(line.rstrip("\n"))
    table = pyarrow.table(
        {
            "prompt": pyarrow.array(prompts, pyarrow.string()),
            "seed": pyarrow.array(seeds, pyarrow.int64()),
            "error": pyarrow.array(errors, pyarrow.string()),
            "result": pyarrow.array(results, pyarrow.string()),
        }
    )
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    pyarrow.parquet.write_table(table, str(temporary))
    os.replace(temporary, output)
    return len(results)
