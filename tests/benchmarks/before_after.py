"""Before vs after a change, in one run: a benchmark of this checkout against the same one of another tree.

    .venv/bin/python tests/benchmarks/before_after.py --baseline ../before decode -- --only ours-auto/1
    .venv/bin/python tests/benchmarks/before_after.py --baseline ../before tgts -- --sizes 32 --prompts 1

``--baseline`` is another checkout of this project (e.g. ``git worktree add ../before <commit>``). The named
benchmark (``tests/benchmarks/<name>.py``) runs from each tree in turn, ``--rounds`` times, alternating
(before, after, before, ...), so both see the same machine load; each run imports its own tree's
``kgen``. The table
shows, per row of the benchmark (decode: configuration/batch; tgts: N and policy), the median over rounds of
its timings before and after (decode: prefill ms and decode ms/token; tgts: seconds, with the forward-token
count, which must not change). The last line is ``after_vs_before=<median of after ÷ before over every
timing>``: below 1 the change is faster, 1 ± noise is no change.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Column:
    name: str
    index: int  # position among the row's whitespace-separated words
    timed: bool  # a timing (compared as a ratio) or a count (must be equal)


# benchmark -> (words that make a row's label, its columns)
LAYOUTS = {
    "decode": ((0, 1), (Column("prefill ms", 2, True), Column("decode ms/token", 3, True))),
    "tgts": ((0, 1), (Column("seconds", 6, True), Column("forward tokens", 3, False))),
}


def is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def parse_rows(benchmark: str, output: str) -> dict[str, list[float]]:
    label_words, columns = LAYOUTS[benchmark]
    rows = {}
    for line in output.splitlines():
        words = line.split()
        needed = max(c.index for c in columns)
        if len(words) <= needed or not all(is_number(words[c.index]) for c in columns):
            continue
        if benchmark == "decode" and not is_number(words[1]):
            continue
        rows["/".join(words[i] for i in label_words)] = [float(words[c.index]) for c in columns]
    return rows


def run_benchmark(tree: Path, benchmark: str, extra: list[str]) -> dict[str, list[float]]:
    script = tree / "tests" / "benchmarks" / f"{benchmark}.py"
    if not script.is_file():
        raise SystemExit(f"{script} does not exist")
    proc = subprocess.run([sys.executable, str(script), *extra], capture_output=True, text=True, cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed:\n{proc.stderr[-2000:]}")
    return parse_rows(benchmark, proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (before)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("benchmark", choices=sorted(LAYOUTS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="after --: the benchmark's own options")
    args = parser.parse_args()
    extra = [a for a in args.args if a != "--"]
    trees = {"before": args.baseline.resolve(), "after": HERE.parent.parent}
    runs: dict[str, list[dict[str, list[float]]]] = {"before": [], "after": []}
    for round_index in range(args.rounds):
        for side, tree in trees.items():
            runs[side].append(run_benchmark(tree, args.benchmark, extra))
            print(f"round {round_index + 1}/{args.rounds}: {side} done", flush=True)
    _, columns = LAYOUTS[args.benchmark]
    every_run = runs["before"] + runs["after"]
    seen = {label for run in every_run for label in run}
    labels = [label for label in runs["after"][0] if all(label in r for r in every_run)]
    for label in sorted(seen - set(labels)):
        print(f"{label}: no timings in some run (the benchmark printed an error for it)")
    print(f"\n{args.benchmark}: median of {args.rounds} alternating rounds; before = {trees['before']}")
    print(f"{'row':<28}{'column':>18}{'before':>12}{'after':>12}{'after/before':>14}")
    ratios = []
    for label in labels:
        for position, column in enumerate(columns):
            before = statistics.median(r[label][position] for r in runs["before"])
            after = statistics.median(r[label][position] for r in runs["after"])
            ratio = after / before if before else float("nan")
            if column.timed:
                ratios.append(ratio)
            print(f"{label:<28}{column.name:>18}{before:>12.2f}{after:>12.2f}{ratio:>14.3f}")
    print(f"after_vs_before={statistics.median(ratios):.3f}" if ratios else "after_vs_before=nan")


if __name__ == "__main__":
    main()
