"""A job's stdin (issue F): the caller's pipe, file or socket passed with Start (SCM_RIGHTS) and handed to the unit
as it is; what sjobd refuses to hand a job (terminals, connections to sjobd, directories, write-only ends); the
descriptors' way through a connection (only with Start, at most two, kept while a request arrives in pieces)."""

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.client import Client
from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import INTERFACE, Chunk, Input, Job, JobSpec, JobState, Method, Terminal

from .serverthread import ServerThread
from .test_server import public_dir, server  # noqa: F401 - the real server on a temp socket

CAT = JobSpec(["/bin/cat"], "/")


def output_of(client: Client, job: Job) -> tuple[bytes, Job]:
    out = b""
    final = None
    for item in client.follow(job.id):
        if isinstance(item, Chunk):
            out += item.data
        elif isinstance(item, Job):
            final = item
    assert final is not None
    return out, final


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_a_pipe_reaches_the_job_exactly_and_its_end_is_eof(server: ServerThread, pipe: tuple[int, int]) -> None:  # noqa: F811
    r, w = pipe
    with Client(server.socket) as client:
        job = client.start(CAT, stdin=r)
        os.close(r)  # the job has its own copy; sjobd kept none
        assert job.input is Input.pipe
        os.write(w, b"a\n\nb\r\n\0\xff")
        os.close(w)
        out, final = output_of(client, job)
    assert out == b"a\n\nb\r\n\0\xff"
    assert (final.state, final.exit_status) == (JobState.exited, 0)


def test_a_file_reaches_the_job_exactly(server: ServerThread, tmp_path: Path) -> None:  # noqa: F811
    data = os.urandom(300_000)
    (tmp_path / "input").write_bytes(data)
    fd = os.open(tmp_path / "input", os.O_RDONLY)
    try:
        with Client(server.socket) as client:
            job = client.start(JobSpec(["/bin/sh", "-c", "sha256sum"], "/"), stdin=fd)
            assert job.input is Input.file
            out, _ = output_of(client, job)
    finally:
        os.close(fd)
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_without_stdin_the_job_reads_nothing(server: ServerThread) -> None:  # noqa: F811
    with Client(server.socket) as client:
        job = client.start(JobSpec(["/bin/sh", "-c", "cat; echo end"], "/"))
        assert job.input is None
        assert output_of(client, job)[0] == b"end\n"
        null = os.open("/dev/null", os.O_RDONLY)
        try:
            assert client.start(CAT, stdin=null).input is None
        finally:
            os.close(null)


def refused(server: ServerThread, **fds: int) -> SjobError:  # noqa: F811
    spec = JobSpec(["/bin/true"], "/", terminal=Terminal(24, 80) if "stdout" in fds else None)
    with Client(server.socket) as client, pytest.raises(SjobError) as caught:
        client.start(spec, stdin=fds.get("stdin"), stdout=fds.get("stdout"))
    assert not server.units.started, "a unit was started with a refused descriptor"
    return caught.value


def test_a_terminal_is_never_a_jobs_stdin(server: ServerThread) -> None:  # noqa: F811
    master, slave = os.openpty()
    try:
        error = refused(server, stdin=slave)
    finally:
        os.close(master)
        os.close(slave)
    assert error.code is ErrorCode.InvalidArgument
    assert "is a terminal" in error.message
    assert error.hint is not None
    assert "--pty" in error.hint


def test_what_a_job_may_not_read_is_refused(server: ServerThread, tmp_path: Path, pipe: tuple[int, int]) -> None:  # noqa: F811
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    path_only = os.open(tmp_path, os.O_PATH)
    write_only = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "sock"))
    listening.listen()
    try:
        assert "a directory" in refused(server, stdin=directory).message
        assert "not open for reading" in refused(server, stdin=path_only).message
        assert "not open for reading" in refused(server, stdin=write_only).message
        assert "not open for reading" in refused(server, stdin=pipe[1]).message
        assert "listening socket" in refused(server, stdin=listening.fileno()).message
    finally:
        for fd in (directory, path_only, write_only):
            os.close(fd)
        listening.close()


def test_a_connection_to_sjobd_is_never_a_jobs_stdin(server: ServerThread) -> None:  # noqa: F811
    """Jobs may not talk to sjobd (issue E.3): not even through a connection their caller hands them."""
    with socket.socket(socket.AF_UNIX) as to_sjobd:
        to_sjobd.connect(server.socket)
        error = refused(server, stdin=to_sjobd.fileno())
    assert "connection to sjobd" in error.message


def test_a_terminal_needs_both_pipes_and_only_a_terminal_takes_stdout(
    server: ServerThread,  # noqa: F811
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    with Client(server.socket) as client:
        with pytest.raises(SjobError, match="needs the stdin and stdout pipes"):
            client.start(JobSpec(["/bin/true"], "/", terminal=Terminal(24, 80)), stdin=r)
        with pytest.raises(SjobError, match="only a job with a terminal"):
            client.start(JobSpec(["/bin/true"], "/"), stdin=r, stdout=w)
        with pytest.raises(SjobError, match="must be a pipe open for writing"):
            client.start(JobSpec(["/bin/true"], "/", terminal=Terminal(24, 80)), stdin=r, stdout=r)
    assert not server.units.started


def test_descriptors_go_only_with_start(server: ServerThread, pipe: tuple[int, int]) -> None:  # noqa: F811
    with Client(server.socket) as client, pytest.raises(SjobError) as caught:
        client.call(Method.List, {}, [pipe[0]])
    assert "fds" in caught.value.message


def test_more_than_two_descriptors_close_the_connection(server: ServerThread, pipe: tuple[int, int]) -> None:  # noqa: F811
    request = json.dumps({"method": Method.Start.value, "parameters": {"spec": {"argv": ["/bin/true"], "cwd": "/"}}})
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(server.socket)
        socket.send_fds(sock, [request.encode() + b"\0"], [pipe[0], pipe[0], pipe[0]])
        sock.settimeout(10)
        reply = json.loads(sock.recv(65536).split(b"\0")[0])
        assert reply["error"] == f"{INTERFACE}.InvalidArgument"
        assert "more than 2 file descriptors" in reply["parameters"]["message"]
        assert sock.recv(65536) == b""
    assert not server.units.started


def test_descriptors_sent_with_the_first_piece_of_a_request_are_kept(
    server: ServerThread,  # noqa: F811
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    request = json.dumps(
        {"method": Method.Start.value, "parameters": {"spec": {"argv": ["/bin/cat"], "cwd": "/"}, "stdin": 0}}
    ).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(server.socket)
        socket.send_fds(sock, [request[:20]], [r])
        time.sleep(0.2)  # sjobd reads the first piece, with the descriptor, on its own
        sock.sendall(request[20:] + b"\0")
        sock.settimeout(10)
        reply = json.loads(sock.recv(65536).split(b"\0")[0])
    assert reply["parameters"]["job"]["input"] == "pipe", reply
    os.close(r)
    os.write(w, b"through\n")
    os.close(w)
    with Client(server.socket) as client:
        assert output_of(client, client.status(reply["parameters"]["job"]["id"]))[0] == b"through\n"
