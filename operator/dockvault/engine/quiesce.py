"""Quiesce the containers that use a volume while it is archived, and always bring back exactly those."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
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


def resume_journaled(engine: Engine, entries: list[tuple[ContainerRef, str]], journal: Journal) -> list[str]:
    """Resume containers a killed dockvault left halted (newest first); returns what was resumed."""
    resumed = []
    for ref, mode in reversed(entries):
        try:
            (engine.unpause if mode == "pause" else engine.start)(ref)
            resumed.append(ref.name)
        except Exception as exc:  # gone or already running: nothing left to undo
            log.warning("quiesce: could not resume %s after restart: %s", ref.name, exc)
        journal.resumed(ref)
    return resumed
