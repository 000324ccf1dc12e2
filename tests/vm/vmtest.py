#!/usr/bin/env python3
"""Run sjob's integration tests inside Debian VMs booted under qemu.

sjob turns requests into transient systemd units, so its integration tests
need a real systemd as PID 1 and a working system bus; the CI host has
neither.  This script boots a throwaway Debian VM per suite (bookworm:
systemd 252, trixie: systemd 257) and runs the tests there, as root.

Design
------
* **Cached images.**  One image per suite, built with mmdebstrap as a
  directory, turned into ext4 with ``mke2fs -d`` (no loop mounts) and
  converted to qcow2.  It lives outside the repo in
  ``${SJOB_VM_CACHE:-${XDG_CACHE_HOME:-~/.cache}/sjob-vm}/<suite>-<key>/``
  next to the kernel and initrd taken from its /boot (qemu boots them
  directly: no bootloader).  ``key`` hashes the recipe: the image build code
  below, ``tests/vm/image/`` (customize hook, static files, bootstrap unit),
  the package list, suite, mirror and ``tests/vm/requirements.txt``.  A build
  goes into a temp dir and is renamed into place; older keys are pruned.  The
  customize hook builds a wheelhouse and the pytest venv natively in the chroot
  (host CPU speed, host network) instead of inside the emulated VM.
* **Never write the base image.**  Each run boots a fresh qcow2 overlay in its
  own ``/var/tmp/sjob-vm-<suite>-*`` work dir, so concurrent runs and suites do
  not clobber each other; the base is mode 0444 and opened read-only.
* **Payload in, results out, on raw disks.**  The working tree as git sees it
  is packed into a tar that is attached as a read-only virtio disk
  (``/dev/disk/by-id/virtio-payload``); a sparse raw file is attached as
  ``virtio-results`` and the guest writes a tar of /srv/results onto it, which
  we extract after qemu exits.  No shared file systems, no network needed.
* **Progress over a second serial port.**  ttyS0 is the kernel/systemd
  console (logged to ``console.log``); the guest writes the test output line
  by line to ttyS1, which qemu writes to ``progress.log`` and we tail live.
  The last line is ``SJOB-VM-RESULT rc=N``.
* **Tiny bootstrap in the image, logic in the payload.**  The image only knows
  how to unpack the payload and run ``tests/vm/guest-test.sh`` from it
  (``sjob-ci.service``, pulled in by ``systemd.wants=`` on the kernel command
  line), so editing guest-test.sh or the tests never rebuilds the image.

Guest contract (relied on by tests/vm/guest-test.sh and the tests): payload at
/srv/sjob (SJOB_SRC), results to /srv/results (SJOB_RESULTS), offline
wheelhouse /var/cache/sjob/wheels (SJOB_WHEELHOUSE), pytest venv /opt/sjob-test,
everything as root; SJOB_MODE is "test" or "shell".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import inspect
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
import typing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from xml.etree import ElementTree

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
IMAGE_DIR = HERE / "image"
REQUIREMENTS = HERE / "requirements.txt"
PYPROJECT = REPO / "pyproject.toml"
RUNTIME_REQUIREMENTS = REPO / "runtime" / "requirements.txt"
GUEST_SCRIPT = Path("tests/vm/guest-test.sh")

SUITES = ("bookworm", "trixie")
MIRROR = os.environ.get("SJOB_VM_MIRROR", "http://deb.debian.org/debian")
CA_BUNDLE = Path(os.environ.get("SJOB_VM_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
WORK_ROOT = Path("/var/tmp")
# Installed on top of mmdebstrap's "apt" variant (Essential: yes + apt).
# fmt: off
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "libpam-systemd",           # a real systemd host
    "linux-image-amd64", "initramfs-tools", "e2fsprogs",                   # boot
    "python3", "python3-venv", "python3-dev", "python3-pip",               # install.sh, pytest
    "gcc", "libc6-dev", "pkg-config", "libsystemd-dev",                    # systemd-python
    "ca-certificates", "netbase", "procps", "util-linux", "bsdutils",      # basics (logger)
    "iproute2", "kmod", "passwd", "login", "sudo", "less", "curl", "strace",
    "man-db", "bash-completion", "openssh-server", "openssh-client",       # sjob's man page, completion, -H
)
# fmt: on
IMAGE_SIZE = 8 << 30  # sparse; the qcow2 only stores what is used
RESULTS_DISK_SIZE = 1 << 30  # sparse
# /dev/kvm exists on the CI host but cannot boot a stock kernel: use TCG.
QEMU_MACHINE = ("-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "3072")
KERNEL_ARGS = ("root=/dev/vda", "rw", "console=ttyS0", "panic=1", "fsck.mode=skip", "mitigations=off")
# A guard against a hung run, not the suite's budget (35 min for everything, issue H). A slow host took bookworm's
# guest past 36 minutes (stop 23: nothing hung, the last test was reinstalling); 48 still ends a hang of the first
# suite, and then the second suite, inside CI's 90 minutes.
DEFAULT_TIMEOUT = 48 * 60
# A VM that boots beside the previous one and waits at its start gate for that one's tail line (overlapped_plan)
# gets this much more: it used to boot at the tail line. The wait was 5 to 7 minutes in the runs of 4 December.
START_ALLOWANCE = 15 * 60
# How long the first VM's timing tests wait, once the host checks have passed, for the next VM to reach its start
# gate: a VM stuck before it (an install that hangs) would otherwise keep the first from ever ending.
PATIENCE = 10 * 60
RESULT_RE = re.compile(r"SJOB-VM-RESULT rc=(\d+)")  # the whole line, see watch_vm()
# guest-test.sh prints this line when only tests remain that tolerate a busy host: the next suite's VM may run its
# tests beside this one.
TAIL_LINE = "SJOB-VM-TAIL"
# ... and this one when it waits for a byte on its third serial port (the gate), which watch_vm() sends when the
# VM's Turn says: before its timing tests, once no other suite's VM runs; with sjob.start=gated, after install.sh,
# once the previous suite's VM is in its tail.
GATE_LINE = "SJOB-VM-WAIT-GATE"
# qemu gets this long to power off after the result line before it is killed.
POWEROFF_GRACE = 60.0
# The guest's first progress line comes 20-50 s after qemu starts (boot to sjob-ci.service); none by this many
# seconds means a hung boot, which boot_and_watch() retries.
BOOT_LIMIT = 240.0
BOOT_ATTEMPTS = 2
PANIC_RETRY_WITHIN = 600.0  # a guest kernel panic this early is the emulator's (boot_and_watch): boot again
PANIC_LINE = b"Kernel panic - not syncing"
TOOL_HINT = "apt-get install qemu-system-x86 qemu-utils mmdebstrap e2fsprogs git"
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # systemd's coloured status lines
BUILD_LINE_RE = re.compile(r"^(I:|W:|E:|sjob-image:)")

STOP = threading.Event()  # set on Ctrl-C / SIGTERM: every worker kills its qemu


class VMTestError(Exception):
    """A failure that is reported as a single clear line."""


# --------------------------------------------------------------------- output


class Reporter:
    """Line-oriented output shared by parallel suites."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, suite: str, text: str) -> None:
        with self._lock:
            print(f"[{suite}] {text}", flush=True)

    def block(self, suite: str, title: str, lines: Sequence[str]) -> None:
        with self._lock:
            print(f"[{suite}] ---- {title} ----", flush=True)
            for text in lines:
                print(f"[{suite}] | {text}", flush=True)
            print(f"[{suite}] ---- end ----", flush=True)


