#!/usr/bin/env python3
"""sjob's benchmarks: ratios against a baseline, measured in one run on one machine (the test VM), as root.

- job round trip: `sjob run -- true` vs `systemd-run --wait -q -p Type=exec true` (target <= 1.2)
- CLI start-up: `sjob --help`, `sjob list`, `sjob status ID` vs `python3 -c pass` (target <= 1.5 each)
- log reading: `sjob logs` of a job that wrote 20 MB vs `journalctl -u ... -o cat` (throughput ratio, target >= 0.7)
- follow latency: from a job writing a line to `sjob logs -f` printing it (target: median <= 20 ms, p95 <= 50 ms)
- burst: 200 jobs started with `sjob run -d` vs a `systemd-run --no-block` loop, same concurrency (rate ratio,
  target >= 0.8); all 200 must complete and be recorded
- stdin: a 200 MB file as a job's stdin, `sjob run` vs `systemd-run --pipe` (throughput ratio)
- functions: cold-call latency of `hello` and of a function importing pandas, vs `sjob run -- python3 -c pass`
- sjobd's resident memory with 1000 finished job records (target <= 60 MB)
- idle sjobd: its wake-ups (voluntary context switches) and CPU time over 60 s with 5 jobs running and none
  followed (target: 0, no polling: sjobd wakes only for journald's and systemd's news, which an idle machine has none
  of, and for deadlines such as a record's retention)

Runs are interleaved where two commands are compared, so drift in the machine's speed hits both alike. It prints
numbers and marks missed targets; it judges nothing (speed is not a test).
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

RUNS = int(os.environ.get("SJOB_BENCH_RUNS", "11"))
BURST = int(os.environ.get("SJOB_BENCH_BURST", "200"))
CONCURRENCY = 4
SJOB = os.environ.get("SJOB_BIN", "/usr/local/bin/sjob")
PYTHON = [sys.executable, "-c", "pass"]


def timed(argv: Sequence[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    return time.perf_counter() - start


def p(values: Sequence[float], q: float) -> float:
    return sorted(values)[round(q * (len(values) - 1))]


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    return f"  (target {'>=' if higher_is_better else '<='} {target:g}: {'met' if met else 'MISSED'})"


def compare(name: str, ours: list[str], baseline: list[str], target: float | None) -> None:
    for _ in range(2):  # warm caches on both sides
        timed(ours)
        timed(baseline)
    a, b = [], []
    for _ in range(RUNS):
        a.append(timed(ours))
        b.append(timed(baseline))
    ratio = statistics.median(a) / statistics.median(b)
    print(name)
    print(f"  {' '.join(ours):50} median {statistics.median(a) * 1000:7.1f} ms  p90 {p(a, 0.9) * 1000:7.1f} ms")
    print(f"  {' '.join(baseline):50} median {statistics.median(b) * 1000:7.1f} ms  p90 {p(b, 0.9) * 1000:7.1f} ms")
    print(f"  ratio {ratio:.2f}" + (verdict(ratio, target, higher_is_better=False) if target else ""))


def start(*argv: str) -> str:
    out = subprocess.run([SJOB, "run", "-d", "-q", "--", *argv], check=True, capture_output=True, cwd="/")
    return out.stdout.decode().strip()


def wait_ended(job_id: str) -> dict[str, object]:
    while True:
        info: dict[str, object] = json.loads(
            subprocess.run([SJOB, "status", "--json", job_id], capture_output=True, check=True).stdout
        )
        if info["state"] not in ("starting", "running"):
            return info
        time.sleep(0.5)


STRICT = Path(__file__).resolve().parents[2] / "policy" / "profiles" / "strict.toml"


def sandboxed(argv: list[str]) -> list[str]:
    """`systemd-run --wait` of `argv` in the sandbox a job gets by default (the shipped `strict` profile), with the
    private /tmp, no new privileges and privileged ExecStopPost= sjob adds: what sjob's own work costs on top of
    systemd's for the same unit."""
    import tomllib  # noqa: PLC0415

    def value(name: str, given: object) -> str:
        if isinstance(given, bool):
            return "yes" if given else "no"
        if isinstance(given, list):
            return " ".join(map(str, given))
        if name == "UMask" and isinstance(given, int):
            return f"{given:04o}"
        return str(given)

    unit = tomllib.loads(STRICT.read_text())["unit"]
    props = ["-p", "PrivateTmp=yes", "-p", "NoNewPrivileges=yes", "-p", "ExecStopPost=+/bin/true"]
    for name, given in unit.items():
        if name == "SystemCallFilterDeny":
            props += ["-p", f"SystemCallFilter=~{value(name, given)}"]
        else:
            props += ["-p", f"{name}={value(name, given)}"]
    return ["systemd-run", "--wait", "-q", "-p", "Type=exec", *props, *argv]


