"""Quiesce the containers that use a volume while it is archived, and always bring back exactly those."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from .core import ContainerRef, Engine, EngineError

log = logging.getLogger(__name__)

Mode = Literal["none", "pause", "stop"]


class Journal(Protocol):
    """Durable note of halted containers, so a dockvault killed mid-backup can resume them at start-up."""

    def halted(self, ref: ContainerRef, mode: str) -> None: ...

    def resumed(self, ref: ContainerRef) -> None: ...


@contextlib.contextmanager
def quiesced(engine: Engine, volume: str, mode: Mode, journal: Journal | None = None) -> Iterator[list[ContainerRef]]:
    """Pause or stop the running users of `volume`; resume them in reverse order on the way out.

    Only containers that were running are touched, so a container the user had stopped stays stopped.
    Resuming happens also when the body fails or is interrupted; every container is tried before errors surface.
    """
    if mode == "none":
        yield []
        return
    halt, resume = (engine.pause, engine.unpause) if mode == "pause" else (engine.stop, engine.start)
    halted: list[ContainerRef] = []
    try:
        for ref in engine.containers_using(volume):
            if ref.status != "running":
                continue
            log.info("quiesce: %s container %s (uses volume %s)", mode, ref.name, volume)
            if journal is not None:
                journal.halted(ref, mode)
            halted.append(ref)
            halt(ref)
        yield list(halted)
    finally:
        failures = []
        for ref in reversed(halted):
            try:
                resume(ref)
                log.info("quiesce: resumed container %s", ref.name)
                if journal is not None:
                    journal.resumed(ref)
            except Exception as exc:  # keep resuming the others; report all at the end
                failures.append(f"{ref.name}: {exc}")
        if failures:
            raise EngineError("could not resume containers after backup: " + "; ".join(failures))


@dataclass(frozen=True)
class Halted:
    """A journal entry: `ref` was paused or stopped by a job of `policy` at `at` and not yet seen resumed."""

    ref: ContainerRef
    mode: str
    at: datetime
    policy: str | None = None


PAUSE_SETTLE = 2.0  # seconds a pause request still in flight may take
STOP_MARGIN = 5.0  # seconds beyond the container's own stop timeout


def recover_halted(engine: Engine, entries: list[Halted], journal: Journal, *, now: datetime) -> list[str]:
    """Resume containers a killed dockvault left halted (newest first); returns the names seen running again.

    A stop or pause still in flight is left to settle first: the engine finishes a `docker stop` even when its
    caller was killed, so starting a container that is still stopping would be a no-op and the stop would win.
    An entry is closed only when its container is seen running again, or is gone; otherwise it stays for the
    next start-up, and the error is logged.
    """
    resumed = []
    for entry in reversed(entries):
        ref = entry.ref
        try:
            if entry.mode == "stop":
                grace = engine.stop_timeout(ref) + STOP_MARGIN - (now - entry.at).total_seconds()
                engine.wait_stopped(ref, grace)
            elif engine.state(ref) == "running":
                deadline = time.monotonic() + max(0.0, PAUSE_SETTLE - (now - entry.at).total_seconds())
                while engine.state(ref) == "running" and time.monotonic() < deadline:
                    time.sleep(0.1)
            state = engine.state(ref)
            if state is None:
                log.warning("quiesce: container %s, halted by a stopped dockvault, no longer exists", ref.name)
                journal.resumed(ref)
                continue
            if state == "paused":
                engine.unpause(ref)
            elif state != "running" and entry.mode == "stop":
                engine.start(ref)
            state = engine.state(ref)
            if state != "running":
                raise EngineError(f"still {state} after resuming")
        except Exception as exc:  # noqa: BLE001 - keep the entry; the next start-up tries again
            log.error("quiesce: could not resume container %s, halted by a stopped dockvault: %s; start it by hand "
                      "(`docker %s %s`) if it stays down", ref.name, exc, "unpause" if entry.mode == "pause" else
                      "start", ref.name)
            continue
        journal.resumed(ref)
        resumed.append(ref.name)
    return resumed
