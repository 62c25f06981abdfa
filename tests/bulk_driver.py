"""The real command line on a scripted engine: ``python tests/bulk_driver.py --input IN --output OUT``.

The resume tests kill this process at random points; the script makes it fast and deterministic (each
completion depends only on the seed) and slow enough per line (``KGEN_TEST_DELAY`` seconds) to be killed
mid-job.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kgen import cli
from kgen.engine.replay import ReplayBackend

DELAY = float(os.environ.get("KGEN_TEST_DELAY", "0.002"))


def seeded_tags(prompt: str, seed: int) -> str:
    time.sleep(DELAY)
    return "".join(f", tag{seed}x{i}" for i in range(12)) + "</s>"


def main() -> int:
    cli.load_backend = lambda args: (ReplayBackend(seeded_tags), None)
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