def tail_lines(path: Path, count: int) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return [f"({path} is missing)"]
    text = ANSI_RE.sub("", data.decode("utf-8", "replace").replace("\r", ""))
    return text.splitlines()[-count:]


# ---------------------------------------------------------------- host checks


def require_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise VMTestError(f"{tool} not found: {TOOL_HINT}")


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        raise VMTestError(f"must run as root: {why}")


# ---------------------------------------------------------------- file utils


def mount_points() -> list[Path]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for entry in mountinfo:
            raw = entry.split()[4]
            points.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), raw)))
    return points


def safe_rmtree(path: Path) -> bool:
    """Remove a tree unless something is mounted inside it.

    A killed mmdebstrap could leave /proc, /sys or /dev mounted in its rootfs;
    recursing into a bind-mounted /dev would delete the host's device nodes.
    """
    if not path.exists() and not path.is_symlink():
        return True
    busy = [p for p in mount_points() if p == path or path in p.parents]
    if busy:
        print(f"vmtest: not removing {path}: {busy[0]} is mounted there", file=sys.stderr)
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


@contextlib.contextmanager
def flocked(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


def try_exclusive(path: Path) -> int | None:
    """Non-blocking exclusive lock, or None while another run holds the file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def qemu_escape(path: Path) -> str:
    """qemu option values separate sub-options with commas; ",," is a comma."""
    return str(path).replace(",", ",,")


# ------------------------------------------------------------- image recipe


@dataclasses.dataclass(frozen=True)
class Image:
    path: Path

    @property
    def disk(self) -> Path:
        return self.path / "base.qcow2"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def lock(self) -> Path:
        return self.path / ".lock"


def cache_root() -> Path:
    if explicit := os.environ.get("SJOB_VM_CACHE"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "sjob-vm"


def sjob_dependencies() -> bytes:
    """What pyproject.toml's [project] dependencies are, one per line: the image pre-installs them in /opt/sjob."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return "".join(f"{requirement}\n" for requirement in project["dependencies"]).encode()


def mmdebstrap_command(suite: str, rootfs: Path, seed: Path) -> list[str]:
    """`seed` holds sjob-deps.txt (sjob_dependencies()): customize.sh pre-installs those and the functions runtime
    (runtime/requirements.txt) where install.sh puts them, so the first install in each VM boot finds them up to
    date instead of spending minutes of emulated CPU on pandas. The last tests install from nothing."""
    hook = " ".join(
        [
            shlex.quote(str(IMAGE_DIR / "customize.sh")),
            '"$1"',
            shlex.quote(suite),
            shlex.quote(str(REQUIREMENTS)),
            shlex.quote(str(CA_BUNDLE)),
            shlex.quote(str(seed / "sjob-deps.txt")),
            shlex.quote(str(RUNTIME_REQUIREMENTS)),
        ]
    )
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--format=directory",
        "--components=main",
        "--include=" + ",".join(PACKAGES),
        "--customize-hook=" + hook,
        suite,
        str(rootfs),
        MIRROR,
    ]


def make_disk(rootfs: Path, qcow2: Path) -> None:
    # mke2fs -d copies ownership, modes, device nodes, symlinks, hard links and
    # xattrs (file capabilities) without loop-mounting anything.
    raw = qcow2.with_suffix(".raw")
    with open(raw, "wb") as handle:
        handle.truncate(IMAGE_SIZE)
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "sjob-root", "-d", str(rootfs), str(raw)],
        check=True,
    )
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()


def copy_boot_files(rootfs: Path, dest: Path) -> str:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise VMTestError(f"image build produced no kernel in {rootfs}/boot")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = rootfs / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise VMTestError(f"image build produced no {initrd.name} (initramfs-tools?)")
    shutil.copyfile(kernels[-1], dest / "vmlinuz")
    shutil.copyfile(initrd, dest / "initrd.img")
    return version


def check_rootfs(rootfs: Path) -> None:
    """Fail the build early rather than boot an image that cannot work."""
    for needed in (
        "opt/sjob-test/bin/pytest",
        "opt/sjob/bin/python3",
        "opt/sjob/runtime/.sjob-requirements",
        "usr/local/libexec/sjob-ci",
        "etc/systemd/system/sjob-ci.service",
        "var/log/journal",
    ):
        if not (rootfs / needed).exists():
            raise VMTestError(f"image build is missing /{needed}")
    if not any((rootfs / "var/cache/sjob/wheels").glob("*.whl")):
        raise VMTestError("image build produced an empty wheelhouse")


