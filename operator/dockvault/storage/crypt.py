"""Streaming age encryption of artifacts: `EncryptingWriter` on the push-style backup path, `decrypted` on the pull-style restore path.

pyrage streams only through `encrypt_io(reader, writer)` and `decrypt_io(reader, writer)`: one call that pulls its
input and pushes its output until the stream ends. Neither backup (we push chunks) nor restore (we pull chunks) has
that shape, so the call runs on a worker thread that exchanges bytes with the caller through two queues of about
1 MiB each: memory stays flat for terabyte artifacts, and the caller's own streams (`out`, `chunks`) are touched only
on the caller's thread, so their errors surface where they happen. The worker cannot outlive its caller: a failed,
abandoned or garbage-collected stream aborts it, and its errors are re-raised on the caller's thread. pyrage holds the
GIL while it encrypts, so the thread buys shape, not parallelism.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import pyrage

SUFFIX = ".age"
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
RECIPIENT_PREFIX = "age1"
QUEUE_BYTES = 1 << 20

NO_IDENTITY = "the artifact is encrypted with age; give the identity (spec.encryption.age.identityFrom)"


class DecryptionFailed(RuntimeError):
    """The artifact cannot be decrypted: no identity, none that matches, or ciphertext that fails authentication."""


class _Aborted(Exception):
    """Raised inside the worker's pyrage call to unwind it when the caller gives up."""