def journal_entries(*matches: str) -> list[dict[str, str]]:
    out = subprocess.run(["journalctl", "-b", "-o", "json", "--no-pager", *matches], capture_output=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def first_usec(entries: list[dict[str, str]], **fields: str) -> int | None:
    """The monotonic time (CLOCK_MONOTONIC, µs) of the first entry whose fields are all `fields`."""
    for entry in entries:
        if all(entry.get(k) == v for k, v in fields.items()):
            return int(entry["__MONOTONIC_TIMESTAMP"])
    return None


def cpu_usec(unit: str) -> int:
    out = subprocess.run(["systemctl", "show", "-P", "CPUUsageNSec", unit], capture_output=True, check=True).stdout
    return int(out) // 1000 if out.strip().isdigit() else 0


STARTED, DEACTIVATED = "39f53479d3a045ac8e11786248231fbf", "7ad2d189f7e94e70a38c781354912448"


def round_trip_profile() -> None:
    """Where a round trip's time goes, from the journal's monotonic timestamps of each step (journald stamps an
    entry when it receives it), and the CPU time of the CLI, sjobd, PID 1 and journald per round trip;
    `systemd-run --wait` beside it, interleaved."""
    ours: list[dict[int, float]] = []
    theirs: list[dict[int, float]] = []
    cpu = {"sjob": Counter[str](), "systemd-run": Counter[str]()}
    for i in range(RUNS):
        began, ended = timed_cpu(cpu["sjob"], [SJOB, "run", "--", "true"])
        job_id = subprocess.run([SJOB, "list", "-q", "-n", "1"], capture_output=True, check=True).stdout.decode()
        unit = f"sjob-{job_id.strip()}.service"
        said = journal_entries("_SYSTEMD_UNIT=sjobd.service", "--since", "-60s")
        starting = [int(e["__MONOTONIC_TIMESTAMP"]) for e in said if f"starting {unit}" in str(e.get("MESSAGE"))]
        pid1 = journal_entries("_PID=1", f"UNIT={unit}")
        records = journal_entries(f"_SYSTEMD_UNIT={unit}", "SJOB_EVENT=start", "+", f"_SYSTEMD_UNIT={unit}")
        points = [
            began,
            starting[0] if starting else None,
            first_usec(pid1, MESSAGE_ID=STARTED),
            first_usec(records, SJOB_EVENT="start"),
            first_usec(records, SJOB_EVENT="exit"),
            ended,
        ]
        if (step_times := _steps(points)) is not None:
            ours.append(step_times)
        name = f"bench-rt-{os.getpid()}-{i}.service"
        began, ended = timed_cpu(
            cpu["systemd-run"], ["systemd-run", "--wait", "-q", "-p", "Type=exec", "-u", name, "true"]
        )
        pid1 = journal_entries("_PID=1", f"UNIT={name}")
        points = [began, first_usec(pid1, MESSAGE_ID=STARTED), first_usec(pid1, MESSAGE_ID=DEACTIVATED), ended]
        if (step_times := _steps(points)) is not None:
            theirs.append(step_times)
    print(f"job round trip, where the time goes (medians of {len(ours)} and {len(theirs)} runs, ms)")
    steps = [
        "CLI start, connect, request, admit, record",
        "to PID 1's 'Started' (D-Bus, fork, sandbox)",
        "'Started' to the shim's start record",
        "start record to exit record (`true` runs)",
        "exit record to the CLI's exit",
    ]
    for k, step in enumerate([*steps, "in all"]):
        print(f"  sjob run -- true    {step:45} {statistics.median(r[k if k < len(steps) else -1] for r in ours):7.1f}")
    steps = ["CLI start to PID 1's 'Started'", "'Started' to 'Deactivated'", "'Deactivated' to the CLI's exit"]
    for k, step in enumerate([*steps, "in all"]):
        print(
            f"  systemd-run --wait  {step:45} {statistics.median(r[k if k < len(steps) else -1] for r in theirs):7.1f}"
        )
    for side, used in cpu.items():
        print(
            f"  CPU per run, {side:12} "
            + ", ".join(f"{what} {usec / RUNS / 1000:.0f} ms" for what, usec in used.items())
        )


CPU_UNITS = ("sjobd.service", "init.scope", "systemd-journald.service")


def timed_cpu(used: Counter[str], argv: list[str]) -> tuple[int, int]:
    """Run `argv`; add the CPU time (µs) it, sjobd, PID 1 and journald used meanwhile to `used`; its start and end
    (CLOCK_MONOTONIC, µs)."""
    before = {unit: cpu_usec(unit) for unit in CPU_UNITS}
    children = os.times()
    began = time.monotonic_ns() // 1000
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd="/")
    ended = time.monotonic_ns() // 1000
    after = os.times()
    cli = (after.children_user + after.children_system) - (children.children_user + children.children_system)
    used["command"] += round(cli * 1e6)
    for unit in CPU_UNITS:
        used[unit.split(".")[0]] += cpu_usec(unit) - before[unit]
    return began, ended


