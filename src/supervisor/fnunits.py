"""The units a function's deploy and calls become (issue G): ordinary sjob jobs (sjob-<id>.service, the shim,
the output in journald, the records), with three differences. Pure: no I/O.

- They run as a user systemd makes for the unit alone (DynamicUser=), never as the caller nor as the deployer, so
  neither can read the other's files, and one call cannot signal or trace another. They are charged to the slice
  of the user who asked (the caller, or the deployer for a build).
- The code is bound read-only at CODE_DIR, from the version's sealed directory (fnstore); a build also gets its
  output directory at BUILD_DIR, writable.
- A call runs the version's bytecode, compiled by its build: `python -I -u` then `runpy` on the module `main`,
  which takes the compiled file and so does not compile at call time. `-I`: no environment variable, user site or
  working directory changes what Python imports; `-u`: what the code prints reaches the caller as it is written.
"""

from __future__ import annotations

from collections.abc import Sequence

from supervisor.auth import Principal
from supervisor.policy import FunctionsPolicy, OutputQuota
from supervisor.profiles import Profile
from supervisor.properties import DYNAMIC, Bind, JobStdio, ShimCommand, UnitProperties, job_unit
from supervisor.protocol import JobSpec, Limits

CODE_DIR = "/opt/sjob/function"  # mount points install.sh makes (empty directories)
BUILD_DIR = "/opt/sjob/build"
SCRATCH = "/tmp"  # noqa: S108 - the call's private /tmp (PrivateTmp=): a call's working directory: its private /tmp, the one place it may write
EXIT_DOES_NOT_COMPILE = 65  # EX_DATAERR: the build's status when the code has a syntax error

# The build: with requirements, make the version's own environment on top of the shared runtime (a .pth file puts
# the runtime's packages, pandas among them, after the version's own) and install them with the runtime's pip (`pip
# --python`: the environment gets no pip of its own, which ensurepip would copy and compile, 20 s of every such
# build in the test VM, for code that never runs pip); then compile the
# code to bytecode that calls use as it is (unchecked-hash .pyc: versions never change). Compiling comes last, so
# no requirement's setup.py replaces the compiled code that `versions` vouches for by its source's hash while it
# runs. A process it leaves behind still could, until systemd ends the unit. That gives the deployer nothing they
# lack: a requirement they list can run its code in every call anyway (a .pth file it installs runs at start-up, -I
# or not), so a version with requirements is vouched for by its deployer, not by its source's hash (README, known
# gaps; review of stop 26).
BUILD = r"""
import os, py_compile, subprocess, sys, sysconfig
code, out = "/opt/sjob/function", "/opt/sjob/build"
if os.path.exists(f"{code}/requirements.txt"):
    venv = f"{out}/venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = subprocess.run(
        [f"{venv}/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    with open(f"{site}/sjob-runtime.pth", "w") as pth:
        pth.write(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", f"{venv}/bin/python", "install", "--no-cache-dir",
           "--progress-bar", "off", "--disable-pip-version-check", *sys.argv[1:], "-r", f"{code}/requirements.txt"]
    print("sjob: installing the requirements:", " ".join(pip[5:]), flush=True)
    if (status := subprocess.run(pip).returncode) != 0:
        sys.exit(status)
try:
    py_compile.compile(
        f"{code}/main.py",
        cfile=f"{out}/__pycache__/main.{sys.implementation.cache_tag}.pyc",
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
except py_compile.PyCompileError as e:
    sys.stderr.write(f"sjob: the code does not compile:\n{e.msg}\n")
    sys.exit(65)
print("sjob: compiled main.py", flush=True)
"""
# What a build may leave that becomes part of the version (fnstore copies nothing else).
BUILT = ("__pycache__", "venv")

# A call: the version's compiled module `main`, as __main__, with the call's arguments in sys.argv[1:].
BOOT = (
    f"import runpy, sys; sys.path.insert(0, {CODE_DIR!r});"
    " runpy.run_module('main', run_name='__main__', alter_sys=True)"
)


def python(runtime: str, own_environment: bool) -> str:
    """The interpreter a version runs with: its own environment's (--requirements), or the shared runtime's."""
    return f"{CODE_DIR}/venv/bin/python3" if own_environment else f"{runtime}/bin/python3"


def build_unit(
    unit: str,
    job_id: str,
    deployer: Principal,
    source: str,
    output: str,
    functions: FunctionsPolicy,
    limits: Limits,
    profile: Profile,
    shim: ShimCommand,
    quota: OutputQuota,
) -> UnitProperties:
    argv = [f"{functions.runtime}/bin/python3", "-I", "-c", BUILD, *functions.pip_args]
    return job_unit(
        unit,
        job_id,
        JobSpec(argv, SCRATCH, environment=["HOME=/tmp", "LANG=C.UTF-8"]),
        deployer,
        DYNAMIC,
        DYNAMIC,
        shim,
        limits,
        profile,
        quota,
        charged_to=deployer.uid,
        binds=[Bind(source, CODE_DIR), Bind(output, BUILD_DIR, read_only=False)],
        shown_as=["build of a function"],
        # What it leaves must be readable and removable by sjobd, which is root without capabilities (it cannot
        # read or change another user's 0700 directory): everything world-readable and -writable, in a
        # directory only the build's bind mount and root (0700 /var/lib/sjob) reach; fnstore copies it.
        overrides=[("UMask", 0)],
    )


def call_unit(
    unit: str,
    job_id: str,
    caller: Principal,
    name: str,
    version: int,
    version_dir: str,
    own_environment: bool,
    args: Sequence[str],
    functions: FunctionsPolicy,
    limits: Limits,
    profile: Profile,
    shim: ShimCommand,
    quota: OutputQuota,
    stdin: int | None,
) -> UnitProperties:
    argv = [python(functions.runtime, own_environment), "-I", "-u", "-c", BOOT, *args]
    environment = [
        "HOME=/tmp",
        "LANG=C.UTF-8",
        f"SJOB_CALLER={caller.name}",
        f"SJOB_FUNCTION={name}",
        f"SJOB_VERSION={version}",
    ]
    return job_unit(
        unit,
        job_id,
        JobSpec(argv, SCRATCH),
        caller,
        DYNAMIC,
        DYNAMIC,
        shim,
        limits,
        profile,
        quota,
        JobStdio(stdin),
        charged_to=caller.uid,
        binds=[Bind(version_dir, CODE_DIR)],
        environment=environment,
        shown_as=[f"function {name}@{version}", *args],
        relay_input=stdin is not None,
    )
