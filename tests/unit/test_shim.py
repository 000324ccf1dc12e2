"""sjob-shim (C) end to end, against a fake journald socket: exact output, separate streams, exit status, and the
entry layout that supervisor.logformat reads back."""

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import logformat
from supervisor.logformat import EofRecord, ExitRecord, OutputRecord

from .journalfake import FakeJournal, decode

SOURCE = Path(__file__).resolve().parents[2] / "src" / "shim" / "sjob-shim.c"


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shim, compiled here with warnings as errors (the wheel build compiles it the same way, less -Werror)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to build sjob-shim: apt-get install gcc"
    binary = tmp_path_factory.mktemp("shim") / "sjob-shim"
    subprocess.run([cc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(SOURCE)], check=True)
    return str(binary)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[FakeJournal]:
    fake = FakeJournal(tmp_path)
    yield fake
    fake.close()


def run_shim(shim: str, journal: FakeJournal, *argv: str, checks: str = "") -> tuple[int, dict[str, bytes]]:
    """Run the shim as the unit would, pointed at the fake journal; return its status and what each stream got."""
    journal.entries.clear()
    check = [f"--check={checks}"] if checks else []
    command = [shim, "--journal-socket", journal.path, *check, "1a2b3c4d", "--", *argv]
    proc = subprocess.run(command, timeout=60, check=False)
    journal.wait_for(logformat.F_EVENT, b"eof")
    streams = {"stdout": b"", "stderr": b""}
    seqs = []
    for fields in journal.entries:
        record = logformat.parse_record(fields)
        if isinstance(record, OutputRecord):
            streams[record.stream] += record.data
            seqs.append(record.seq)
        elif isinstance(record, EofRecord):
            assert record.records == len(seqs)
    assert seqs == list(range(1, len(seqs) + 1))
    return proc.returncode, streams


TRICKY = b"\n\nblank lines above\ntrailing blanks   \ncrlf\r\n<3>level prefix\n\x00nul\xff\xfeinvalid utf-8\nno newline"


def test_output_is_exact_and_streams_are_apart(shim: str, journal: FakeJournal, tmp_path: Path) -> None:
    (tmp_path / "out").write_bytes(TRICKY)
    (tmp_path / "err").write_bytes(b"to stderr\n")
    status, streams = run_shim(shim, journal, "/bin/sh", "-c", f"cat {tmp_path}/out; cat {tmp_path}/err >&2; exit 3")
    assert status == 3
    assert streams == {"stdout": TRICKY, "stderr": b"to stderr\n"}