def _steps(points: list[int | None]) -> dict[int, float] | None:
    """Milliseconds between consecutive points, and (key -1) from the first to the last; None if one is missing."""
    known = [point for point in points if point is not None]
    if len(known) < len(points):
        return None
    steps = {k: (known[k + 1] - known[k]) / 1000 for k in range(len(known) - 1)}
    steps[-1] = (known[-1] - known[0]) / 1000
    return steps


def log_reading() -> None:
    job_id = start("sh", "-c", "yes 'a line of text as a program might write it' | head -c 20M")
    empty_id = start("true")
    wait_ended(job_id)
    wait_ended(empty_id)
    unit, empty_unit = f"sjob-{job_id}.service", f"sjob-{empty_id}.service"
    ours, theirs, piped, ours_empty, theirs_empty = [], [], [], [], []
    for _ in range(3):
        ours.append(timed([SJOB, "logs", "--stdout", job_id]))
        theirs.append(timed(["journalctl", "-u", unit, "-o", "cat", "--no-pager"]))
        piped.append(timed(["sh", "-c", f"journalctl -u {unit} -o cat --no-pager | cat"]))
        ours_empty.append(timed([SJOB, "logs", "--stdout", empty_id]))
        theirs_empty.append(timed(["journalctl", "-u", empty_unit, "-o", "cat", "--no-pager"]))
    m = statistics.median
    ratio = m(theirs) / m(ours)
    print("log reading, 20 MB of output")
    print(f"  sjob logs --stdout ID                              median {m(ours) * 1000:7.1f} ms")
    print(f"  journalctl -u UNIT -o cat                          median {m(theirs) * 1000:7.1f} ms")
    # What any reader that is not journald's own client pays on top: the bytes cross one more pipe.
    print(f"  journalctl -u UNIT -o cat | cat                    median {m(piped) * 1000:7.1f} ms")
    print(f"  the same two of a job that wrote nothing           median {m(ours_empty) * 1000:7.1f} / ", end="")
    print(f"{m(theirs_empty) * 1000:.1f} ms")
    # The bytes alone: each command's time for the job that wrote nothing (start-up, its own row) taken off.
    our_bytes = max(m(ours) - m(ours_empty), 1e-6)
    print(f"  throughput ratio without start-up {(m(theirs) - m(theirs_empty)) / our_bytes:.2f}; ", end="")
    print(f"with the pipe for journalctl too {(m(piped) - m(theirs_empty)) / our_bytes:.2f}")
    print(f"  throughput ratio {ratio:.2f}" + verdict(ratio, 0.7, higher_is_better=True))


