"""Oracle driver: time and memory of the reference loading its tag lists (at import of kgen.formatter).

Payload: {}. Result: {"seconds": float, "traced_peak_mb": float, "rss_delta_mb": float}; the import
is done twice in fresh measurements: once timed without tracing, memory in the same process via RSS,
and the traced peak with tracemalloc on a reload.
"""

import importlib
import json
import sys
import time
import tracemalloc

import kgen.metainfo  # dependencies first: only the list loading is measured


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


before = rss_mb()
start = time.perf_counter()
import kgen.formatter  # noqa: E402

seconds = time.perf_counter() - start
rss_delta = rss_mb() - before
tracemalloc.start()
importlib.reload(kgen.formatter)  # the module's lists are rebuilt; the old ones stay alive meanwhile
traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
tracemalloc.stop()
with open(sys.argv[2], "w", encoding="utf-8") as sink:
    json.dump({"seconds": seconds, "rss_delta_mb": rss_delta, "traced_peak_mb": traced_peak}, sink)
