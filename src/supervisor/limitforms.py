"""How a limit is written, on the command line (`--memory 512M`) and in policy.toml (`memory = "512M"`): one table
of options and one strict parser per kind, shared by the CLI and the daemon's policy loader."""

from supervisor.errors import invalid_argument
from supervisor.protocol import MAX_CPUS, MAX_TASKS, MAX_WEIGHT
from supervisor.quantities import parse_cpu, parse_cpu_list, parse_duration, parse_integer, parse_size

# option -> (Limits field, kind). The policy file's key is the option without "--".
OPTIONS = {
    "--cpu": ("cpu_percent", "cpu"),
    "--cpu-weight": ("cpu_weight", "weight"),
    "--allowed-cpus": ("allowed_cpus", "cpus"),
    "--memory": ("memory_max", "size"),
    "--memory-high": ("memory_high", "size"),
    "--memory-swap": ("memory_swap_max", "size-or-zero"),
    "--io-weight": ("io_weight", "weight"),
    "--io-read-bps": ("io_read_bps", "bytes"),
    "--io-write-bps": ("io_write_bps", "bytes"),
    "--io-read-iops": ("io_read_iops", "operations"),
    "--io-write-iops": ("io_write_iops", "operations"),
    "--tasks": ("tasks_max", "tasks"),
    "--timeout": ("timeout_usec", "duration"),
}
OPTION_OF = {field: option for option, (field, _) in OPTIONS.items()}
DEVICE_KINDS = ("bytes", "operations")  # DEVICE=RATE options, which may be repeated


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