class _Pump:
    """One pyrage `*_io` call on a worker thread, fed and drained by the caller through two bounded queues.

    The worker calls `read` and `write` (the file-like methods pyrage needs); the caller calls `push`, `finish` and
    `abort`. Each caller method yields the output that arrives while it waits, so neither side can block the other.
    """

    def __init__(self, call: Callable[[_Pump, _Pump], None], *, name: str) -> None:
        self._cond = threading.Condition()
        self._inbox: deque[bytes] = deque()
        self._inbox_bytes = 0
        self._offset = 0  # how much of _inbox[0] the worker has read
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._input_ended = False
        self._aborted = False
        self._finished = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)
        self._thread.start()

    # --- worker side ---

    def _run(self, call: Callable[[_Pump, _Pump], None]) -> None:
        try:
            call(self, self)
        except BaseException as error:
            self._error = error
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not (self._inbox or self._input_ended or self._aborted):
                self._cond.wait()
            if self._aborted:
                raise _Aborted
            if not self._inbox:
                return b""
            head, start = self._inbox[0], self._offset
            end = len(head) if size < 0 else min(len(head), start + size)
            if end == len(head):
                self._inbox.popleft()
                self._offset = 0
            else:
                self._offset = end
            self._inbox_bytes -= end - start
            self._cond.notify_all()
        # pyrage copies the answer into a buffer of `size` bytes: never return more than that.
        return head if start == 0 and end == len(head) else head[start:end]

    def write(self, data: bytes) -> int:
        with self._cond:
            while self._outbox_bytes >= QUEUE_BYTES and not self._aborted:
                self._cond.wait()
            if self._aborted:
                raise _Aborted
            self._outbox.append(data)
            self._outbox_bytes += len(data)
            self._cond.notify_all()
        return len(data)

    # --- caller side ---

    def _take_output(self) -> bytes:
        """Empty the outbox; call with the lock held, and raise the worker's error if it failed."""
        if self._finished and self._error is not None:
            raise self._error
        output = b"".join(self._outbox)
        self._outbox.clear()
        self._outbox_bytes = 0
        self._cond.notify_all()
        return output

    def push(self, data: bytes) -> Iterator[bytes]:
        """Queue `data` once the inbox is below QUEUE_BYTES, yielding what the worker produces meanwhile."""
        if not data:
            return  # an empty read means end of input to pyrage: never queue one
        data = bytes(data)
        while True:
            with self._cond:
                while not (self._inbox_bytes < QUEUE_BYTES or self._outbox or self._finished):
                    self._cond.wait()
                output = self._take_output()
                if self._finished:
                    raise RuntimeError(f"{self._thread.name} stopped before the end of its input")
                queued = self._inbox_bytes < QUEUE_BYTES
                if queued:
                    self._inbox.append(data)
                    self._inbox_bytes += len(data)
            if output:
                yield output
            if queued:
                return

    def finish(self) -> Iterator[bytes]:
        """End the input and yield the rest of the output; raise the worker's error, if any."""
        with self._cond:
            self._input_ended = True
            self._cond.notify_all()
        finished = False
        while not finished:
            with self._cond:
                while not (self._outbox or self._finished):
                    self._cond.wait()
                output = self._take_output()
                finished = self._finished
            if output:
                yield output
        self._thread.join()

    def abort(self) -> None:
        """Unwind the worker at its next read or write and wait for it; harmless once it finished."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()


# --- keys --------------------------------------------------------------------------------------------------------------


def _recipient(index: int, text: str) -> pyrage.x25519.Recipient:
    value = text.strip()
    try:
        return pyrage.x25519.Recipient.from_str(value)
    except pyrage.RecipientError as error:
        if value.upper().startswith(IDENTITY_PREFIX[:-1]):
            reason = "is an age identity, which is secret: give its public key (age1..., `age-keygen -y`) instead"
        elif value.lower().startswith(RECIPIENT_PREFIX):
            reason = f"{value!r} is not a valid age X25519 recipient ({error})"
        else:
            # Shown only when it looks like a public key: a misplaced passphrase or private key must not be logged.
            reason = f"is not an age X25519 recipient (a public key, {RECIPIENT_PREFIX}..., from `age-keygen -y`)"
        raise ValueError(f"recipients[{index}] {reason}") from None


def parse_identities(text: str) -> list[str]:
    """The AGE-SECRET-KEY-1 lines of an identity file as `age-keygen` writes it, skipping `#` comments and blank lines."""
    identities = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.upper().startswith(IDENTITY_PREFIX):
            raise ValueError(f"line {number} of the identity text is not an age X25519 identity "
                             f"({IDENTITY_PREFIX}..., one per line, as `age-keygen` writes)")
        try:
            pyrage.x25519.Identity.from_str(line)
        except pyrage.IdentityError:
            raise ValueError(f"line {number} of the identity text is a damaged age identity "
                             f"(its {IDENTITY_PREFIX} encoding does not check out)") from None
        identities.append(line)
    return identities


def recipient_of(identity: str) -> str:
    """The public key (age1...) that encrypts to `identity`: safe to show where the identity is not."""
    try:
        return str(pyrage.x25519.Identity.from_str(identity.strip()).to_public())
    except pyrage.IdentityError:
        raise ValueError(f"not an age X25519 identity ({IDENTITY_PREFIX}...)") from None


def _identities(identities: list[str]) -> list[pyrage.x25519.Identity]:
    keys = []
    for index, text in enumerate(identities):
        try:
            keys += [pyrage.x25519.Identity.from_str(line) for line in parse_identities(text)]
        except ValueError as error:
            raise ValueError(f"identities[{index}]: {error}") from None
    if not keys:
        raise DecryptionFailed(NO_IDENTITY)
    return keys


# --- streams -----------------------------------------------------------------------------------------------------------


class EncryptingWriter:
    """Encrypt chunks into `out` as one binary age file for `recipients`; `close` ends the file but not `out`."""

    def __init__(self, out: BinaryIO, recipients: list[str]) -> None:
        if not recipients:
            raise ValueError("no age recipients given: nobody could decrypt the backup")
        keys = [_recipient(index, text) for index, text in enumerate(recipients)]
        self._out = out
        self._closed = False
        pump = _Pump(lambda reader, writer: pyrage.encrypt_io(reader, writer, keys), name="age-encrypt")
        self._pump = pump
        # Whoever drops the writer without closing it stops the worker: the finalizer holds the pump, not the writer.
        self._stop = weakref.finalize(self, pump.abort)

    def _pass_on(self, outputs: Iterator[bytes]) -> None:
        try:
            for output in outputs:
                self._out.write(output)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("write to a closed or aborted EncryptingWriter")
        self._pass_on(self._pump.push(data))

    def close(self) -> None:
        if not self._closed:
            self._pass_on(self._pump.finish())
            self._closed = True
            self._stop()  # the worker has ended: this only retires the finalizer

    def abort(self) -> None:
        """Stop without finishing the age file: what `out` holds then cannot be decrypted."""
        self._closed = True
        self._stop()


def _decrypt_io(reader: _Pump, writer: _Pump, keys: list[pyrage.x25519.Identity]) -> None:
    try:
        pyrage.decrypt_io(reader, writer, keys)
    except (pyrage.DecryptError, OSError) as error:
        # age reports a failed payload chunk (truncation, a flipped bit, trailing bytes) as an I/O error.
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        if detail == "No matching keys found":
            recipients = ", ".join(str(key.to_public()) for key in keys)
            # A damaged recipient stanza fails to unwrap just like a wrong key, so age cannot tell the two apart.
            raise DecryptionFailed(
                f"no matching identity: the artifact is encrypted to other age recipients than the identities given "
                f"(they are for {recipients}), or its header is damaged; give the identity of one of its recipients "
                f"(spec.encryption.age.identityFrom)"
            ) from None
        raise DecryptionFailed(f"the encrypted artifact is truncated or corrupt (age: {detail})") from None


def decrypted(chunks: Iterable[bytes], identities: list[str]) -> Iterator[bytes]:
    """Decrypt an age stream with any of `identities` (keys or whole identity files); bad identities fail at the call.

    Plaintext is yielded as it is authenticated; a stream that fails later raises DecryptionFailed at that point.
    """
    keys = _identities(identities)
    return _decrypting(chunks, keys)


def _decrypting(chunks: Iterable[bytes], keys: list[pyrage.x25519.Identity]) -> Iterator[bytes]:
    pump = _Pump(lambda reader, writer: _decrypt_io(reader, writer, keys), name="age-decrypt")
    try:
        for chunk in chunks:
            yield from pump.push(chunk)
        yield from pump.finish()
    finally:
        pump.abort()
