"""Wheel build hook: compile the C shim (src/shim/sjob-shim.c) and install it as <prefix>/bin/sjob-shim, and sjobd's
SIGBUS handler (src/sigbus/sjob-sigbus.c) as supervisor/sjob_sigbus.so.

Every job's unit starts with sjob-shim, so it ships inside the wheel like the Python code, built for the machine
the wheel is built on (which makes the wheel platform-specific). It is a script of the wheel's data scheme, so
editable installs get it too.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

WARNINGS_AND_HARDENING = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong"]
# -static-pie: the exit report (sjob-shim --report) runs as root with the job's Environment=, which the job's
# owner chose; a static binary has no dynamic loader for LD_PRELOAD, LD_LIBRARY_PATH or GCONV_PATH to steer.
CFLAGS = [*WARNINGS_AND_HARDENING, "-static-pie"]
LIBRARY_CFLAGS = [*WARNINGS_AND_HARDENING, "-shared", "-fPIC", "-Wl,-z,noexecstack"]  # sjobd loads it with ctypes
SIGBUS_LIBRARY = "sjob_sigbus.so"


class ShimBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        self._tmp = tempfile.mkdtemp(prefix="sjob-shim-build-")
        shim = self._compile("src/shim/sjob-shim.c", "sjob-shim", CFLAGS)
        build_data["shared_scripts"][str(shim)] = "sjob-shim"
        # sjobd's SIGBUS handler for journal files truncated under its reader.
        library = self._compile("src/sigbus/sjob-sigbus.c", SIGBUS_LIBRARY, LIBRARY_CFLAGS)
        build_data["force_include"][str(library)] = f"supervisor/{SIGBUS_LIBRARY}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def _compile(self, source: str, name: str, flags: list[str]) -> Path:
        built = Path(self._tmp) / name
        cc = shlex.split(os.environ.get("CC", "cc"))
        try:
            subprocess.run([*cc, *flags, "-o", str(built), str(Path(self.root) / source)], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise RuntimeError(f"compiling {source} failed ({e}); a C compiler is needed: apt-get install gcc") from e
        return built

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if getattr(self, "_tmp", None):
            shutil.rmtree(self._tmp, ignore_errors=True)
