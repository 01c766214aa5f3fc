"""Processes run with `docker exec` inside a user's container: stdout streamed, stdin fed, stderr kept for messages.

The hijacked connection is read in large chunks and demultiplexed here; docker-py's frame iterator
reads frame by frame and costs a third of the throughput.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker

RECV = 1 << 20
STDERR_KEEP = 16 * 1024
_HEADER = struct.Struct(">BxxxL")


class InputCut(BrokenPipeError):
    """The process exited before it read all of its input."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: str


class ExecProcess:
    def __init__(
        self,
        client: docker.DockerClient,
        container: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        stdin: bool = False,
    ) -> None:
        self._api = client.api
        created = self._api.exec_create(container, argv, stdout=True, stderr=True, stdin=stdin,
                                        environment=dict(env or {}), user=user or "")
        self.exec_id = created["Id"]
        self._conn = self._api.exec_start(self.exec_id, socket=True)
        self._sock: socket.socket = getattr(self._conn, "_sock", self._conn)
        self._stderr = bytearray()
        self._out: Iterator[bytes] | None = None
        self._unread = bytearray()
        self._tls = isinstance(self._sock, ssl.SSLSocket)
        self._tls_lock = threading.Lock()  # a TLS read and the close_notify must never run at once
        self.input_cut = False  # feed(): the process exited before it read all of its input
        self._exited = threading.Event()  # drain_output() saw its output end

    def _recv(self, buffer: bytearray) -> int:
        if not self._tls:
            return self._sock.recv_into(buffer)
        # Wait outside the lock (close_stdin may need it meanwhile), then read what arrived under it.
        while not self._sock.pending():
            readable, _, _ = select.select([self._sock], [], [], 0.5)
            if readable:
                break
        with self._tls_lock:
            return self._sock.recv_into(buffer)

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        pending = bytearray()
        buffer = bytearray(RECV)
        received = memoryview(buffer)
        while True:
            n = self._recv(buffer)
            if not n:
                break
            pending += received[:n]
            pos = 0
            frames = []
            with memoryview(pending) as view:
                while len(pending) - pos >= _HEADER.size:
                    kind, size = _HEADER.unpack_from(pending, pos)
                    end = pos + _HEADER.size + size
                    if end > len(pending):
                        break
                    frames.append((kind, bytes(view[pos + _HEADER.size:end])))
                    pos = end
            del pending[:pos]
            yield from frames
        if pending:
            raise EOFError("exec stream ended inside a frame")

    def stdout(self) -> Iterator[bytes]:
        """The process's stdout; stderr is kept (its tail) for `result()`."""
        for kind, payload in self._frames():
            if kind == 2:
                self._stderr += payload
                del self._stderr[:-STDERR_KEEP]
            elif kind == 1:
                yield payload

    def send(self, data: bytes) -> None:
        """Write to the process's stdin. Once drain_output() saw the process exit, a send fails at once with
        InputCut (the engine reads no more of a process that stopped reading, and the send would otherwise wait
        for the socket's timeout, 300 s, and hide the process's own exit code and message)."""
        try:
            if self._exited.is_set():
                raise BrokenPipeError("stream closed")
            self._sock.sendall(data)
        except OSError as exc:
            if not self._exited.is_set():
                raise
            raise InputCut("the command exited before it read all of its input") from exc

    def drain_output(self, keep: Callable[[bytes], None] | None = None) -> None:
        """Read the output to its end (on a thread of its own, while another sends), stdout to `keep`, stderr's tail
        for result(). Its end means the process exited: a send still waiting is ended then (see send)."""
        with contextlib.suppress(OSError, EOFError):
            for chunk in self.stdout():
                if keep is not None:
                    keep(chunk)
        self._exited.set()
        # The socket itself is shut down, under its TLS layer: SSLSocket.shutdown would first drop that layer, and
        # a send on another thread could then put plain bytes on the wire.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def close_stdin(self) -> None:
        """End the command's stdin, keep reading its output. Over TLS a TCP half-close would drop the TLS
        layer (SSLSocket.shutdown discards it) and the output after it would arrive as raw records: send a
        close_notify instead, which ends stdin for the engine while TLS reads go on (a TLS half-close)."""
        sock = self._sock
        try:
            if self._tls:
                with self._tls_lock:  # never while a reader thread is inside a TLS read (OpenSSL is not thread-safe)
                    timeout = sock.gettimeout()
                    sock.setblocking(False)
                    try:
                        sock.unwrap()  # sends close_notify; the peer's comes with the end of the output
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                    finally:
                        sock.settimeout(timeout)
            else:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def read_until(self, separator: bytes) -> bytes:
        """Stdout up to and including `separator`, for a conversation with a long-lived client (psql)."""
        if self._out is None:
            self._out = self.stdout()
        while separator not in self._unread:
            chunk = next(self._out, None)
            if chunk is None:
                raise EOFError(f"process ended before writing {separator!r}: {self._stderr.decode('utf-8', 'replace')}")
            self._unread += chunk
        end = self._unread.index(separator) + len(separator)
        line = bytes(self._unread[:end])
        del self._unread[:end]
        return line

    def read_rest(self) -> bytes:
        rest = bytes(self._unread)
        self._unread.clear()
        return rest + b"".join(self._out if self._out is not None else self.stdout())

    def feed(self, chunks: Iterable[bytes], *, limit: int = STDERR_KEEP) -> bytes:
        """Write `chunks` to stdin, then close it; returns what the process wrote to stdout (up to `limit`).

        A process that exits before it read all of its input (pg_restore --exit-on-error at a failing statement)
        ends the feed there, with `input_cut` set."""
        collected = bytearray()

        def keep(chunk: bytes) -> None:
            if len(collected) < limit:
                collected.extend(chunk[: limit - len(collected)])

        reader = threading.Thread(target=self.drain_output, args=(keep,), daemon=True)
        reader.start()
        try:
            for chunk in chunks:
                self.send(chunk)
        except InputCut:
            self.input_cut = True
            reader.join()
            return bytes(collected)
        # Only a complete input reaches end-of-file: when `chunks` raises, stdin stays open, so the caller
        # can kill the process before closing the connection (a client must never commit a cut-short input).
        self.close_stdin()
        reader.join()
        return bytes(collected)

    def result(self, timeout: float = 60.0) -> ExecResult:
        deadline = time.monotonic() + timeout
        while True:
            info = self._api.exec_inspect(self.exec_id)
            if not info.get("Running") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        code = info.get("ExitCode")
        return ExecResult(-1 if code is None else int(code), b"", self._stderr.decode("utf-8", "replace").strip())

    def kill(self) -> bool:
        """SIGKILL the process, so a client never mistakes an aborted input for a complete one.

        Only a local engine allows it, and only a PID whose cgroup names the container is signalled.
        """
        info = self._api.exec_inspect(self.exec_id)
        pid, container = info.get("Pid"), info.get("ContainerID", "")
        if not pid or not container or not info.get("Running"):
            return False
        try:
            if container not in Path(f"/proc/{pid}/cgroup").read_text():
                return False
            os.kill(pid, signal.SIGKILL)
            return True
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            self._sock.close()

    def __enter__(self) -> ExecProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(client: docker.DockerClient, container: str, argv: list[str], *, env: Mapping[str, str] | None = None,
        user: str | None = None, stdin: Iterable[bytes] | None = None, limit: int = 1 << 20) -> ExecResult:
    """Run a short command to completion; stdout is kept up to `limit` bytes."""
    with ExecProcess(client, container, argv, env=env, user=user, stdin=stdin is not None) as proc:
        if stdin is not None:
            out = proc.feed(stdin, limit=limit)
        else:
            kept = bytearray()
            for chunk in proc.stdout():
                if len(kept) < limit:
                    kept += chunk[: limit - len(kept)]
            out = bytes(kept)
        result = proc.result()
    return ExecResult(result.exit_code, out, result.stderr)
