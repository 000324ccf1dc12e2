"""sjobd's Varlink server on a real socket: typed calls, identity by SO_PEERCRED, limits and errors."""

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest

from supervisor import connection, peer
from supervisor import server as server_module
from supervisor.client import Client
from supervisor.connection import MAX_MESSAGE
from supervisor.errors import ErrorCode, SjobError
from supervisor.logformat import ExitRecord, OutputRecord
from supervisor.protocol import FRAME, INTERFACE, Chunk, Job, JobSpec, JobState, Method, Stream, unframe

from .serverthread import ServerThread

NOBODY = 65534


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path lives under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="sjob-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def server(public_dir: Path) -> Iterator[ServerThread]:
    srv = ServerThread(public_dir)
    yield srv
    srv.stop()


def follow_all(client: Client, job_id: str) -> tuple[bytes, bytes, Job]:
    out, err, final = b"", b"", None
    for item in client.follow(job_id):
        if isinstance(item, Chunk):
            if item.stream.value == "stdout":
                out += item.data
            else:
                err += item.data
        elif isinstance(item, Job):
            final = item
    assert final is not None
    return out, err, final


def test_start_follow_status_list(server: ServerThread) -> None:
    with Client(server.socket) as client:
        job = client.start(JobSpec(["/bin/sh", "-c", "printf 'a\\n\\nb'; printf e >&2; exit 4"], "/"))
        assert job.state is JobState.running
        assert job.uid == os.getuid()
        out, err, final = follow_all(client, job.id)
        assert (out, err) == (b"a\n\nb", b"e")
        assert (final.state, final.exit_status) == (JobState.failed, 4)
        assert client.status(job.id).exit_status == 4
        assert [j.id for j in client.list_jobs()] == [job.id]


def test_introspection(server: ServerThread) -> None:
    with Client(server.socket) as client:
        info = client.call("org.varlink.service.GetInfo", {})
        assert INTERFACE in info["interfaces"]
        description = client.call("org.varlink.service.GetInterfaceDescription", {"interface": INTERFACE})[
            "description"
        ]
    for needle in ("interface io.sjob.Jobs", "method Start(", "method Follow(", "error NoSuchJob", "type JobSpec"):
        assert needle in description


@pytest.mark.parametrize(
    ("method", "parameters", "code"),
    [
        (Method.ListTokens, {}, ErrorCode.InvalidArgument),  # a plain method (this server has no signing key)
        (Method.Authenticate, {"token": "x.y.z"}, ErrorCode.PermissionDenied),
        (Method.Status, {"id": "0badc0de"}, ErrorCode.NoSuchJob),  # a coroutine
        (Method.Stop, {"id": "0badc0de", "signal": "NOSUCH"}, ErrorCode.InvalidArgument),
        (Method.Follow, {"id": "0badc0de"}, ErrorCode.NoSuchJob),  # async generators
        (Method.FollowPipe, {"id": "0badc0de"}, ErrorCode.NoSuchJob),
    ],
)
def test_every_kind_of_method_answers_an_sjob_error_by_its_name(
    server: ServerThread, method: Method, parameters: dict[str, object], code: ErrorCode
) -> None:
    streaming = method in (Method.Follow, Method.FollowPipe)
    with Client(server.socket) as client:
        with pytest.raises(SjobError) as e:
            list(client.call_more(method, parameters)) if streaming else client.call(method, parameters)
        assert e.value.code is code
        assert client.list_jobs() == []  # the connection serves on


def test_requests_are_closed(server: ServerThread) -> None:
    with Client(server.socket) as client:
        spec = {"argv": ["/bin/true"], "cwd": "/", "user": "root"}
        with pytest.raises(SjobError) as e:
            client.call(Method.Start, {"spec": spec})
        assert e.value.code is ErrorCode.InvalidArgument
        with pytest.raises(SjobError) as e:
            client.call(Method.Start, {"spec": {"argv": ["/bin/true"], "cwd": "/"}, "uid": 0})
        assert e.value.code is ErrorCode.InvalidArgument
        with pytest.raises(SjobError) as e:
            client.status("../../etc")
        assert e.value.code is ErrorCode.InvalidArgument
    assert server.units.started == []


