"""Quiesce the containers that use a volume while it is archived, and always bring back exactly those."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

from .docker import ContainerRef, Engine, EngineError

log = logging.getLogger(__name__)

Mode = Literal["none", "pause", "stop"]


@contextlib.contextmanager
def quiesced(engine: Engine, volume: str, mode: Mode) -> Iterator[list[ContainerRef]]:
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
            halt(ref)
            halted.append(ref)
        yield list(halted)
    finally:
        failures = []
        for ref in reversed(halted):
            try:
                resume(ref)
                log.info("quiesce: resumed container %s", ref.name)
            except Exception as exc:  # keep resuming the others; report all at the end
                failures.append(f"{ref.name}: {exc}")
        if failures:
            raise EngineError("could not resume containers after backup: " + "; ".join(failures))
