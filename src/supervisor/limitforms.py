"""Every resource limit, declared once (issue I): a row of `TABLE` says how the limit is written on the command line
(`--memory 512M`) and in policy.toml (`memory = "512M"`, the option without "--"), which field of the protocol's
`Limits` holds it, the range a request may ask for, the systemd property that enforces it with its D-Bus
signature, and how `sjob status` shows it. The CLI's options, their help and completion, the policy's keys, the
daemon's checks, the unit's properties and the status line are all made from this table, so a new limit is one row
here and its field in `Limits` (a unit test checks that the two agree).

Also the one strict parser per kind of value, shared by the CLI and the daemon's policy loader. Pure."""

from __future__ import annotations

from supervisor.errors import invalid_argument
from supervisor.frozen import frozen
from supervisor.protocol import MAX_CPUS, MAX_TASKS, MAX_WEIGHT
from supervisor.quantities import (
    format_cpu_list,
    format_duration,
    format_size,
    parse_cpu,
    parse_cpu_list,
    parse_duration,
    parse_integer,
    parse_size,
)

MAX_BYTES = 2**63 - 1  # what systemd takes for a size, a rate or a time span (below its "infinity")
DEVICE_KINDS = ("bytes", "operations")  # DEVICE=RATE options, which may be repeated


@frozen
class Limit:
    option: str  # --memory; in policy.toml the key `memory`
    field: str  # the field of protocol.Limits
    kind: str  # how its value is written: see parse_scalar (and DEVICE_KINDS)
    prop: str  # the systemd property that enforces it
    signature: str  # that property's D-Bus signature
    metavar: str  # --help's name of the value
    help: str  # --help's text
    label: str  # what `sjob status` calls it
    low: int = 1  # the range a request may ask for (the kernel's or systemd's); a device limit's rate
    high: int = MAX_BYTES

    @property
    def key(self) -> str:
        """Its key in policy.toml."""
        return self.option.removeprefix("--")

    @property
    def per_device(self) -> bool:
        return self.kind in DEVICE_KINDS


TABLE = (
    Limit("--cpu", "cpu_percent", "cpu", "CPUQuotaPerSecUSec", "t", "50%|2",
          "CPU time: percent of one CPU, or CPUs (CPUQuota=)", "CPU", 1, 100 * 1024),
    Limit("--allowed-cpus", "allowed_cpus", "cpus", "AllowedCPUs", "ay", "LIST",
          "run only on these CPUs: 0-3,6 (AllowedCPUs=)", "on CPUs"),
    Limit("--memory", "memory_max", "size", "MemoryMax", "t", "SIZE",
          "memory at most: 512M, 2G; above it the job is OOM-killed (MemoryMax=)", "memory"),
    Limit("--memory-high", "memory_high", "size", "MemoryHigh", "t", "SIZE",
          "memory above which the job is slowed down (MemoryHigh=)", "memory high"),
    Limit("--memory-swap", "memory_swap_max", "size-or-zero", "MemorySwapMax", "t", "SIZE",
          "swap at most, 0 for none (MemorySwapMax=)", "swap", 0),
    Limit("--tasks", "tasks_max", "tasks", "TasksMax", "t", "N",
          "processes and threads at most (TasksMax=)", "tasks", 1, MAX_TASKS),
    Limit("--timeout", "timeout_usec", "duration", "RuntimeMaxUSec", "t", "DURATION",
          "stop the job after this long: 10min, 1h 30min; it then fails as timed out (124)", "timeout"),
    Limit("--io-read-bps", "io_read_bps", "bytes", "IOReadBandwidthMax", "a(st)", "DEV=RATE",
          "read bytes per second from a disk: /=10M; repeatable (IOReadBandwidthMax=)", "read"),
    Limit("--io-write-bps", "io_write_bps", "bytes", "IOWriteBandwidthMax", "a(st)", "DEV=RATE",
          "write bytes per second to a disk; repeatable (IOWriteBandwidthMax=)", "write"),
    Limit("--io-read-iops", "io_read_iops", "operations", "IOReadIOPSMax", "a(st)", "DEV=N",
          "read operations per second; repeatable (IOReadIOPSMax=)", "read"),
    Limit("--io-write-iops", "io_write_iops", "operations", "IOWriteIOPSMax", "a(st)", "DEV=N",
          "write operations per second; repeatable (IOWriteIOPSMax=)", "write"),
    Limit("--cpu-weight", "cpu_weight", "weight", "CPUWeight", "t", "1-10000",
          "share of CPU under contention (CPUWeight=)", "CPU weight", 1, MAX_WEIGHT),
    Limit("--io-weight", "io_weight", "weight", "IOWeight", "t", "1-10000",
          "share of IO under contention (IOWeight=)", "IO weight", 1, MAX_WEIGHT),
)  # fmt: skip
BY_OPTION = {limit.option: limit for limit in TABLE}
BY_FIELD = {limit.field: limit for limit in TABLE}
BY_KEY = {limit.key: limit for limit in TABLE}


def parse_scalar(kind: str, text: str, option: str) -> int | list[int]:
    """The value of a limit given once (all but the DEVICE=RATE ones), strictly: a number, or a list of CPUs."""
    if kind == "cpus":
        return parse_cpu_list(text, option, MAX_CPUS)
    if kind == "cpu":
        return parse_cpu(text, option)
    if kind in ("size", "size-or-zero"):
        return parse_size(text, option, zero=kind == "size-or-zero")
    if kind == "duration":
        usec = parse_duration(text, option)
        if usec == 0:
            raise invalid_argument(f"{option} {text!r}: must be more than zero", hint="for example 10m")
        return usec
    if kind == "weight":
        return parse_integer(text, option, 1, MAX_WEIGHT, "a weight")
    return parse_integer(text, option, 1, MAX_TASKS, "a number of tasks")


def unit_value(limit: Limit, value: object) -> object:
    """A limit's value as its systemd property takes it over D-Bus."""
    if limit.kind == "cpu" and isinstance(value, int):
        return value * 10_000  # percent of a CPU -> CPU time per second, in usec
    if limit.kind == "cpus" and isinstance(value, list):
        return cpu_mask(value)
    if limit.per_device and isinstance(value, list):
        return [(e.device, e.rate) for e in value]
    return value


def cpu_mask(cpus: list[int]) -> bytes:
    """AllowedCPUs= on D-Bus ("ay"): a bit mask, CPU n is bit n % 8 of byte n // 8."""
    mask = bytearray(max(cpus) // 8 + 1)
    for cpu in cpus:
        mask[cpu // 8] |= 1 << (cpu % 8)
    return bytes(mask)


def shown(limit: Limit, value: object) -> list[str]:
    """How `sjob status` shows a limit: `memory 2G`, `on CPUs 0-3`, one entry per device for a device limit."""
    if isinstance(value, list):
        if limit.kind == "cpus":
            return [f"{limit.label} {format_cpu_list(value)}"]
        if limit.kind == "bytes":
            return [f"{limit.label} {e.device} {format_size(e.rate)}/s" for e in value]
        return [f"{limit.label} {e.device} {e.rate} IOPS" for e in value]
    if limit.kind == "cpu":
        return [f"{limit.label} {value}%"]
    if limit.kind in ("size", "size-or-zero") and isinstance(value, int):
        return [f"{limit.label} {format_size(value)}"]
    if limit.kind == "duration" and isinstance(value, int):
        return [f"{limit.label} {format_duration(value)}"]
    return [f"{limit.label} {value}"]
