"""One job per policy at a time: among this process's threads and, given a directory, among processes.

`dockvault run` and a `dockvault backup` typed by hand share the lock files of one state directory, so a manual
backup of a policy the service is backing up waits or is refused with the holder's pid and job, never runs
beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import urllib.parse
from pathlib import Path


class PolicyBusy(RuntimeError):
    """Another job of the policy holds its lock; the message names it."""


class Lease:
    def __init__(self, locks: JobLocks, key: str, handle) -> None:
        self._locks = locks
        self._key = key
        self._handle = handle

    def release(self) -> None:
        self._locks._release(self._key, self._handle)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class JobLocks:
    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) / "locks" if directory is not None else None
        self._busy: dict[str, str] = {}
        self._guard = threading.Lock()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / (urllib.parse.quote(key, safe="") + ".lock")

    def holder(self, key: str) -> str | None:
        """Who holds the policy's lock, as far as can be told: the job in this process or another's pid and job."""
        with self._guard:
            if key in self._busy:
                return f"this process ({self._busy[key]})"
        if self.directory is None:
            return None
        try:
            text = self._path(key).read_text().strip()
        except OSError:
            return None
        return f"pid {text}" if text else None

    def try_acquire(self, key: str, what: str) -> Lease | None:
        """The policy's lease, or None at once when another job holds it."""
        with self._guard:
            if key in self._busy:
                return None
            self._busy[key] = what
        handle = None
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                handle = open(self._path(key), "a+")
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                with self._guard:
                    del self._busy[key]
                return None
            except BaseException:
                if handle is not None:
                    handle.close()
                with self._guard:
                    del self._busy[key]
                raise
            # Who holds it, for the messages of the jobs that find it busy. Only a note: on a full state disk the
            # lock (the flock) holds all the same, and the job goes on to fail with "the disk is full" where it
            # writes its state. Unbuffered, so a failed write leaves nothing behind to fail again at release.
            os.ftruncate(handle.fileno(), 0)
            with contextlib.suppress(OSError):
                os.write(handle.fileno(), f"{os.getpid()} {what}".encode())
        return Lease(self, key, handle)

    def acquire(self, key: str, what: str, *, timeout: float) -> Lease:
        """The policy's lease, waiting up to `timeout` seconds; PolicyBusy naming the holder after that."""
        deadline = time.monotonic() + timeout
        while True:
            lease = self.try_acquire(key, what)
            if lease is not None:
                return lease
            if time.monotonic() >= deadline:
                holder = self.holder(key) or "another job"
                raise PolicyBusy(f"policy {key} is busy: {holder} holds its job lock; try again when it has finished"
                                 + (f" (waited {timeout:.0f}s)" if timeout else " or pass --wait SECONDS"))
            time.sleep(0.2)

    def _release(self, key: str, handle) -> None:
        if handle is not None:
            os.ftruncate(handle.fileno(), 0)  # the holder note goes, as it was written: unbuffered
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        with self._guard:
            self._busy.pop(key, None)
