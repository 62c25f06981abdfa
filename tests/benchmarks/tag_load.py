"""Benchmark: loading the tag lists, ours against the reference (tipo-kgen 0.3.1).

Each measurement runs in a fresh interpreter: time, RSS growth and tracemalloc peak of
  * ours, first use: classifying a 30-tag prompt right after ``import kgen.protocol.tags`` (lazy chunks);
  * ours, everything: ``TagDatabase().load()`` (all chunks, as the oracle tests do);
  * the reference: ``import kgen.formatter``, which reads every list into sets at import.

Run: ``.venv/bin/python tests/benchmarks/tag_load.py [--repeat N]`` (best of N runs, default 3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))

from oracle import run_reference  # noqa: E402

PROMPT = (
    "1girl, solo, long hair, blue eyes, hatsune miku, vocaloid, absurdres, masterpiece, smile, "
    "open mouth, skirt, shirt, thighhighs, looking at viewer, simple background, white background, "
    "holding, standing, twintails, very long hair, aqua hair, detached sleeves, necktie, sitting, "
    "outdoors, sky, cloud, day, tree, safe"
)

OURS = """
import json, sys, time, tracemalloc
def rss_mb():
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(l.split()[1]) / 1024 for l in status if l.startswith("VmRSS:"))
from kgen.protocol.tags import TagDatabase
tags = sys.argv[2].split(", ")
def work():
    database = TagDatabase()
    return database.load() if sys.argv[1] == "full" else database.classify(tags)
before = rss_mb()
start = time.perf_counter()
work()
seconds = time.perf_counter() - start
rss_delta = rss_mb() - before
tracemalloc.start()
work()
peak = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps({"seconds": seconds, "rss_delta_mb": rss_delta, "traced_peak_mb": peak}))
"""


def measure_ours(mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", OURS, mode, PROMPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    return json.loads(proc.stdout)


def best(runs: list[dict]) -> dict:
    return {key: min(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = {
        "ours, first use (30-tag prompt)": best([measure_ours("first") for _ in range(args.repeat)]),
        "ours, all lists loaded": best([measure_ours("full") for _ in range(args.repeat)]),
        "reference, import kgen.formatter": best(
            [run_reference("tags_load", {}) for _ in range(args.repeat)]
        ),
    }
    width = max(len(name) for name in results)
    print(f"{'measurement':<{width}}  {'seconds':>8}  {'RSS +MB':>8}  {'traced peak MB':>14}")
    for name, result in results.items():
        print(
            f"{name:<{width}}  {result['seconds']:8.3f}  {result['rss_delta_mb']:8.1f}  "
            f"{result['traced_peak_mb']:14.1f}"
        )
    ours, full, ref = results.values()

    def ratio(key: str, mine: dict) -> str:
        return f"{ref[key] / mine[key]:.1f}"

    print(
        f"ratio reference/ours (above 1: ours better): first use time {ratio('seconds', ours)}, "
        f"memory {ratio('traced_peak_mb', ours)}; all lists loaded time {ratio('seconds', full)}, "
        f"memory {ratio('traced_peak_mb', full)}"
    )


if __name__ == "__main__":
    main()