def test_identity_comes_from_the_kernel(server: ServerThread) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to become another user")
    with Client(server.socket) as client:
        mine = client.start(JobSpec(["/bin/true"], "/"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody and asks for a job, pretending nothing
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with Client(server.socket) as client:
                job = client.start(JobSpec(["/bin/true"], "/"))
                seen = [j.id for j in client.list_jobs()]
                try:
                    client.status(mine.id)
                    other = "visible"
                except SjobError as e:
                    other = e.code.value
            os.write(write, json.dumps({"uid": job.uid, "seen": seen, "id": job.id, "other": other}).encode())
        except BaseException:
            os.write(write, json.dumps({"error": traceback.format_exc()}).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    result = json.loads(os.read(read, 65536))
    assert "error" not in result, result.get("error")
    assert result["uid"] == NOBODY
    assert result["seen"] == [result["id"]]
    assert result["other"] == "NoSuchJob"
    (unit,) = [u for u in server.units.started if u.name == f"sjob-{result['id']}.service"]
    assert (unit.get("User"), unit.get("Group")) == (str(NOBODY), str(NOBODY))


def raw_exchange(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.settimeout(10)
        s.sendall(payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_oversized_and_garbage_requests_are_refused_and_the_server_carries_on(server: ServerThread) -> None:
    reply = raw_exchange(server.socket, b"x" * (MAX_MESSAGE + 10))
    assert b"io.sjob.Jobs.RequestTooLarge" in reply
    reply = raw_exchange(server.socket, b"\xff\xfegarbage\0")
    assert b"io.sjob.Jobs.InvalidArgument" in reply
    reply = raw_exchange(server.socket, b"[1, 2]\0")
    assert b"io.sjob.Jobs.InvalidArgument" in reply
    with Client(server.socket) as client:
        assert client.list_jobs() == []


def test_internal_errors_are_answered_and_logged(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(principal: object) -> list[Job]:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.service, "list_jobs", broken)
    with Client(server.socket) as client, pytest.raises(SjobError) as e:
        client.list_jobs()
    assert e.value.code is ErrorCode.InternalError
    assert "boom" not in e.value.message
    monkeypatch.undo()
    with Client(server.socket) as client:
        assert client.list_jobs() == []


def test_a_follower_that_goes_away_releases_its_reader(public_dir: Path) -> None:
    server = ServerThread(public_dir, run_commands=False)
    try:
        with Client(server.socket) as client:
            job = client.start(JobSpec(["/bin/sleep", "60"], "/"))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(server.socket)
            s.sendall(
                json.dumps({"method": Method.Follow, "parameters": {"id": job.id}, "more": True}).encode() + b"\0"
            )
            deadline = time.monotonic() + 5
            while server.call(lambda: server.log.open_readers) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.call(lambda: server.log.open_readers) == 1
        deadline = time.monotonic() + 5
        while server.call(lambda: server.log.open_readers) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.call(lambda: server.log.open_readers) == 0
    finally:
        server.stop()


def test_a_pipe_follower_that_closes_its_pipe_gets_a_last_reply_and_releases_its_reader(
    public_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ServerThread(public_dir, run_commands=False)
    try:
        with Client(server.socket) as client:
            job = client.start(JobSpec(["/bin/sleep", "60"], "/"))
        server.call(lambda: server.log.add(job.id, OutputRecord(1, "stdout", b"first\n")))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(server.socket)
            call = {"method": Method.FollowPipe, "parameters": {"id": job.id}, "more": True}
            s.sendall(json.dumps(call).encode() + b"\0")
            data, fds, _, _ = socket.recv_fds(s, 65536, 4)
            assert json.loads(data.rstrip(b"\0")) == {"parameters": {"pipe": 0}, "continues": True}
            (pipe,) = fds
            with os.fdopen(pipe, "rb") as f:
                assert unframe(f.read(FRAME.size + 6), 0) == (Chunk(Stream.stdout, b"first\n", ANY, 1), FRAME.size + 6)
            for seq in range(2, 5):  # the server finds the pipe closed when it writes again
                server.call(lambda seq=seq: server.log.add(job.id, OutputRecord(seq, "stdout", b"more\n")))
            assert read_reply(s) == {}  # the last reply, with no job: the call is over
        deadline = time.monotonic() + 5
        while server.call(lambda: server.log.open_readers) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.call(lambda: server.log.open_readers) == 0
        assert "internal error" not in caplog.text
    finally:
        server.stop()


def test_more_output_than_the_pipe_holds_arrives_whole_and_in_order(public_dir: Path) -> None:
    server = ServerThread(public_dir, run_commands=False)
    try:
        with Client(server.socket) as client:
            job = client.start(JobSpec(["/bin/true"], "/"))
        pieces = [(("stdout", "stderr")[i % 2], os.urandom(65536)) for i in range(96)]  # 6 MiB: the pipe holds 1

        def write() -> None:
            for seq, (stream, data) in enumerate(pieces, 1):
                server.log.add(job.id, OutputRecord(seq, stream, data))
            server.log.add(job.id, ExitRecord("success", "exited", 0))

        server.call(write)
        with Client(server.socket) as client:
            items = list(client.follow(job.id))
        chunks = [i for i in items if isinstance(i, Chunk)]
        assert [(c.stream.value, c.data) for c in chunks] == pieces
        assert [c.seq for c in chunks] == list(range(1, 97))
        assert isinstance(items[-1], Job)
        assert items[-1].state is JobState.exited
    finally:
        server.stop()


def read_reply(sock: socket.socket) -> dict[str, object]:
    data = b""
    while not data.endswith(b"\0"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    reply = json.loads(data.rstrip(b"\0"))
    assert isinstance(reply, dict)
    return reply


def test_connections_are_capped_per_user_and_others_carry_on(server: ServerThread) -> None:
    held = []
    try:
        for _ in range(server_module.MAX_CONNECTIONS_PER_USER):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(server.socket)
            held.append(sock)
        with Client(server.socket) as client, pytest.raises(SjobError) as e:
            client.list_jobs()
        assert e.value.code is ErrorCode.TooManyConnections
        assert "connections to sjobd, the most allowed" in e.value.message
        assert (server.audit.entries[-1].action, server.audit.entries[-1].allowed) == ("connect", False)
        held.pop().close()
        time.sleep(0.2)
        with Client(server.socket) as client:
            assert client.list_jobs() == []
    finally:
        for sock in held:
            sock.close()


def test_a_request_that_trickles_in_is_cut_off(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "REQUEST_TIMEOUT", 0.5)
    with socket.socket(socket.AF_UNIX) as slow:
        slow.connect(server.socket)
        started = time.monotonic()
        for byte in b'{"method": "io.sjob.Jobs.List"':
            try:
                slow.send(bytes([byte]))
            except BrokenPipeError:  # cut off: what we want
                break
            time.sleep(0.05)
        assert time.monotonic() - started < 1.4
        reply = read_reply(slow)
        assert reply["error"] == f"{INTERFACE}.RequestTimeout"
        assert slow.recv(10) == b""  # and closed
    with Client(server.socket) as client:  # the server carries on
        assert client.list_jobs() == []


def test_supplementary_groups_come_from_the_kernel(public_dir: Path) -> None:
    # SO_PEERGROUPS through Python's getsockopt (whose buffer is capped at 1024 bytes): a peer's supplementary
    # groups are what admin rules by group match on.
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(public_dir / "peer.sock"))
        listener.listen()
        code = (
            f"import os, socket, time; os.setgroups([0, {NOBODY}]); c = socket.socket(socket.AF_UNIX); "
            f"c.connect({str(public_dir / 'peer.sock')!r}); time.sleep(1)"
        )
        child = subprocess.Popen([sys.executable, "-c", code])
        conn, _ = listener.accept()
        with conn:
            principal = peer.identify(conn).principal
        child.wait()
    assert grp.getgrgid(NOBODY).gr_name in principal.groups


@pytest.mark.parametrize(
    "cgroup",
    ["0::/sjob.slice/sjob-1a2b3c4d.service\n", "0::/sjob.slice/sjob-u1000.slice/sjob-1a2b3c4d.service\n"],
)
def test_requests_from_inside_a_job_are_refused_and_audited(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, cgroup: str
) -> None:
    monkeypatch.setattr(peer, "read_cgroup", lambda pid: cgroup)
    with Client(server.socket) as client, pytest.raises(SjobError) as e:
        client.list_jobs()
    assert e.value.code is ErrorCode.PermissionDenied
    assert e.value.message == "requests from inside an sjob job are refused"
    assert e.value.hint
    last = server.audit.entries[-1]
    assert (last.action, last.allowed, last.reason) == ("connect", False, e.value.message)


def test_a_caller_whose_cgroup_cannot_be_read_is_refused(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(pid: int) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(peer, "read_cgroup", unreadable)
    with Client(server.socket) as client, pytest.raises(SjobError) as e:
        client.list_jobs()
    assert e.value.code is ErrorCode.PermissionDenied
    assert "could not be read" in e.value.message


def test_a_uid_without_passwd_entry_is_refused(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(uid: int) -> object:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", missing)
    with Client(server.socket) as client, pytest.raises(SjobError) as e:
        client.list_jobs()
    assert e.value.code is ErrorCode.PermissionDenied
    assert "has no passwd entry" in e.value.message
    assert (server.audit.entries[-1].action, server.audit.entries[-1].allowed) == ("connect", False)


def test_a_caller_outside_sjob_slice_is_served(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer, "read_cgroup", lambda pid: "0::/user.slice/user-1000.slice/session-1.scope\n")
    with Client(server.socket) as client:
        assert client.list_jobs() == []
