"""`sjob run`'s limit options, parsed strictly into the protocol's Limits. The daemon checks them against policy.

IO limits name a device as DEVICE=RATE where DEVICE is a block device node or any path on one (such as /): the
path is resolved here, as the caller, to the whole disk it is on (cgroup IO limits apply to disks, not
partitions), and the daemon accepts only block device nodes.
"""

import os
import stat

from supervisor.errors import invalid_argument
from supervisor.limitforms import BY_OPTION, parse_scalar
from supervisor.protocol import DeviceLimit, Limits
from supervisor.quantities import parse_device_limit


def build_limits(options: list[tuple[str, str]]) -> Limits | None:
    """Limits from (option, value) pairs in command-line order; a repeated scalar option: the last one wins."""
    if not options:
        return None
    values: dict[str, object] = {}
    devices: dict[str, list[DeviceLimit]] = {}
    for option, text in options:
        limit = BY_OPTION[option]
        if limit.per_device:
            device, rate = parse_device_limit(text, option, per_second=limit.kind)
            devices.setdefault(limit.field, []).append(DeviceLimit(block_device(device, option), rate))
        else:
            values[limit.field] = parse_scalar(limit.kind, text, option)
    return Limits(**values, **devices)  # type: ignore[arg-type]


def block_device(path: str, option: str) -> str:
    """The whole-disk device node for a block device or for a path on one."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise invalid_argument(
            f"{option} {path}: {e.strerror.lower() if e.strerror else e}",
            hint="give a block device such as /dev/vda, or a path on it such as /",
        ) from None
    number = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    sysfs = f"/sys/dev/block/{os.major(number)}:{os.minor(number)}"
    if not os.path.exists(sysfs):
        raise invalid_argument(
            f"{option} {path}: not on a block device (a network, virtual or overlay file system?)",
            hint="give a block device such as /dev/vda, or a path on a disk",
        )
    disk = os.path.realpath(sysfs)
    if os.path.exists(os.path.join(disk, "partition")):
        disk = os.path.dirname(disk)
    return "/dev/" + os.path.basename(disk)
