#!/usr/bin/env python
"""lensforge benchmarks: each runs a baseline and lensforge side by side and prints ratios.

Usage::

    python tools/bench.py list
    python tools/bench.py attention [--repeats 5] [--record]
    python tools/bench.py all --record        # every CPU benchmark; --record appends to docs/benchmarks.md

Every benchmark measures the baseline and the lensforge path in the same process, alternating,
``--repeats`` times after a warm-up, and reports medians and the ratio. ``--record`` appends the
machine, versions, command, date and figures to ``docs/benchmarks.md``. Timings are never asserted
in tests; this script is where performance lives.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))


@dataclass
class Row:
    """One line of a benchmark's result table."""

    name: str
    value: float
    unit: str
    baseline: float | None = None  # the baseline's value in the same unit (for the ratio)
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0 or self.value == 0:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value


@dataclass
class Result:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    target: str = ""

    def table(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.target:
            lines += [f"Target: {self.target}", ""]
        lines += ["| case | lensforge | baseline | speed-up (>1 = lensforge faster/better) | note |", "|---|---|---|---|---|"]
        for r in self.rows:
            base = f"{r.baseline:.4g} {r.unit}" if r.baseline is not None else "—"
            ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "—"
            lines.append(f"| {r.name} | {r.value:.4g} {r.unit} | {base} | {ratio} | {r.note} |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Run several functions alternately (so load drifts hit all equally); median seconds each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def machine_info() -> str:
    import torch

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = "?"
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return (
        f"{dev}; {platform.platform()}; Python {platform.python_version()}; torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}; git {sha or '?'}"
    )


def record(results: list[Result], command: str) -> Path:
    out = REPO / "docs" / "benchmarks.md"
    out.parent.mkdir(exist_ok=True)
    if not out.exists():
        out.write_text("# Benchmark results\n\nRecorded by `python tools/bench.py … --record`. Newest last.\n")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"\n## {stamp} — `{command}`\n", f"Machine: {machine_info()}\n"]
    body += [r.table() for r in results]
    with out.open("a") as f:
        f.write("\n".join(body))
    return out


def main(argv: list[str] | None = None) -> int:
    from bench_cases import BENCHMARKS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="benchmark name, 'all' (every CPU benchmark) or 'list'")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument("--record", action="store_true", help="append the results to docs/benchmarks.md")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = p.parse_args(argv)
    if args.name == "list":
        for name, (fn, doc, cpu) in BENCHMARKS.items():
            print(f"{name:12s} {'' if cpu else '(GPU) '}{doc}")
        return 0
    names = [n for n, (_, _, cpu) in BENCHMARKS.items() if cpu] if args.name == "all" else [args.name]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; choose from: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    results = []
    for n in names:
        fn = BENCHMARKS[n][0]
        print(f"== {n} ==", flush=True)
        res = fn(repeats=args.repeats, quick=args.quick)
        print(res.table(), flush=True)
        results.append(res)
    if args.record:
        cmd = "python tools/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        print(f"recorded in {record(results, cmd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
