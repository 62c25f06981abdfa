"""Integrity checks of model files on disk: a truncated or mislabelled .gguf / .safetensors is refused
before a loader reads it."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CorruptModelFileError

_GGUF_MAGIC = b"GGUF"
# ggml tensor type id -> (elements per block, bytes per block), as in ggml.h.
_GGML_BLOCK_SIZES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}  # fmt: skip
# GGUF metadata value type id -> struct format of a scalar
_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFSummary:
    version: int
    tensor_count: int
    metadata: dict[str, Any]  # scalar and string values; arrays are summarised by their length


class _GGUFReader:
    def __init__(self, stream: BinaryIO, path: Path, size: int) -> None:
        self.stream, self.path, self.size = stream, path, size

    def take(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise _truncated(self.path, "GGUF header")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str) -> int:
        n = self.unpack("<Q")
        if n > self.size:
            raise CorruptModelFileError(f"{self.path}: implausible {what} ({n}); the file is corrupt")
        return n

    def string(self) -> str:
        return self.take(self.count("string length")).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _GGUF_SCALARS:
            return self.unpack(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return self.string()
        if kind == _GGUF_ARRAY:
            item_kind, n = self.unpack("<I"), self.count("array length")
            if item_kind in _GGUF_SCALARS:
                self.take(struct.calcsize(_GGUF_SCALARS[item_kind]) * n)
            else:
                for _ in range(n):
                    self.value(item_kind)
            return n
        raise CorruptModelFileError(f"{self.path}: unknown GGUF metadata type {kind}; the file is corrupt")


def check_gguf(path: Path) -> GGUFSummary:
    """Parse a GGUF header and check that every tensor's data is inside the file."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as stream:
        reader = _GGUFReader(stream, path, size)
        if stream.read(4) != _GGUF_MAGIC:
            raise CorruptModelFileError(
                f"{path} is not a GGUF file (bad magic); delete it and download again"
            )
        version = reader.unpack("<I")
        if version not in (2, 3):
            raise CorruptModelFileError(f"{path}: unsupported GGUF version {version} (need 2 or 3)")
        tensor_count, kv_count = reader.count("tensor count"), reader.count("metadata count")
        metadata = {}
        for _ in range(kv_count):
            key = reader.string()
            metadata[key] = reader.value(reader.unpack("<I"))
        data_end = 0
        for _ in range(tensor_count):
            name = reader.string()
            dims = [reader.unpack("<Q") for _ in range(reader.unpack("<I"))]
            kind, offset = reader.unpack("<I"), reader.unpack("<Q")
            if kind in _GGML_BLOCK_SIZES:
                block_elems, block_bytes = _GGML_BLOCK_SIZES[kind]
                elems = 1
                for dim in dims:
                    elems *= dim
                data_end = max(data_end, offset + elems // block_elems * block_bytes)
            else:  # an unknown (newer) type: at least its start must be inside the file
                data_end = max(data_end, offset)
            del name
        alignment = int(metadata.get("general.alignment", 32)) or 32
        data_start = -(-stream.tell() // alignment) * alignment
    if tensor_count and data_start + data_end > size:
        raise _truncated(path, f"tensor data (needs {data_start + data_end} bytes, has {size})")
    return GGUFSummary(version=version, tensor_count=tensor_count, metadata=metadata)


def check_safetensors(path: Path) -> dict[str, Any]:
    """Parse a safetensors header and check the file holds all tensor data. Returns the header."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as stream:
        head = stream.read(8)
        if len(head) != 8:
            raise _truncated(path, "safetensors header")
        header_len = struct.unpack("<Q", head)[0]
        if header_len > min(size, 100_000_000):
            raise CorruptModelFileError(f"{path} is not a safetensors file (header length {header_len})")
        raw = stream.read(header_len)
    if len(raw) != header_len:
        raise _truncated(path, "safetensors header")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CorruptModelFileError(f"{path}: unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CorruptModelFileError(f"{path}: safetensors header is not a JSON object")
    data_end = max(
        (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0
    )
    if 8 + header_len + data_end > size:
        raise _truncated(path, f"tensor data (needs {8 + header_len + data_end} bytes, has {size})")
    return header


def check_model_file(path: Path) -> None:
    """Raise CorruptModelFileError when a .gguf / .safetensors file is damaged."""
    path = Path(path)
    if path.suffix == ".gguf":
        check_gguf(path)
    elif path.suffix == ".safetensors":
        check_safetensors(path)


def _truncated(path: Path, part: str) -> CorruptModelFileError:
    return CorruptModelFileError(
        f"{path} is truncated or corrupt ({part}); an interrupted download? Delete it and download again"
    )
