"""The interface every data source implements, and the publishing step they all share."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO, Protocol

from ..api.backup import Artifact
from ..api.policy import BackupTarget, CompressionSpec, DrillCheck
from ..api.restore import RestoreTarget
from ..engine.core import Engine, job_labels
from ..engine.quiesce import Journal
from ..storage.base import BackupWriter
from ..storage.codec import SUFFIXES, CompressingWriter
from ..storage.crypt import SUFFIX as AGE_SUFFIX

Progress = Callable[[int], None]
_AS_IS = CompressionSpec(algorithm="none")


class SourceError(RuntimeError):
    """A target could not be backed up or restored; the message is meant for the user.

    `temporary` when the same job will likely work soon (a container restarting), so the runner retries it.
    """

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class Cancelled(SourceError):
    """dockvault is shutting down; the job stops at the next chunk and cleans up after itself."""


class RestoreRefused(SourceError):
    """The restore would touch data the request did not allow it to touch."""


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled: dockvault is shutting down")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Increment:
    """A chained volume backup (GNU tar's listed-incremental): its level and, unless it is a full, the base's
    snapshot file per volume target (size, content), from which tar finds what changed."""

    level: str
    snapshots: Mapping[str, tuple[int, BinaryIO]] = field(default_factory=dict)


@dataclass
class BackupContext:
    policy: str
    backup_id: str
    job_id: str
    engine: Engine
    writer: BackupWriter
    compression: CompressionSpec
    progress: Progress | None = None
    cancel: threading.Event | None = None
    journal: Journal | None = None
    record_tables: bool = False  # rows per table, for restore drills (costs a count of every table)
    recipients: list[str] | None = None  # age public keys: artifacts are encrypted to them after compression
    increment: Increment | None = None  # None: plain full archives, no snapshot files (a policy without levels)

    def labels(self, target: str) -> dict[str, str]:
        return job_labels(policy=self.policy, target=target, job=self.job_id)

    def publish(
        self,
        *,
        target: str,
        source: str,
        base_name: str,
        chunks: Iterable[bytes],
        details: dict[str, str],
        compression: CompressionSpec | None = None,
        raw_size: Callable[[], int] | None = None,
    ) -> Artifact:
        """Compress `chunks` into an artifact and publish it atomically once the stream ended cleanly.

        `compression` overrides the policy's for streams that arrive compressed (pg_dump -Fc). With `raw_size`,
        the chunks arrive compressed as `compression` already (a helper compressed them near the data): they are
        stored as they are, and `raw_size()` gives their uncompressed size once they have all passed.
        """
        started = _now()
        compression = compression or self.compression
        name = base_name + SUFFIXES[compression.algorithm] + (AGE_SUFFIX if self.recipients else "")
        with contextlib.closing(iter(chunks)) as stream, self.writer.artifact(name) as out:
            sink = CompressingWriter(out, compression if raw_size is None else _AS_IS, self.recipients)
            try:
                for chunk in stream:
                    check_cancel(self.cancel)
                    sink.write(chunk)
                    if self.progress:
                        self.progress(len(chunk))
                sink.close()
            except BaseException:
                sink.abort()
                raise
        return Artifact(
            target=target,
            source=source,
            file=name,
            bytes=sink.bytes,
            raw_bytes=sink.raw_bytes if raw_size is None else raw_size(),
            sha256=sink.sha256,
            compression=compression.algorithm,
            level=compression.effective_level,
            encryption="age" if self.recipients else None,
            recipients=list(self.recipients) if self.recipients else None,
            started_at=started,
            completed_at=_now(),
            details=details,
        )


@dataclass
class RestoreContext:
    policy: str
    request: str
    job_id: str
    engine: Engine
    notes: list[str] = field(default_factory=list)
    cancel: threading.Event | None = None

    def stream(self, opener: Opener) -> Iterator[bytes]:
        for chunk in opener():
            check_cancel(self.cancel)
            yield chunk

    def labels(self, target: str) -> dict[str, str]:
        return job_labels(policy=self.policy, target=target, job=self.job_id)


Opener = Callable[[], Iterator[bytes]]
"""Opens an artifact's decompressed stream; raises at its end if the bytes do not match the manifest."""


class Source(Protocol):
    """One kind of data (volume, postgres, ...): how to back a target up and how to put it back.

    `staged` (optional, default False): restore writes into a staging area and commits only after the streams
    ended without error, so a checksum mismatch found at a stream's end still leaves the target untouched.
    """

    kind: str

    def backup(self, target: BackupTarget, ctx: BackupContext) -> list[Artifact]: ...

    def artifacts_for(self, artifacts: list[Artifact], destination: RestoreTarget) -> list[Artifact]:
        """Which of a target's artifacts this destination needs, in restore order (checksummed before any write)."""

    def restore(self, destination: RestoreTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext) -> None: ...

    def drill(self, target: BackupTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext,
              checks: list[DrillCheck]) -> None:
        """Restore into throwaway resources, prove the data is complete, always clean up; SourceError if not."""
