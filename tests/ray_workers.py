"""Ray Data actors for the Ray tests: the real ChunkWorker on a scripted engine, and one that dies once.

Ray's worker processes import this module by name, so the tests put this folder on their PYTHONPATH.
"""

from __future__ import annotations

import os
from pathlib import Path

from kgen.bulk.engine import BulkLine, ChunkResult, EngineSpec, RunSettings
from kgen.bulk.ray_runner import ChunkWorker
from kgen.engine.replay import ReplayBackend

CRASH_FLAG = "KGEN_TEST_CRASH_FLAG"  # a file: the first worker to reach CRASH_AT_LINE creates it and dies
CRASH_AT_LINE = 96


def seeded_tags(prompt: str, seed: int) -> str:
    return "".join(f", tag{seed}x{i}" for i in range(12)) + "</s>"


class ScriptedWorker(ChunkWorker):
    def __init__(self, engine: EngineSpec, run: RunSettings) -> None:
        self.run = run
        self.backend = ReplayBackend(seeded_tags)


class DiesOnceWorker(ScriptedWorker):
    def process(self, lines: list[BulkLine]) -> ChunkResult:
        flag = Path(os.environ[CRASH_FLAG])
        if lines[0].index >= CRASH_AT_LINE and not flag.exists():
            flag.write_text(str(os.getpid()))
            os._exit(1)  # the whole worker process goes, as in a crash or an OOM kill
        return super().process(lines)