def follow_latency() -> None:
    writer = (
        "import time\ntime.sleep(3)\nfor _ in range(60):\n    print(repr(time.time()), flush=True)\n    time.sleep(0.1)"
    )
    job_id = start("python3", "-c", writer)
    delays = []
    with subprocess.Popen([SJOB, "logs", "-f", "--stdout", job_id], stdout=subprocess.PIPE, cwd="/") as follower:
        assert follower.stdout is not None
        for line in follower.stdout:
            delays.append(time.time() - float(line))
    print("follow latency, job writes a line -> sjob logs -f prints it (60 lines)")
    median, p95 = statistics.median(delays) * 1000, p(delays, 0.95) * 1000
    print(f"  median {median:.1f} ms" + verdict(median, 20, higher_is_better=False))
    print(f"  p95    {p95:.1f} ms" + verdict(p95, 50, higher_is_better=False))


def rate(argvs: list[list[str]]) -> tuple[float, list[str]]:
    start_time = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        outputs = list(pool.map(lambda argv: subprocess.run(argv, capture_output=True, check=True, cwd="/"), argvs))
    elapsed = time.perf_counter() - start_time
    return len(argvs) / elapsed, [o.stdout.decode().strip() for o in outputs]


def burst() -> None:
    ours, ids = rate([[SJOB, "run", "-d", "-q", "--", "sleep", "1"] for _ in range(BURST)])
    theirs, _ = rate([["systemd-run", "--no-block", "-q", "sleep", "1"] for _ in range(BURST)])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        listed = json.loads(subprocess.run([SJOB, "list", "--json"], capture_output=True, check=True).stdout)
        done = {j["id"] for j in listed if j["id"] in ids and j["state"] == "exited"}
        if len(done) == len(ids):
            break
        time.sleep(1)
    print(f"burst of {BURST} jobs, {CONCURRENCY} at a time")
    print(f"  sjob run -d               {ours:6.1f} jobs/s")
    print(f"  systemd-run --no-block    {theirs:6.1f} jobs/s")
    print(f"  rate ratio {ours / theirs:.2f}" + verdict(ours / theirs, 0.8, higher_is_better=True))
    print(f"  completed and recorded: {len(done)} of {len(ids)}")


def sjobd_memory() -> None:
    """sjobd's RSS with 1000 finished records: records are written straight into its database while it is stopped
    (starting 1000 real jobs would take the VM most of an hour), then sjobd lists them all."""
    from supervisor.protocol import Job, JobState  # noqa: PLC0415 - run by /opt/sjob/bin/python
    from supervisor.records import JobRecords  # noqa: PLC0415

    subprocess.run(["systemctl", "stop", "sjobd.service"], check=True)
    records = JobRecords(Path("/var/lib/sjob/jobs.sqlite"))
    now = time.time_ns() // 1000
    for i in range(1000):
        job_id = f"{0xB0000000 + i:08x}"
        argv = ["/usr/bin/python3", "-c", f"print({i})", "x" * 64]
        job = Job(job_id, f"sjob-{job_id}.service", JobState.exited, 0, "root", argv, "/root", now - i, exit_status=0)
        if records.get(job_id) is None:
            records.insert(job)
    records.close()
    listed = json.loads(subprocess.run([SJOB, "list", "--json", "--all"], capture_output=True, check=True).stdout)
    main_pid = ["systemctl", "show", "-p", "MainPID", "--value", "sjobd.service"]
    pid = int(subprocess.run(main_pid, capture_output=True, check=True).stdout)
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    print(f"sjobd memory with {len(listed)} job records")
    print(f"  VmRSS {rss_kb / 1024:.1f} MB" + verdict(rss_kb / 1024, 60, higher_is_better=False))