@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=1, max_size=200_000))
def test_any_bytes_come_back_exactly(shim: str, tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    directory = tmp_path_factory.mktemp("any")
    (directory / "data").write_bytes(data)
    fake = FakeJournal(directory)
    try:
        status, streams = run_shim(shim, fake, "/bin/cat", str(directory / "data"))
    finally:
        fake.close()
    assert (status, streams["stdout"], streams["stderr"]) == (0, data, b"")


def test_entries_look_right_in_journalctl(shim: str, journal: FakeJournal) -> None:
    run_shim(shim, journal, "/bin/sh", "-c", "echo hello; echo oops >&2")
    by_stream = {e[logformat.F_STREAM]: e for e in journal.entries if logformat.F_STREAM in e}
    assert by_stream[b"stdout"]["MESSAGE"] == b"hello"  # the newline is not part of the line journalctl shows
    assert (by_stream[b"stdout"]["PRIORITY"], by_stream[b"stderr"]["PRIORITY"]) == (b"6", b"3")
    assert by_stream[b"stdout"]["SYSLOG_IDENTIFIER"] == b"sh"
    assert logformat.F_PARTIAL not in by_stream[b"stdout"]
    assert all(e[logformat.F_JOB_ID] == b"1a2b3c4d" for e in journal.entries)


def test_large_single_line(shim: str, journal: FakeJournal) -> None:
    status, streams = run_shim(shim, journal, sys.executable, "-c", "import sys; sys.stdout.write('x' * (1 << 20))")
    assert status == 0
    assert streams["stdout"] == b"x" * (1 << 20)
    assert all(len(e.get("MESSAGE", b"")) <= 64 * 1024 for e in journal.entries)


@pytest.mark.parametrize(("command", "status"), [("/nonexistent/command", 127), ("/etc/passwd", 126)])
def test_command_that_cannot_run(shim: str, journal: FakeJournal, command: str, status: int) -> None:
    result, streams = run_shim(shim, journal, command)
    assert result == status
    assert f"sjob: cannot execute '{command}'".encode() in streams["stderr"]


def test_sigpipe_is_default_for_the_job(shim: str, journal: FakeJournal) -> None:
    # With SIGPIPE ignored, `yes` would complain about a broken pipe on stderr.
    status, streams = run_shim(shim, journal, "/bin/sh", "-c", "yes | head -c 4")
    assert (status, streams) == (0, {"stdout": b"y\ny\n", "stderr": b""})


def test_forwarder_is_not_a_child_of_the_job(shim: str, journal: FakeJournal) -> None:
    code = (
        "import os\ntry:\n    os.wait()\n    print('has a child')\nexcept ChildProcessError:\n    print('no children')"
    )
    status, streams = run_shim(shim, journal, sys.executable, "-c", code)
    assert (status, streams["stdout"]) == (0, b"no children\n")


def test_forwarder_outlives_a_sigterm_to_drain_what_was_written(shim: str, journal: FakeJournal) -> None:
    # What systemd does when the main process exits: SIGTERM to every process left in the cgroup.
    # Only the forwarder still has the shim's command line; the job itself has become sh.
    script = f"head -c 300000 /dev/zero; pkill -TERM -f '^{shim} --journal-socket' || exit 9; exit 0"
    status, streams = run_shim(shim, journal, "/bin/sh", "-c", script)
    assert status == 0
    assert streams["stdout"] == b"\0" * 300000


def test_output_goes_on_to_a_journald_socket_made_anew(shim: str, tmp_path: Path) -> None:
    """journald's socket made anew while a job runs (systemd-journald.socket restarted): what the job writes after
    that reaches the new socket. The forwarder's connected socket first said ECONNREFUSED, then ENOTCONN, and the
    forwarder exited, losing the rest of the job's output and its end-of-file record."""
    flag = tmp_path / "go-on"
    old = FakeJournal(tmp_path)
    script = f"echo before; while [ ! -e {flag} ]; do sleep 0.01; done; echo after"
    command = [shim, "--journal-socket", old.path, "1a2b3c4d", "--", "/bin/sh", "-c", script]
    with subprocess.Popen(command) as proc:
        try:
            old.wait_for("MESSAGE", b"before")
            old.close()
            os.unlink(old.path)
            new = FakeJournal(tmp_path)
            try:
                flag.touch()
                assert proc.wait(60) == 0
                new.wait_for(logformat.F_EVENT, b"eof")
                output = [logformat.parse_record(e) for e in new.entries]
                assert [r.data for r in output if isinstance(r, OutputRecord)] == [b"after\n"]
            finally:
                new.close()
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["success", "exited", "0"], ExitRecord("success", "exited", 0)),
        (["exit-code", "exited", "3"], ExitRecord("exit-code", "exited", 3)),
        (["signal", "killed", "TERM"], ExitRecord("signal", "killed", 15)),
        (["oom-kill", "killed", "KILL"], ExitRecord("oom-kill", "killed", 9)),
        (["exit-code", "", ""], ExitRecord("exit-code", "", None)),  # the main process never ran
    ],
)
@pytest.mark.parametrize("form", ["environment", "arguments"])
def test_exit_report(shim: str, journal: FakeJournal, args: list[str], expected: ExitRecord, form: str) -> None:
    # sjobd's units pass systemd's values in the environment; units started by an older sjobd, as arguments.
    argv = [shim, "--journal-socket", journal.path, "--report", "1a2b3c4d"]
    env = {"PATH": "/usr/bin:/bin"}
    if form == "arguments":
        argv += args
    else:
        env.update(zip(("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS"), args, strict=True))
    result = subprocess.run(argv, env=env, check=False)
    assert result.returncode == 0
    journal.wait_for(logformat.F_EVENT, b"exit")
    (fields,) = journal.entries
    assert logformat.parse_record(fields) == expected
    assert fields[logformat.F_JOB_ID] == b"1a2b3c4d"


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("0123456789abcdef0123456789abcdef", b"0123456789abcdef0123456789abcdef"),
        ("0123456789ABCDEF0123456789ABCDEF", None),  # systemd's form is lowercase: anything else is not its id
        ("0123456789abcdef", None),
        ("0123456789abcdef0123456789abcdef0", None),
        ("0123456789abcdef0123456789abcdeg", None),
        (None, None),
    ],
)
def test_the_exit_report_names_the_run_systemd_told_it(
    shim: str, journal: FakeJournal, given: str | None, named: bytes | None
) -> None:
    """journald may leave out _SYSTEMD_INVOCATION_ID (seen on bookworm): the report adds $INVOCATION_ID itself."""
    env = {"PATH": "/usr/bin:/bin", "SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "3"}
    if given is not None:
        env["INVOCATION_ID"] = given
    argv = [shim, "--journal-socket", journal.path, "--report", "1a2b3c4d"]
    assert subprocess.run(argv, env=env, check=False).returncode == 0
    journal.wait_for(logformat.F_EVENT, b"exit")
    (fields,) = journal.entries
    assert fields.get(logformat.F_INVOCATION) == named
    record = logformat.parse_record(fields)
    assert isinstance(record, ExitRecord)
    assert record.invocation == (named or b"").decode()


def test_the_exit_report_stays_until_journald_has_taken_what_it_sends_after_its_record(
    shim: str, tmp_path: Path
) -> None:
    """journald reads a sender's /proc entry as it handles each datagram, one at a time, and attributes the entry to
    the sender's unit from it. The report stays until journald has taken a datagram it sends after its record: by
    then the record has been attributed, however slow journald is (seen on trixie: a report gone before journald
    read /proc lost its record's _SYSTEMD_UNIT, and sjobd did not take it). That datagram is a comment line, of
    which journald stores nothing."""
    with raw_journald(tmp_path) as (path, journald), running_report(shim, path) as report:
        journald.settimeout(30)
        assert b"SJOB_RESULT\n" in journald.recv(65536)
        time.sleep(0.5)  # journald busy elsewhere: the record is taken, not yet attributed
        assert report.poll() is None, "the report left before journald took what follows its record"
        last = journald.recv(65536)
        assert last.startswith(b"#")
        assert decode(last) == {}
        assert report.wait(30) == 0


@contextlib.contextmanager
def raw_journald(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bare socket where journald's would be, read by the test itself: what the shim sends, and when."""
    path = str(tmp_path / "journal")
    journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journald.bind(path)
    try:
        yield path, journald
    finally:
        journald.close()


@contextlib.contextmanager
def running_report(shim: str, journal_path: str) -> Iterator[subprocess.Popen[bytes]]:
    """`sjob-shim --report` for a job that exited 3, as systemd runs it (ExecStopPost), killed if the test leaves
    it running."""
    env = {"PATH": "/usr/bin:/bin", "SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "3"}
    report = subprocess.Popen([shim, "--journal-socket", journal_path, "--report", "1a2b3c4d"], env=env)
    try:
        yield report
    finally:
        if report.poll() is None:
            report.kill()
            report.wait()


def signal_mask(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    return 0


def test_the_exit_report_outlives_signals_meant_for_the_job(shim: str, tmp_path: Path) -> None:
    """The report runs in the job's cgroup, so a signal for the job (sjob stop --signal, systemctl kill) may reach
    it: it blocks every signal it can before it writes how the job ended. Here journald is behind (its queue full),
    so the report waits in its send while the signals come."""
    with raw_journald(tmp_path) as (path, journald), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                filler.sendto(b"x", path)
        with running_report(shim, path) as report:
            deadline = time.monotonic() + 30
            while signal_mask(report.pid, "SigBlk") == 0:
                assert report.poll() is None, "the report ended before journald took its entry"
                assert time.monotonic() < deadline, "the report never blocked signals"
                time.sleep(0.01)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE):
                report.send_signal(sig)
            pending = signal_mask(report.pid, "ShdPnd") | signal_mask(report.pid, "SigPnd")
            assert pending & (1 << (signal.SIGTERM - 1)), "the signals were not held"
            journald.settimeout(30)
            while b"SJOB_RESULT\n" not in journald.recv(65536):  # journald catches up: the exit entry comes
                pass
            assert journald.recv(65536).startswith(b"#")  # and what the report sends after it (see the test above)
            assert report.wait(30) == 0


def test_the_forwarder_announces_itself_before_the_command_runs(shim: str, journal: FakeJournal) -> None:
    """Only entries from the start record's _PID count as output (logformat.RecordFilter); the command itself,
    which can write to journald too, forges an output record with a huge SJOB_SEQ and a second start."""
    forge = (
        "import socket, sys\n"
        "def field(k, v): return k.encode() + b'\\n' + len(v).to_bytes(8, 'little') + v + b'\\n'\n"
        "for event in (b'start', None):\n"
        "    e = field('SJOB_JOB_ID', b'5a5a5a5a') + (field('SJOB_EVENT', event) if event else\n"
        "        field('MESSAGE', b'forged') + field('SJOB_STREAM', b'stdout') + field('SJOB_SEQ', b'999999'))\n"
        "    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(e, sys.argv[1])\n"
        "print('real', flush=True)\n"
    )
    journal.entries.clear()
    command = [shim, "--journal-socket", journal.path, "5a5a5a5a", "--", sys.executable, "-c", forge, journal.path]
    assert subprocess.run(command, timeout=60, check=False).returncode == 0
    journal.wait_for(logformat.F_EVENT, b"eof")
    entries = [e for e in journal.entries if e.get(logformat.F_JOB_ID) == b"5a5a5a5a"]  # not a lingering test's
    assert entries[0][logformat.F_EVENT] == b"start"
    unit = "sjob-5a5a5a5a.service"
    trusted = logformat.RecordFilter(unit, os.getuid())
    admitted = []
    for fields in entries:
        record = logformat.parse_record(fields)
        assert record is not None
        if trusted.admits({**fields, "_SYSTEMD_UNIT": unit.encode()}, record):  # all of it is "in the unit" here
            admitted.append(record)
    # print() may reach the pipe in more than one write: compare the stream, not the records.
    kinds = [type(r).__name__ for r in admitted]
    assert (kinds[0], kinds[-1], set(kinds[1:-1])) == ("StartRecord", "EofRecord", {"OutputRecord"}), admitted
    assert b"".join(r.data for r in admitted if isinstance(r, OutputRecord)) == b"real\n"


def quota_run(shim: str, journal: FakeJournal, quota: str, script: str) -> tuple[int, float, list[dict[str, bytes]]]:
    journal.entries.clear()
    started = time.monotonic()
    command = [shim, "--journal-socket", journal.path, f"--output-max={quota}", "1a2b3c4d", "--", "/bin/sh", "-c"]
    status = subprocess.run([*command, script], timeout=60, check=False).returncode
    took = time.monotonic() - started
    journal.wait_for(logformat.F_EVENT, b"eof")
    return status, took, list(journal.entries)


def streams_of(entries: list[dict[str, bytes]]) -> dict[str, bytes]:
    streams = {"stdout": b"", "stderr": b""}
    for fields in entries:
        if isinstance(record := logformat.parse_record(fields), OutputRecord):
            streams[record.stream] += record.data
    return streams


def test_output_beyond_the_quota_is_dropped_and_counted(shim: str, journal: FakeJournal) -> None:
    status, _, entries = quota_run(shim, journal, "1000:drop", "head -c 5000 /dev/zero; echo done >&2")
    assert status == 0  # dropping does not stop the job
    streams = streams_of(entries)
    assert streams["stdout"] == b"\0" * 1000
    assert b"reached its quota of 1000 bytes; the rest of its output is dropped" in streams["stderr"]
    assert b"done" not in streams["stderr"]
    quotas = [logformat.parse_record(e) for e in entries if e.get(logformat.F_EVENT) == b"quota"]
    assert quotas == [logformat.QuotaRecord(1000, "drop")]
    (eof,) = [e for e in entries if e.get(logformat.F_EVENT) == b"eof"]
    assert eof["SJOB_DROPPED"] == b"4005"  # the rest of stdout and "done\n"


def test_output_beyond_the_quota_stops_the_job(shim: str, journal: FakeJournal) -> None:
    status, took, entries = quota_run(shim, journal, "1000:stop", "head -c 5000 /dev/zero; exec sleep 20")
    assert status == -signal.SIGTERM  # the job's main process, through the pidfd the shim took
    assert took < 15
    streams = streams_of(entries)
    assert streams["stdout"] == b"\0" * 1000
    assert b"the job is stopped" in streams["stderr"]


def test_usage_error(shim: str) -> None:
    result = subprocess.run([shim, "1a2b3c4d", "echo"], capture_output=True, check=False)
    assert result.returncode == 2
    assert b"usage: sjob-shim" in result.stderr


def unconfined(check: str) -> bool:
    """Whether this test process lacks what `check` verifies (it normally does: tests do not run sandboxed)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    devices = [line.split(":")[0].strip() for line in Path("/proc/self/net/dev").read_text().splitlines()[2:]]
    return {
        "no_network": devices != ["lo"],
        "no_new_privileges": status["NoNewPrivs"].strip() == "0",
        "seccomp": status["Seccomp"].strip() != "2",
        "no_capabilities": int(status["CapBnd"], 16) != 0,
        "read_only_system": not os.statvfs("/usr").f_flag & os.ST_RDONLY,
    }[check]


@pytest.mark.parametrize("check", ["no_network", "no_new_privileges", "seccomp", "no_capabilities", "read_only_system"])
def test_a_sandbox_not_in_force_refuses_the_job(shim: str, journal: FakeJournal, tmp_path: Path, check: str) -> None:
    if not unconfined(check):
        pytest.skip(f"this test process already has {check}: the shim cannot be shown to refuse")
    marker = tmp_path / "ran"
    status, streams = run_shim(shim, journal, "touch", str(marker), checks=f"{check}")
    assert status == 125
    assert not marker.exists()
    assert streams["stderr"].startswith(b"sjob: refusing to run the job: its sandbox is not in force: ")


def test_checks_that_hold_let_the_job_run(shim: str, journal: FakeJournal) -> None:
    # setpriv (util-linux) gives the shim no_new_privileges, as NoNewPrivileges=yes would.
    journal.entries.clear()
    command = [shim, "--journal-socket", journal.path, "--check=no_new_privileges", "1a2b3c4d", "--", "true"]
    assert subprocess.run(["setpriv", "--no-new-privs", *command], timeout=60, check=False).returncode == 0


def test_the_cpus_check_compares_the_cpus_the_job_may_use(shim: str, journal: FakeJournal) -> None:
    mine = sorted(os.sched_getaffinity(0))
    assert run_shim(shim, journal, "true", checks="cpus=" + "+".join(str(c) for c in mine))[0] == 0
    if mine == list(range(mine[0], mine[-1] + 1)):
        assert run_shim(shim, journal, "true", checks=f"cpus={mine[0]}-{mine[-1]}")[0] == 0
    other = f"{mine[-1] + 1}"  # a CPU this process may not use: as if the cpuset were not applied
    status, streams = run_shim(shim, journal, "true", checks=f"cpus={other}")
    assert status == 125
    assert b"AllowedCPUs= (the job could run on other CPUs) is not in effect" in streams["stderr"]
    assert run_shim(shim, journal, "true", checks="cpus=0-x")[0] == 125  # malformed: refused, never ignored


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 without Landlock (landlock_create_ruleset with the version flag)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return max(0, int(libc.syscall(444, None, 0, 1)))


@pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock; the VM suite shows it there")
def test_isolated_jobs_cannot_reach_their_owners_other_processes(shim: str, journal: FakeJournal) -> None:
    """The review's HIGH finding of E.3: a job runs as its owner, so through /proc/PID/root of any other process of
    the owner it reached that process's file system past its own sandbox. This test process stands for the owner's
    process outside the unit (the shim runs as the same user); root's CAP_SYS_PTRACE does not help the job either."""
    me = os.getpid()
    script = (
        f"ls /proc/{me}/root/ >/dev/null && echo root; readlink /proc/{me}/cwd >/dev/null && echo cwd;"
        f"readlink /proc/{me}/exe >/dev/null && echo exe; ls /proc/self/root/ >/dev/null && echo self"
    )
    assert run_shim(shim, journal, "/bin/sh", "-c", script)[1]["stdout"] == b"root\ncwd\nexe\nself\n"
    status, streams = run_shim(shim, journal, "/bin/sh", "-c", script, checks="isolate_processes")
    assert status == 0
    assert streams["stdout"] == b"self\n", streams  # its own processes, yes; anything outside its domain, no
    assert b"Permission denied" in streams["stderr"]


@pytest.mark.skipif(landlock_abi() < 6, reason="signal scoping needs Landlock ABI 6 (Linux 6.12)")
def test_isolated_jobs_cannot_signal_processes_outside_them(shim: str, journal: FakeJournal) -> None:
    outside = subprocess.Popen(["sleep", "60"])
    try:
        script = f"kill -0 {outside.pid} && echo reached; sleep 0 & kill -0 $! && echo own"
        status, streams = run_shim(shim, journal, "/bin/sh", "-c", script, checks="isolate_processes")
        assert (status, streams["stdout"]) == (0, b"own\n"), streams
    finally:
        outside.kill()
        outside.wait()


def test_each_record_costs_the_quota_at_least_256_bytes(shim: str, journal: FakeJournal) -> None:
    """A journal entry costs journald a few hundred bytes whatever it holds: without a least cost, a job writing a
    byte at a time put a billion entries into the journal under a 1 GiB quota."""
    script = "i=0; while [ $i -lt 200 ]; do printf x; sleep 0.02; i=$((i+1)); done"
    status, _, entries = quota_run(shim, journal, "2560:drop", script)
    assert status == 0
    records = [r for e in entries if isinstance(r := logformat.parse_record(e), OutputRecord)]
    stdout = [r for r in records if r.stream == "stdout"]
    assert len(stdout) <= 10, stdout  # 10 records of 256 bytes' cost fill 2560 bytes
    assert [logformat.parse_record(e) for e in entries if e.get(logformat.F_EVENT) == b"quota"] == [
        logformat.QuotaRecord(2560, "drop")
    ]


def test_a_job_that_ignores_the_quotas_sigterm_gets_sigkill(shim: str, journal: FakeJournal) -> None:
    """A quota "stop" is first a SIGTERM, which a job may ignore; 10 s later it is a SIGKILL (review of E.4)."""
    script = "trap '' TERM; head -c 5000 /dev/zero; exec 1>&- 2>&-; while :; do sleep 1; done"
    status, took, _ = quota_run(shim, journal, "1000:stop", script)
    assert status == -signal.SIGKILL
    assert 9 < took < 30


def test_relayed_input_reaches_the_job_and_is_counted(shim: str, journal: FakeJournal) -> None:
    """--relay-input (a function's call): the job's stdin passes through the forwarder, which counts it."""
    r, w = os.pipe()
    os.write(w, b"hello")
    os.close(w)
    command = [shim, "--journal-socket", journal.path, "--relay-input", "1a2b3c4d", "--", "wc", "-c"]
    journal.entries.clear()
    assert subprocess.run(command, stdin=r, timeout=60, check=False).returncode == 0
    os.close(r)
    journal.wait_for(logformat.F_EVENT, b"eof")
    assert streams_of(list(journal.entries))["stdout"].strip() == b"5"
    (eof,) = [e for e in journal.entries if e.get(logformat.F_EVENT) == b"eof"]
    assert logformat.parse_record(eof) == logformat.EofRecord(1, 2, 5)


def test_a_job_that_stops_reading_its_relayed_input_does_not_hang(shim: str, journal: FakeJournal) -> None:
    feeder = subprocess.Popen(["sh", "-c", "yes | head -c 50000000"], stdout=subprocess.PIPE)
    command = [shim, "--journal-socket", journal.path, "--relay-input", "1a2b3c4d", "--", "head", "-c", "3"]
    journal.entries.clear()
    started = time.monotonic()
    assert subprocess.run(command, stdin=feeder.stdout, timeout=60, check=False).returncode == 0
    journal.wait_for(logformat.F_EVENT, b"eof")
    assert time.monotonic() - started < 30
    assert feeder.stdout is not None
    feeder.stdout.close()
    feeder.wait()
    assert streams_of(list(journal.entries))["stdout"] == b"y\ny"
