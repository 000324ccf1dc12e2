"""Copying a job's output to the terminal, stream for stream, byte for byte (used by run and logs)."""

import json
import signal
import sys
from collections.abc import Iterable

from supervisor.errors import ErrorCode, SjobError
from supervisor.protocol import AttemptStart, Chunk, Job, Stream

TYPE_CHECKING = False  # not typing's: importing typing costs every sjob call start-up time
if TYPE_CHECKING:
    from typing import BinaryIO


class OutputCopier:
    """Writes each piece of output to our own stdout or stderr as it arrives, and remembers where it got to.
    Where a retried job's next attempt begins, `--json` has a line of its own ({"attempt": N, ...}); plain output
    stays the job's bytes, with a note on stderr only when that is a terminal."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.last_seq = 0
        self._sinks: dict[Stream, BinaryIO] = {Stream.stdout: sys.stdout.buffer, Stream.stderr: sys.stderr.buffer}

    def copy(self, batches: Iterable[list[Chunk | AttemptStart] | Job]) -> Job:
        """Copy until the batches of output end (Client.follow_batches); return the job they ended with."""
        job = None
        for batch in batches:
            if isinstance(batch, Job):
                job = batch
                continue
            # Ctrl-C must not fall between printing a piece and remembering that it was printed: after a Ctrl-C,
            # `sjob run` prints the rest from last_seq on, and would print it twice. A batch is what one read
            # brought: it is written whole, one write per run of pieces of the same stream, then flushed.
            # The mask as it is, then SIGINT blocked inside the try: pthread_sigmask runs pending handlers, so a
            # KeyboardInterrupt from the call that blocks would leave SIGINT blocked for good.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, ())
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                self._write_batch(batch)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if job is None:
            raise SjobError(ErrorCode.ProtocolError, "sjobd ended the output without saying how the job stands")
        return job

    def _write_batch(self, batch: list[Chunk | AttemptStart]) -> None:
        run: list[bytes] = []
        stream: Stream | None = None
        for item in batch:
            if isinstance(item, AttemptStart) or self.as_json or item.stream is not stream:
                self._write_run(stream, run)
                run, stream = [], None
            if isinstance(item, AttemptStart):
                self._attempt(item)
                continue
            self.last_seq = max(self.last_seq, item.seq)
            if self.as_json:
                line = json.dumps(json_entry(item), ensure_ascii=False) + "\n"
                sys.stdout.buffer.write(line.encode())
            else:
                run.append(item.data)
                stream = item.stream
        self._write_run(stream, run)
        if self.as_json:
            sys.stdout.buffer.flush()

    def _write_run(self, stream: Stream | None, run: list[bytes]) -> None:
        if stream is None or not run:
            return
        sink = self._sinks[stream]
        for data in run:  # a piece larger than the sink's buffer goes straight out, without being copied
            sink.write(data)
        sink.flush()

    def _attempt(self, item: AttemptStart) -> None:
        if self.as_json:
            line = json.dumps({"attempt": item.attempt, "timestamp": _stamp(item.usec), "usec": item.usec}) + "\n"
            sys.stdout.buffer.write(line.encode())
            sys.stdout.buffer.flush()
        elif sys.stderr.isatty():
            sys.stderr.write(f"sjob: attempt {item.attempt}\n")
            sys.stderr.flush()


def json_entry(item: Chunk) -> dict[str, object]:
    """One record as JSON: text where the bytes are UTF-8, base64 where they are not (like journalctl's arrays)."""
    entry: dict[str, object] = {
        "timestamp": _stamp(item.usec),
        "usec": item.usec,
        "seq": item.seq,
        "stream": item.stream.value,
    }
    data = item.data
    try:
        entry["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        import base64  # noqa: PLC0415 - only JSON output of bytes that are not UTF-8 needs it

        entry["base64"] = base64.b64encode(data).decode("ascii")
    return entry


def _stamp(usec: int) -> str:
    import datetime  # noqa: PLC0415 - only JSON output needs it; importing it costs every `sjob run` start-up time

    return datetime.datetime.fromtimestamp(usec / 1e6, tz=datetime.UTC).isoformat(timespec="microseconds")
