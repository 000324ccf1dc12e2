#!/usr/bin/env python3
"""sjob's benchmarks: ratios against a baseline, measured in one run on the same machine (the test VM).

- `sjob run -- true` vs `systemd-run --wait -q -p Type=exec true`: end-to-end cost of a job (target <= 1.5).
- `sjob --help` vs `python3 -c pass`: start-up cost of the CLI.

Runs are interleaved so that drift in the machine's speed hits both sides alike. Prints medians, p90s and ratios;
it judges nothing (speed is not a test), but marks where a target is missed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

RUNS = int(os.environ.get("SJOB_BENCH_RUNS", "11"))
SJOB = os.environ.get("SJOB_BIN", "/usr/local/bin/sjob")


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    return time.perf_counter() - start


def compare(name: str, ours: list[str], baseline: list[str], target: float | None) -> None:
    for _ in range(2):  # warm caches on both sides
        timed(ours)
        timed(baseline)
    a, b = [], []
    for _ in range(RUNS):
        a.append(timed(ours))
        b.append(timed(baseline))
    ratio = statistics.median(a) / statistics.median(b)
    verdict = "" if target is None else f"  (target <= {target:.1f}: {'met' if ratio <= target else 'MISSED'})"
    print(f"{name}")
    print(f"  {' '.join(ours):45} median {statistics.median(a) * 1000:7.1f} ms  p90 {p90(a) * 1000:7.1f} ms")
    print(f"  {' '.join(baseline):45} median {statistics.median(b) * 1000:7.1f} ms  p90 {p90(b) * 1000:7.1f} ms")
    print(f"  ratio {ratio:.2f}{verdict}")


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def main() -> int:
    print(f"sjob benchmarks, {RUNS} runs each, interleaved")
    compare(
        "job round trip", [SJOB, "run", "--", "true"], ["systemd-run", "--wait", "-q", "-p", "Type=exec", "true"], 1.5
    )
    compare("CLI start-up", [SJOB, "--help"], [sys.executable, "-c", "pass"], None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