def package_versions(rootfs: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


# The image build code is part of the image key.  Read once at import, so the
# key matches the code that is running even if the file is edited meanwhile.
RECIPE_SOURCE = "".join(inspect.getsource(f) for f in (mmdebstrap_command, make_disk, copy_boot_files, check_rootfs))


def image_key(suite: str) -> str:
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode() + data)

    add("suite", suite.encode())
    add("mirror", MIRROR.encode())
    add("packages", " ".join(PACKAGES).encode())
    add("size", str(IMAGE_SIZE).encode())
    add("recipe", RECIPE_SOURCE.encode())
    add("requirements", REQUIREMENTS.read_bytes())
    add("sjob-dependencies", sjob_dependencies())
    add("runtime-requirements", RUNTIME_REQUIREMENTS.read_bytes())
    for path in sorted(p for p in IMAGE_DIR.rglob("*") if p.is_file() or p.is_symlink()):
        mode = "x" if os.access(path, os.X_OK) else "-"
        add(f"{path.relative_to(IMAGE_DIR)}:{mode}", path.read_bytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------- image cache


def run_logged(cmd: list[str], log: Path, on_line: Callable[[str], None]) -> None:
    """Run a build command, log all output, pass selected lines on, honour STOP."""
    with open(log, "ab") as sink:
        sink.write(f"$ {shlex.join(cmd)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        reader = threading.Thread(target=_pump, args=(proc.stdout, sink, on_line), daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                if STOP.is_set():
                    raise KeyboardInterrupt
                time.sleep(0.2)
        finally:
            stop_process(proc, grace=30.0)  # mmdebstrap needs a moment to unmount
            reader.join(timeout=5)
    if proc.returncode != 0:
        raise VMTestError(f"{cmd[0]} failed with exit code {proc.returncode} (log: {log})")


def _pump(stream: typing.IO[bytes], sink: typing.IO[bytes], on_line: Callable[[str], None]) -> None:
    for raw in stream:
        sink.write(raw)
        sink.flush()
        text = raw.decode("utf-8", "replace").rstrip()
        if BUILD_LINE_RE.match(text):
            on_line(text)


def build_image(suite: str, final: Path, reporter: Reporter) -> None:
    require_root("mmdebstrap --mode=root builds the VM image")
    require_tools("mmdebstrap", "mke2fs", "qemu-img", "dpkg-query")
    if not CA_BUNDLE.is_file():
        raise VMTestError(f"CA bundle {CA_BUNDLE} missing: apt-get install ca-certificates")
    work = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    log = work / "build.log"
    # The work dir goes away on failure; its log is kept here.
    failed_log = final.parent / f"failed-build-{suite}.log"
    reporter.line(suite, f"building image {final.name} (mmdebstrap + wheels, a few minutes)")
    started = time.monotonic()
    try:
        rootfs = work / "rootfs"
        (work / "sjob-deps.txt").write_bytes(sjob_dependencies())
        try:
            run_logged(mmdebstrap_command(suite, rootfs, work), log, lambda t: reporter.line(suite, f"image: {t}"))
        except VMTestError as error:
            shutil.copyfile(log, failed_log)
            reporter.block(suite, "tail of the image build log", tail_lines(log, 40))
            raise VMTestError(f"image build failed; full log: {failed_log}") from error
        check_rootfs(rootfs)
        kernel = copy_boot_files(rootfs, work)
        packages = package_versions(rootfs)
        reporter.line(suite, "image: mke2fs -d + qemu-img convert")
        make_disk(rootfs, work / "base.qcow2")
        if not safe_rmtree(rootfs):
            raise VMTestError(f"could not remove {rootfs}")
        (work / "packages.txt").write_text("".join(f"{k} {v}\n" for k, v in sorted(packages.items())))
        (work / "base.qcow2").chmod(0o444)  # the base is only ever a backing file
        elapsed = time.monotonic() - started
        manifest = {
            "suite": suite,
            "key": final.name.removeprefix(f"{suite}-"),
            "mirror": MIRROR,
            "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "build_seconds": round(elapsed, 1),
            "kernel": kernel,
            "systemd": packages.get("systemd", "?"),
            "python3": packages.get("python3", "?"),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        retire(final)
        os.rename(work, final)
        failed_log.unlink(missing_ok=True)
    except BaseException:
        safe_rmtree(work)
        raise
    reporter.line(suite, f"image built in {elapsed:.0f}s: systemd {manifest['systemd']}, kernel {kernel}")


def retire(path: Path) -> None:
    """Move an image dir out of the way; prune() deletes it once unused."""
    if path.exists():
        os.rename(path, path.parent / f".trash-{path.name}-{os.getpid()}")


def prune(cache: Path, suite: str, keep: Path) -> None:
    """Delete other keys and leftovers of this suite that no run is using.

    Called with the suite's build lock held, so no build is in progress.
    """
    patterns = (f"{suite}-*", f".trash-{suite}-*", f".build-{suite}-*")
    for stale in sorted({p for pattern in patterns for p in cache.glob(pattern)}):
        if stale == keep or not stale.is_dir():
            continue
        fd = try_exclusive(stale / ".lock") if (stale / ".lock").exists() else None
        if (stale / ".lock").exists() and fd is None:
            continue  # a run is still booted from it
        try:
            safe_rmtree(stale)
        finally:
            if fd is not None:
                os.close(fd)


@contextlib.contextmanager
def acquire_image(suite: str, rebuild: bool, reporter: Reporter) -> Iterator[Image]:
    """Yield the cached image, building it if needed, locked against pruning."""
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    image = Image(cache / f"{suite}-{image_key(suite)}")
    with flocked(cache / f"{suite}.lock", fcntl.LOCK_EX):
        if rebuild or not image.manifest.exists():
            build_image(suite, image.path, reporter)
        else:
            reporter.line(suite, f"using cached image {image.path}")
        # Shared lock for the whole run: a concurrent rebuild/prune skips it.
        use_fd = os.open(image.lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(use_fd, fcntl.LOCK_SH)
        prune(cache, suite, keep=image.path)
    try:
        yield image
    finally:
        os.close(use_fd)


# ------------------------------------------------------------------ payload


def git_files(source: Path) -> list[str] | None:
    """Tracked plus untracked-not-ignored files, or None if not a git tree."""
    if shutil.which("git") is None or not (source / ".git").exists():
        return None
    out = subprocess.run(
        ["git", "-c", f"safe.directory={source}", "-C", str(source), "ls-files", "-co", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
    ).stdout
    return sorted({os.fsdecode(name) for name in out.split(b"\0") if name})


def walk_files(source: Path) -> list[str]:
    names = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = [d for d in dirnames if d not in (".git", "__pycache__")]
        for name in filenames:
            names.append(str(Path(dirpath, name).relative_to(source)))
    return sorted(names)


def payload_files(source: Path, exclude: Sequence[Path]) -> list[str]:
    names = git_files(source)
    if names is None:
        names = walk_files(source)
    keep = []
    for name in names:
        path = source / name
        if not os.path.lexists(path):
            continue  # deleted in the work tree but still in the index
        if any(path.resolve() == ex or ex in path.resolve().parents for ex in exclude):
            continue  # e.g. our own results under build/vm when not ignored
        keep.append(name)
    if str(GUEST_SCRIPT) not in keep:
        raise VMTestError(f"{source} has no {GUEST_SCRIPT}: nothing to run in the guest")
    return keep


PYTEST_ARGS_FILE = "tests/vm/pytest-args"  # extra pytest arguments for the guest, one per line (vmtest.py --pytest)


def write_payload(source: Path, names: Sequence[str], dest: Path, pytest_args: Sequence[str] = ()) -> None:
    # tarfile pads to 10 KiB records, so the file is a whole number of sectors.
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        if pytest_args:
            data = "".join(f"{arg}\n" for arg in pytest_args).encode()
            info = tarfile.TarInfo(PYTEST_ARGS_FILE)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name in names:
            mode = os.lstat(source / name).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                continue  # sockets, fifos and devices have no place in a payload
            info = tar.gettarinfo(str(source / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(source / name, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


# ---------------------------------------------------------------------- VM


@dataclasses.dataclass
class VMFiles:
    """Everything one boot needs; the work dir is private to this run, the payload shared by all suites."""

    work: Path
    logs: Path
    payload: Path

    @property
    def overlay(self) -> Path:
        return self.work / "overlay.qcow2"

    @property
    def results_disk(self) -> Path:
        return self.work / "results.img"

    @property
    def gate(self) -> Path:
        return self.work / "gate.sock"

    @property
    def console(self) -> Path:
        return self.logs / "console.log"

    @property
    def progress(self) -> Path:
        return self.logs / "progress.log"

    @property
    def qemu_log(self) -> Path:
        return self.logs / "qemu.log"


def prepare_vm(image: Image, files: VMFiles, results_disk: bool) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "qcow2", str(files.overlay)],
        check=True,
    )
    if results_disk:
        with open(files.results_disk, "wb") as handle:
            handle.truncate(RESULTS_DISK_SIZE)


@dataclasses.dataclass(frozen=True)
class Payload:
    path: Path
    count: int


@contextlib.contextmanager
def snapshot_payload(source: Path, exclude: Sequence[Path], pytest_args: Sequence[str] = ()) -> Iterator[Payload]:
    """Pack the tree once, before any suite boots: every suite tests the same files, even if the tree is edited
    while the run goes on. Suites share it read-only."""
    work = Path(tempfile.mkdtemp(prefix="sjob-vm-payload-", dir=WORK_ROOT))
    try:
        names = payload_files(source, exclude)
        write_payload(source, names, work / "payload.tar", pytest_args)
        yield Payload(work / "payload.tar", len(names))
    finally:
        safe_rmtree(work)


def virtio_disk(name: str, path: Path, fmt: str, extra: str = "", serial: bool = True) -> list[str]:
    device = f"virtio-blk-pci,drive={name}" + (f",serial={name}" if serial else "")
    return ["-drive", f"if=none,id={name},file={qemu_escape(path)},format={fmt}{extra}", "-device", device]


def qemu_command(image: Image, files: VMFiles, append: Sequence[str], *, interactive: bool) -> list[str]:
    cmd = ["qemu-system-x86_64", "-name", "sjob-vm", "-nodefaults", "-no-user-config", "-display", "none"]
    # -no-reboot: a guest reboot or kernel panic (panic=1) ends qemu instead of looping.
    cmd += ["-no-reboot", *QEMU_MACHINE, "-kernel", str(image.kernel), "-initrd", str(image.initrd)]
    cmd += ["-append", " ".join([*KERNEL_ARGS, *append])]
    # The root disk comes first so the guest names it /dev/vda (fstab, root=).
    cmd += virtio_disk("root", files.overlay, "qcow2", ",cache=unsafe,discard=unmap", serial=False)
    cmd += virtio_disk("payload", files.payload, "raw", ",readonly=on")
    # Tests only ever talk to loopback; restrict=on makes sure nothing leaves
    # the VM (DHCP still works).  The interactive shell may want apt/pip.
    netdev = "user,id=net0" + ("" if interactive else ",restrict=on")
    cmd += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0", "-device", "virtio-rng-pci"]
    if interactive:
        cmd += ["-serial", "mon:stdio", "-serial", "null"]
    else:
        cmd += virtio_disk("results", files.results_disk, "raw")
        cmd += ["-serial", f"file:{files.console}", "-serial", f"file:{files.progress}"]
        # The gate (ttyS2): the guest waits there for a byte when its Turn says (GATE_LINE).
        cmd += ["-chardev", f"socket,id=gate,path={qemu_escape(files.gate)},server=on,wait=off"]
        cmd += ["-serial", "chardev:gate"]
    return cmd


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ProgressTail:
    """Follow the file qemu writes the guest's ttyS1 into, line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest = self.read()
        if self.partial:
            rest.append(self.partial.decode("utf-8", "replace").rstrip("\r"))
            self.partial = b""
        return rest


@dataclasses.dataclass
class Outcome:
    rc: int | None = None
    qemu_rc: int | None = None
    timed_out: bool = False
    interrupted: bool = False
    first_line_s: float | None = None
    result_s: float | None = None
    total_s: float = 0.0
    hung_at_boot: bool = False
    waited_alone_s: float = 0.0  # how long the guest waited at the gate for the host to itself
    waited_start_s: float = 0.0  # how long it waited at the gate after install.sh for the previous VM's tail


@dataclasses.dataclass(frozen=True)
class Turn:
    """A VM's part in a run. Where its timing tests go (guest-test.sh's sjob.timing): "first", while the suite has
    the host to itself; "gated", after its parallel phase, once `alone()` says the host's own checks have passed
    (tests/run runs them beside the first VM) and, in an overlapped run, that no other VM does more than wait at its
    gate; "last", once `alone()` says every other VM of the run has ended (overlapped_plan); "none" for a VM that
    runs no timing tests."""

    timing: str = "first"
    alone: Callable[[], bool] = lambda: True
    phases: tuple[str, ...] = ()  # the pytest phases this VM runs (guest-test.sh's sjob.phases); () is all of them
    part: str = ""  # a VM that runs only some of its suite's phases: it reports and keeps its logs as SUITE-PART
    # With `start`, the guest waits at its gate after install.sh until start() is true (sjob.start=gated).
    start: Callable[[], bool] | None = None
    next_at_boot: bool = False  # the next VM boots once this one has booted, not at this one's tail line
    booted: threading.Event = dataclasses.field(default_factory=threading.Event)  # the guest's first line came
    tail: threading.Event = dataclasses.field(default_factory=threading.Event)  # its tail line came (overlapped runs)
    waiting: threading.Event = dataclasses.field(default_factory=threading.Event)  # the guest waits at its gate

    def name(self, suite: str) -> str:
        return f"{suite}-{self.part}" if self.part else suite


def host_checks_done(args: argparse.Namespace) -> bool:
    return args.timing_after is None or args.timing_after.exists()


def first_turn(args: argparse.Namespace) -> Turn:
    """The first suite's turn: with --timing-after, its timing tests wait for that file (the host checks' end)."""
    if args.timing_after is None:
        return Turn()
    return Turn(timing="gated", alone=functools.partial(host_checks_done, args))


def vm_timeout(args: argparse.Namespace, turn: Turn) -> float:
    """A VM's time limit: --timeout, plus START_ALLOWANCE for one that waits at its start gate (which it reaches
    within minutes of its boot, and then waits there for the previous VM's tail line)."""
    timeout: float = args.timeout
    return timeout + (START_ALLOWANCE if turn.start is not None else 0.0)


def open_gate(files: VMFiles) -> bool:
    """Open the gate the guest waits at: a byte on its third serial port."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gate:
            gate.settimeout(5)
            gate.connect(str(files.gate))
            gate.sendall(b"g")
    except OSError:
        return False
    return True


def watch_vm(
    cmd: list[str],
    files: VMFiles,
    timeout: float,
    suite: str,
    reporter: Reporter,
    in_tail: threading.Event,
    turn: Turn | None = None,
) -> Outcome:
    """Boot, stream progress live, enforce the hard timeout, always kill qemu; set `in_tail` at the tail line, and
    open the gate when the guest waits there and `turn` says it may."""
    turn = turn or Turn()
    turn.waiting.clear()  # a guest booted again waits nowhere yet
    outcome = Outcome()
    tail = ProgressTail(files.progress)
    started = time.monotonic()
    deadline = started + timeout
    waiting_since: float | None = None
    gates = 0  # how many times the gate was opened: the first is the start gate, if the turn has one

    def consume(lines: list[str]) -> None:
        nonlocal waiting_since
        for text in lines:
            if outcome.first_line_s is None:
                outcome.first_line_s = time.monotonic() - started
                turn.booted.set()
            if text.strip() == TAIL_LINE:
                in_tail.set()
            if text.strip() == GATE_LINE:
                waiting_since = time.monotonic()
                turn.waiting.set()
            if match := RESULT_RE.fullmatch(text.strip()):
                outcome.rc = int(match[1])
                outcome.result_s = time.monotonic() - started
            reporter.line(suite, text)

    with open(files.qemu_log, "wb") as qemu_log:
        # Own session: a terminal Ctrl-C reaches only us, and we stop qemu,
        # so the run is reported as interrupted rather than as a dead guest.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while proc.poll() is None:
                consume(tail.read())
                starting = turn.start is not None and gates == 0
                may = turn.start if turn.start is not None and starting else turn.alone
                if waiting_since is not None and may() and open_gate(files):
                    waited = time.monotonic() - waiting_since
                    turn.waiting.clear()
                    gates += 1
                    if starting:
                        outcome.waited_start_s = waited
                        reporter.line(suite, f"the previous VM is in its tail after {waited:.0f}s: tests run")
                    else:
                        outcome.waited_alone_s = waited
                        reporter.line(suite, f"alone on the host after {waited:.0f}s: timing tests run")
                    waiting_since = None
                if outcome.rc is not None:
                    deadline = min(deadline, time.monotonic() + POWEROFF_GRACE)
                if time.monotonic() > deadline:
                    outcome.timed_out = outcome.rc is None
                    break
                if outcome.first_line_s is None and time.monotonic() - started > BOOT_LIMIT:
                    outcome.hung_at_boot = True
                    break
                if STOP.is_set():
                    outcome.interrupted = True
                    break
                time.sleep(0.2)
        finally:
            stop_process(proc)
            turn.waiting.clear()
            outcome.qemu_rc = proc.returncode
    consume(tail.flush())
    outcome.total_s = time.monotonic() - started
    return outcome


def guest_panicked(console: Path) -> bool:
    try:
        return PANIC_LINE in console.read_bytes()
    except OSError:
        return False


def boot_and_watch(
    image: Image,
    files: VMFiles,
    cmd: list[str],
    args: argparse.Namespace,
    suite: str,
    reporter: Reporter,
    in_tail: threading.Event,
    turn: Turn,
) -> Outcome:
    """Boot the VM and watch it; boot it again from a fresh overlay when the guest printed nothing in BOOT_LIMIT, or
    when its kernel panicked within PANIC_RETRY_WITHIN.

    Seen here: a bookworm guest under TCG spun both its CPUs at 1.3 s into the kernel's boot and never printed
    another line; without this the run would have waited out its whole timeout (48 minutes) for nothing. And a
    trixie guest's kernel died 149 s after boot with "Oops: int3" in the scheduler: a breakpoint the kernel had
    put there while patching its own code (a static key) ran on the other vCPU, which multi-threaded TCG can do.
    That is the emulator's, not sjob's; a panic later than PANIC_RETRY_WITHIN is reported as it is, since another
    whole suite would no longer fit in CI's time."""
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        prepare_vm(image, files, results_disk=True)
        outcome = watch_vm(cmd, files, vm_timeout(args, turn), suite, reporter, in_tail, turn)
        panicked = (
            outcome.rc is None
            and not (outcome.timed_out or outcome.interrupted)
            and outcome.total_s < PANIC_RETRY_WITHIN
            and guest_panicked(files.console)
        )
        if not (outcome.hung_at_boot or panicked) or attempt == BOOT_ATTEMPTS or STOP.is_set():
            return outcome
        what = "hung" if outcome.hung_at_boot else "panic"
        kept = files.console.with_name(f"console-{what}-{attempt}.log")
        shutil.copyfile(files.console, kept)
        lines = tail_lines(files.console, 200) or [""]
        if outcome.hung_at_boot:
            quoted = lines[-1].strip()[:120]
            why = f"the guest printed nothing in {BOOT_LIMIT:.0f}s (hung at boot; last console line: {quoted!r}"
        else:
            said = (line for line in lines if any(word in line for word in ("Oops", "BUG", "Kernel panic")))
            quoted = next(said, lines[-1]).strip()[:120]
            why = f"the guest's kernel panicked after {outcome.total_s:.0f}s ({quoted!r}"
        reporter.line(suite, f"{why}; console kept in {kept.name}): booting it again")
        # The next attempt's progress starts from nothing: read from the old file, its lines (the first line, the
        # gate line) would count as the new guest's.
        if files.progress.exists():
            files.progress.replace(files.progress.with_name(f"progress-{what}-{attempt}.log"))
        files.overlay.unlink(missing_ok=True)
        files.results_disk.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def extract_results(disk: Path, dest: Path) -> bool:
    try:
        with tarfile.open(disk, "r:") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError):
        return False
    return True


def extra_kernel_args() -> list[str]:
    """$SJOB_VM_APPEND: extra kernel arguments, e.g. systemd.log_level=debug."""
    return shlex.split(os.environ.get("SJOB_VM_APPEND", ""))


def guest_args(args: argparse.Namespace) -> list[str]:
    """What guest-test.sh reads from the kernel command line (test workers, benchmarks), then $SJOB_VM_APPEND."""
    return [f"sjob.workers={args.workers}", *(["sjob.bench=1"] if args.bench else []), *extra_kernel_args()]


def guest_timeout(host_timeout: float) -> int:
    """Leave the guest time to ship journal and partial results on a hang."""
    return max(30, int(host_timeout - min(240.0, host_timeout / 2)))


# ------------------------------------------------------------------ suites


@dataclasses.dataclass
class SuiteResult:
    suite: str
    ok: bool
    status: str
    outcome: Outcome | None = None
    failures: tuple[str, ...] = ()


def junit_failures(logs: Path, lines_each: int = 12) -> tuple[str, ...]:
    """Each failed or errored test of the guest's junit files, with the last lines of its message: the final summary
    prints them, so that a CI log that keeps only its tail still names what failed and why."""
    found = []
    for junit in sorted(logs.glob("junit-*.xml")):
        try:
            root = ElementTree.parse(junit).getroot()  # noqa: S314 (written by our own guest's pytest)
        except (OSError, ElementTree.ParseError):
            continue
        for case in root.iter("testcase"):
            for bad in [*case.findall("failure"), *case.findall("error")]:
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                text = (bad.text or "").splitlines()
                said = [line for line in text if line.startswith("E ")] or text  # pytest's "E   ..." lines
                where = [line for line in text[-3:] if line.strip()][-1:]  # file:line of the failing assertion
                detail = "\n".join(f"      {line[:200]}" for line in [*said[:lines_each], *where])
                found.append(f"    {bad.tag}: {name} ({junit.name})\n{detail}")
    return tuple(found)


def reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


@contextlib.contextmanager
def work_dir(suite: str) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=f"sjob-vm-{suite}-", dir=WORK_ROOT))
    try:
        yield work
    finally:
        safe_rmtree(work)


def judge(outcome: Outcome, timeout: float) -> tuple[bool, str]:
    if outcome.interrupted:
        return False, "interrupted"
    if outcome.timed_out:
        return False, f"TIMED OUT after {timeout:.0f}s (qemu killed)"
    if outcome.hung_at_boot:
        return False, f"HUNG AT BOOT: no line from the guest in {BOOT_LIMIT:.0f}s, {BOOT_ATTEMPTS} boots in a row"
    if outcome.rc is None:
        return False, f"guest never reported a result (qemu exit code {outcome.qemu_rc})"
    if outcome.rc != 0:
        return False, f"FAILED (guest rc={outcome.rc})"
    return True, "passed"


def run_suite(
    suite: str, args: argparse.Namespace, reporter: Reporter, payload: Payload, in_tail: threading.Event, turn: Turn
) -> SuiteResult:
    name = turn.name(suite)  # the image is the suite's; logs, reports and the work directory are this VM's
    logs = (args.results / name).resolve()
    reset_dir(logs)
    with acquire_image(suite, args.rebuild, reporter) as image, work_dir(name) as work:
        files = VMFiles(work=work, logs=logs, payload=payload.path)
        timeout = vm_timeout(args, turn)
        reporter.line(name, f"payload: {payload.count} files from {args.source}; booting (timeout {timeout:.0f}s)")
        append = ["systemd.wants=sjob-ci.service", f"sjob.timeout={guest_timeout(timeout)}", *guest_args(args)]
        if turn.timing != "first":
            append.append(f"sjob.timing={turn.timing}")
        if turn.start is not None:
            append.append("sjob.start=gated")
        if turn.phases:
            append.append(f"sjob.phases={','.join(turn.phases)}")
        cmd = qemu_command(image, files, append, interactive=False)
        outcome = boot_and_watch(image, files, cmd, args, name, reporter, in_tail, turn)
        if not extract_results(files.results_disk, logs) and outcome.rc is not None:
            reporter.line(name, "warning: the results disk holds no readable tar")
    ok, status = judge(outcome, vm_timeout(args, turn))
    write_run_record(logs / "run.json", name, image, ok, status, outcome)
    failures = junit_failures(logs)
    if not ok and not outcome.interrupted:
        reporter.block(name, f"tail of guest console {files.console}", tail_lines(files.console, 40))
    first = "-" if outcome.first_line_s is None else f"{outcome.first_line_s:.1f}s"
    reporter.line(name, f"{status}: boot-to-first-line {first}, total {outcome.total_s:.1f}s; logs in {logs}/")
    return SuiteResult(name, ok, status, outcome, failures)


def write_run_record(path: Path, suite: str, image: Image, ok: bool, status: str, outcome: Outcome) -> None:
    record = {"suite": suite, "ok": ok, "status": status, "image": str(image.path), **dataclasses.asdict(outcome)}
    path.write_text(json.dumps(record, indent=2) + "\n")


def safe_run_suite(
    suite: str,
    args: argparse.Namespace,
    reporter: Reporter,
    payload: Payload,
    in_tail: threading.Event | None = None,
    turn: Turn | None = None,
) -> SuiteResult:
    in_tail = in_tail or threading.Event()
    turn = turn or Turn()
    name = turn.name(suite)
    try:
        return run_suite(suite, args, reporter, payload, in_tail, turn)
    except VMTestError as error:
        reporter.line(name, f"error: {error}")
        return SuiteResult(name, False, f"error: {error}")
    except subprocess.CalledProcessError as error:
        reporter.line(name, f"error: {shlex.join(map(str, error.cmd))} exited {error.returncode}")
        return SuiteResult(name, False, "error")
    except OSError as error:
        reporter.line(name, f"error: {error}")
        return SuiteResult(name, False, f"error: {error}")
    finally:
        in_tail.set()  # however it ended, the next suite need not wait for it
        turn.booted.set()
        turn.waiting.clear()


def others_done(futures: Sequence[Future[SuiteResult]], me: int) -> bool:
    """Every VM of the run but the `me`th has ended: the ones booted before it and the one booted at its tail."""
    return all(f.done() for index, f in enumerate(futures) if index != me)


def others_idle(plan: Sequence[tuple[str, Turn]], futures: Sequence[Future[SuiteResult]], me: int) -> bool:
    """Every VM of the run but the `me`th has ended, waits at its gate, or has not been started."""
    return all(
        index == me or index >= len(futures) or futures[index].done() or turn.waiting.is_set()
        for index, (_, turn) in enumerate(plan)
    )


def overlapped_plan(
    suites: Sequence[str], args: argparse.Namespace, futures: list[Future[SuiteResult]], reporter: Reporter
) -> list[tuple[str, Turn]]:
    """The VMs of an overlapped run, in boot order. Each next suite's VM boots once the previous one has booted, runs
    install.sh beside it (which leaves a CPU idle, as the host checks soon do), and waits at its gate until the
    previous one prints its tail line; the previous one's timing tests wait until it waits there. Booting at the
    tail line instead put the next suite's boot and install, about 100 s, on the run's critical path.

    The last suite's `last` phase (install.sh from nothing, pip-bound: one CPU for minutes) gets a VM of its own,
    which boots at that suite's tail and runs beside its serial phase, which leaves half of the host idle too; the
    serial tests marked `aside` run there too, before the last ones, so that both VMs end at about the same time.
    The suite's timing tests then wait for it as well. --whole-suites keeps it in its suite's VM, and so does a
    subset (--pytest), which would leave that VM with nothing to run."""
    plan: list[tuple[str, Turn]] = []
    blocked_since: float | None = None  # when the host checks had passed but another VM was still busy

    def idle(me: int) -> bool:
        nonlocal blocked_since
        if not host_checks_done(args):
            return False
        if others_idle(plan, futures, me):
            return True
        if blocked_since is None:
            blocked_since = time.monotonic()
        if time.monotonic() - blocked_since < PATIENCE:
            return False
        reporter.line(plan[me][0], f"another VM has not reached its gate in {PATIENCE:.0f}s: timing tests run anyway")
        return True

    # Its timing tests come after its parallel phase, once the host checks passed and the next VM waits at its gate.
    plan.append((suites[0], Turn("gated", functools.partial(idle, 0), next_at_boot=True)))
    for suite in suites[1:]:
        alone = functools.partial(others_done, futures, len(plan))
        start = plan[-1][1].tail.is_set
        if suite == suites[-1] and not args.whole_suites and not args.pytest:
            plan.append((suite, Turn("last", alone, ("parallel", "serial", "timing"), start=start)))
            plan.append((suite, Turn("none", phases=("aside", "last"), part="last")))
        else:
            plan.append((suite, Turn("last", alone, start=start, next_at_boot=suite != suites[-1])))
    return plan


def run_overlapped(
    suites: Sequence[str], args: argparse.Namespace, reporter: Reporter, payload: Payload
) -> list[SuiteResult]:
    """Suites overlap, but no test that measures time runs while another VM does more than wait at its gate. The
    first suite runs its timing tests after its parallel phase, then prints its tail line; from there on its tests
    measure nothing (they change shared state or reinstall sjob) and leave half of the CPU idle, so the next suite's
    VM, booted and installed meanwhile, runs its tests beside it. Every later suite runs its timing tests last, once
    every other VM has ended (overlapped_plan)."""
    futures: list[Future[SuiteResult]] = []  # what each Turn's `alone` looks at: it grows as VMs boot
    plan = overlapped_plan(suites, args, futures, reporter)
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        try:
            for suite, turn in plan:
                futures.append(pool.submit(safe_run_suite, suite, args, reporter, payload, turn.tail, turn))
                next_boots = turn.booted if turn.next_at_boot else turn.tail
                while not next_boots.wait(0.5):
                    if STOP.is_set():
                        raise KeyboardInterrupt
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            STOP.set()  # workers kill their qemu and clean up
            raise


def run_suites(args: argparse.Namespace) -> int:
    reporter = Reporter()
    suites: list[str] = args.suite
    with snapshot_payload(args.source, [args.results.resolve()], args.pytest) as payload:
        if args.jobs > 1 and len(suites) > 1:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                futures = [
                    pool.submit(safe_run_suite, s, args, reporter, payload, None, first_turn(args)) for s in suites
                ]
                try:
                    results = [f.result() for f in futures]
                except KeyboardInterrupt:
                    STOP.set()  # workers kill their qemu and clean up
                    raise
        elif args.overlap and len(suites) > 1:
            results = run_overlapped(suites, args, reporter, payload)
        else:
            results = [safe_run_suite(s, args, reporter, payload, None, first_turn(args)) for s in suites]
    print("vmtest summary:", flush=True)
    for result in results:
        print(f"  {result.suite:9} {result.status}", flush=True)
        for failure in result.failures:
            print(failure, flush=True)
    return 0 if all(r.ok for r in results) else 1


# -------------------------------------------------------------------- shell


def terminal_args() -> list[str]:
    args = []
    if sys.stdout.isatty():
        size = os.get_terminal_size(sys.stdout.fileno())
        args += [f"sjob.rows={size.lines}", f"sjob.cols={size.columns}"]
    term = os.environ.get("TERM", "")
    if re.fullmatch(r"[A-Za-z0-9._+-]+", term):
        args.append(f"sjob.term={term}")
    return args


def run_shell(args: argparse.Namespace) -> int:
    suite = args.suite[0]
    reporter = Reporter()
    with (
        acquire_image(suite, args.rebuild, reporter) as image,
        work_dir(suite) as work,
        snapshot_payload(args.source, [args.results.resolve()]) as payload,
    ):
        files = VMFiles(work=work, logs=work, payload=payload.path)  # the console is the terminal: no logs to keep
        prepare_vm(image, files, results_disk=False)
        append = ["systemd.wants=sjob-shell.service", "quiet", *terminal_args(), *extra_kernel_args()]
        print(
            f"vmtest: booting {suite} with the payload from {args.source} (about 30 s, then "
            "install.sh). Root shell on this terminal; quit with Ctrl-a x "
            "(or run 'poweroff').",
            flush=True,
        )
        proc = subprocess.Popen(qemu_command(image, files, append, interactive=True))
        try:
            return proc.wait()
        finally:
            stop_process(proc)


# --------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run sjob's integration tests in Debian VMs under qemu (run as root).")
    parser.add_argument(
        "--suite", action="append", choices=SUITES, help="Debian suite; repeat for several (default: all, in order)"
    )
    parser.add_argument(
        "--shell",
        action="store_true",
        help="boot one suite (default trixie) with the payload installed and "
        "give an interactive root shell instead of running the tests",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached image(s)")
    parser.add_argument(
        "--pytest",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the guest's pytest, repeatable (e.g. --pytest=-k --pytest=ctrl_c, or a test path "
        "such as --pytest=tests/integration/test_output.py)",
    )
    parser.add_argument(
        "--bench", action="store_true", help="also run the benchmarks (tests/bench/bench.py) once the tests passed"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=3,
        metavar="N",
        help="integration tests run N at a time inside the VM, except the ones marked serial (default %(default)s: "
        "with 3 the VM's 2 CPUs were 92%% busy in that phase, so more only makes each test slower)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="hard limit per suite VM run, seconds (default %(default)s)",
    )
    parser.add_argument(
        "--results", type=Path, default=REPO / "build" / "vm", help="results go to DIR/<suite>/ (default: %(default)s)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="suites to run in parallel (default 1; 2 saved ~35%% wall time in "
        "measurements on 2 cores, but slows each VM and skews benchmarks)",
    )
    parser.add_argument(
        "--no-overlap",
        dest="overlap",
        action="store_false",
        help="with --jobs 1, boot the next suite only when the previous one has ended (by default it boots once the "
        "previous one has run its timing tests, and runs its own last, when it has the host to itself)",
    )
    parser.add_argument(
        "--whole-suites",
        action="store_true",
        help="run the last suite's `last` phase (install.sh from nothing) in that suite's VM, not in a VM of its own "
        "booted beside the suite's serial phase",
    )
    parser.add_argument(
        "--timing-after",
        type=Path,
        metavar="FILE",
        help="the first suite runs its timing tests after its parallel phase, once FILE exists, instead of first: "
        "tests/run makes FILE when its host checks (lint, unit tests), which run beside the VM meanwhile, have passed",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=Path(os.environ.get("SJOB_VM_SOURCE") or REPO),
        help="tree to send as the payload (default: this repo, or $SJOB_VM_SOURCE)",
    )
    args = parser.parse_args(argv)
    if args.shell and args.suite and len(args.suite) > 1:
        parser.error("--shell takes a single --suite")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    args.suite = args.suite or (["trixie"] if args.shell else list(SUITES))
    args.suite = list(dict.fromkeys(args.suite))
    if args.bench:
        args.overlap = False  # benchmarks run after the tests: with the next VM beside them they would be skewed
    args.source = args.source.resolve()
    if not args.source.is_dir():
        parser.error(f"--source {args.source} is not a directory")
    return args


def raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)  # clean up like on Ctrl-C
    try:
        require_tools("qemu-system-x86_64", "qemu-img")
        return run_shell(args) if args.shell else run_suites(args)
    except VMTestError as error:
        print(f"vmtest: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        STOP.set()
        print("vmtest: interrupted; qemu stopped, temporary files removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
