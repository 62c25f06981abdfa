"""Pack Danbooru category lists into ``kgen/protocol/data/danbooru_tags.bin`` (and unpack them again).

``python -m kgen.protocol.data.pack_tags pack TAG_LIST_DIR`` reads ``artist.txt``, ``characters.txt``,
``copyrights.txt`` and ``meta.txt`` (one tag a line), as in the ``kgen/tag-list`` folder of the
``tipo-kgen`` 0.3.1 wheel; ``python -m kgen.protocol.data.pack_tags unpack OUT_DIR`` writes the shipped lists
back out as plain text (sorted). The format is described in ``kgen.protocol.tags.TagDatabase``.
"""

from __future__ import annotations

import argparse
import lzma
import sys
from collections.abc import Mapping
from pathlib import Path

from ..tags import (
    BLOCK_SEPARATOR,
    CATEGORY_CODES,
    CATEGORY_PRECEDENCE,
    DANBOORU_CATEGORIES,
    DATA_FILE,
    PACKED_HEADER,
    TagCategory,
    TagDatabase,
    tag_key,
)

BLOCK_LINES = 48
CHUNK_BLOCKS = 96  # about 64 KB of text per chunk
FORBIDDEN = "\t\n\r" + BLOCK_SEPARATOR
# A dictionary just larger than a chunk: the best ratio, and decoders allocate no more than that.
COMPRESSION = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 18}]


def read_lists(folder: Path) -> dict[TagCategory, list[str]]:
    lists = {}
    for category in DANBOORU_CATEGORIES:
        text = (folder / f"{category.value}.txt").read_text(encoding="utf-8")
        lists[category] = [line.strip() for line in text.splitlines() if line.strip()]
    return lists


def pack(lists: Mapping[TagCategory, list[str]]) -> tuple[bytes, list[str]]:
    """The packed data, and the entries left out (unusable, or another category has the key)."""
    chosen: dict[str, tuple[TagCategory, str]] = {}
    problems = []
    for category in (c for c in CATEGORY_PRECEDENCE if c in lists):
        for spelling in lists[category]:
            key = tag_key(spelling)
            if not key or any(ch in spelling for ch in FORBIDDEN):
                problems.append(f"{category.value}: unusable entry {spelling!r}")
            elif key in chosen:
                owner, owner_spelling = chosen[key]
                problems.append(
                    f"{category.value}: {spelling!r} has the key of {owner.value} "
                    f"{owner_spelling!r}; kept the latter"
                )
            else:
                chosen[key] = (category, spelling)
    keys = sorted(chosen)
    lines = [
        f"{key}\t{CATEGORY_CODES[chosen[key][0]]}\t{'' if chosen[key][1] == key else chosen[key][1]}\n"
        for key in keys
    ]
    chunk_lines = BLOCK_LINES * CHUNK_BLOCKS
    index, payload = [], []
    for first in range(0, len(lines), chunk_lines):
        chunk = lines[first : first + chunk_lines]
        blocks = ["\n" + "".join(chunk[i : i + BLOCK_LINES]) for i in range(0, len(chunk), BLOCK_LINES)]
        compressed = lzma.compress(
            BLOCK_SEPARATOR.join(blocks).encode("utf-8"), check=lzma.CHECK_CRC32, filters=COMPRESSION
        )
        index.append(f"{len(compressed)}\t{keys[first]}\n")
        payload.append(compressed)
    header = f"{PACKED_HEADER} {len(index)}\n" + "".join(index)
    return header.encode("utf-8") + b"".join(payload), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack_cmd = commands.add_parser("pack", help="pack plain-text lists into the data file")
    pack_cmd.add_argument("folder", type=Path)
    pack_cmd.add_argument("--output", type=Path, default=Path(__file__).parent / DATA_FILE)
    unpack_cmd = commands.add_parser("unpack", help="write the shipped lists as plain text")
    unpack_cmd.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        lists = read_lists(args.folder)
        data, problems = pack(lists)
        for problem in problems:
            print(problem, file=sys.stderr)
        args.output.write_bytes(data)
        counts = ", ".join(f"{category.value} {len(tags)}" for category, tags in lists.items())
        print(f"wrote {args.output} ({len(data)} bytes): {counts}")
    else:
        args.folder.mkdir(parents=True, exist_ok=True)
        for category, spellings in TagDatabase().packed_lists().items():
            path = args.folder / f"{category.value}.txt"
            path.write_text("".join(f"{s}\n" for s in spellings), encoding="utf-8")
            print(f"wrote {path} ({len(spellings)} tags)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