def idle_sjobd() -> None:
    """What sjobd does while nothing happens: 5 jobs running, nobody following them, for 60 s."""
    running = [start("sleep", "300") for _ in range(5)]
    time.sleep(5)  # their starts settle
    main_pid = ["systemctl", "show", "-P", "MainPID", "sjobd.service"]
    pid = int(subprocess.run(main_pid, capture_output=True, check=True).stdout)

    def sample() -> tuple[int, int]:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        switches = next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches:"))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        return switches, ticks

    (switches, ticks), started = sample(), time.monotonic()
    time.sleep(60)
    (switches_after, ticks_after), elapsed = sample(), time.monotonic() - started
    for job_id in running:
        subprocess.run([SJOB, "stop", "--grace", "0", job_id], capture_output=True, check=False)
    cpu_ms = (ticks_after - ticks) * 1000 / os.sysconf("SC_CLK_TCK")
    print(f"idle sjobd over {elapsed:.0f} s, 5 jobs running, nobody following")
    woke = switches_after - switches
    print(f"  wake-ups {woke} ({woke / elapsed:.2f}/s), CPU {cpu_ms:.0f} ms" + verdict(woke, 0, higher_is_better=False))


def stdin_throughput() -> None:
    """200 MB given as a job's stdin (`< file`): sjob passes the descriptor to the unit, as systemd-run --pipe
    does (issue F)."""
    data = Path("/var/tmp/sjob-bench-200m")
    if not data.exists():
        with open(data, "wb") as f:
            for _ in range(200):
                f.write(os.urandom(1 << 20))
    ours, theirs = [], []
    for _ in range(3):
        with open(data, "rb") as source:
            ours.append(timed_stdin([SJOB, "run", "--", "sha256sum"], source))
        with open(data, "rb") as source:
            theirs.append(timed_stdin(["systemd-run", "--pipe", "--wait", "-q", "sha256sum"], source))
    ratio = statistics.median(theirs) / statistics.median(ours)
    print("stdin, 200 MB file as the job's stdin (sha256sum)")
    print(f"  sjob run -- sha256sum < FILE                       median {statistics.median(ours) * 1000:7.1f} ms")
    print(f"  systemd-run --pipe --wait sha256sum < FILE         median {statistics.median(theirs) * 1000:7.1f} ms")
    print(f"  throughput ratio {ratio:.2f}")


def timed_stdin(argv: Sequence[str], source: BinaryIO) -> float:
    start_time = time.perf_counter()
    subprocess.run(argv, check=True, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    return time.perf_counter() - start_time


def function_calls() -> None:
    """Cold-call latency of a function (issue G): `hello`, and one that imports pandas, vs a job running Python
    doing nothing. Deployed as root in the group sjob-fn, which the shipped policy lets deploy."""
    group = subprocess.run(["getent", "group", "sjob-fn"], capture_output=True, check=True).stdout.split(b":")[2]
    as_deployer = ["setpriv", f"--groups={int(group)}"]
    for name, code in (("bench-hello", "print('Hello', 'bench')\n"), ("bench-pandas", "import pandas\nprint(1)\n")):
        source = Path(f"/var/tmp/{name}.py")
        source.write_text(code)
        subprocess.run([*as_deployer, SJOB, "fn", "deploy", name, str(source)], check=True, capture_output=True)
    baseline = [SJOB, "run", "--", "python3", "-c", "pass"]
    compare("function call: hello", [SJOB, "fn", "call", "bench-hello"], baseline, None)
    compare("function call: import pandas", [SJOB, "fn", "call", "bench-pandas"], baseline, None)


def section(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as e:
        print(f"{getattr(fn, '__name__', 'a benchmark')}: FAILED: {e!r}")
    sys.stdout.flush()


def main() -> int:
    print(f"sjob benchmarks ({RUNS} runs per comparison, interleaved)")
    section(
        lambda: compare(
            "job round trip",
            [SJOB, "run", "--", "true"],
            ["systemd-run", "--wait", "-q", "-p", "Type=exec", "true"],
            1.2,
        )
    )
    section(
        lambda: compare(
            "job round trip, against systemd-run with the same sandbox (the strict profile) and an ExecStopPost=",
            [SJOB, "run", "--", "true"],
            sandboxed(["true"]),
            None,
        )
    )
    section(round_trip_profile)
    job_id = start("true")
    for verb in (["--help"], ["list"], ["status", job_id]):
        section(functools.partial(compare, f"CLI start-up: sjob {verb[0]}", [SJOB, *verb], PYTHON, 1.5))
    for fn in (log_reading, follow_latency, idle_sjobd, burst, stdin_throughput, function_calls, sjobd_memory):
        section(fn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
