"""Start-up recovery of a container a killed dockvault left halted, against the real engine.

The race it guards: dockvault killed inside `docker stop`'s grace period. The engine keeps stopping the
container, so a recovery that calls `start` on the still-running container (a no-op) and closes the journal
entry would leave the application down for good once the stop completes.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from dockvault.engine.core import ContainerRef
from dockvault.engine.quiesce import Halted, recover_halted

pytestmark = pytest.mark.docker

IGNORES_TERM = "trap '' TERM; while true; do sleep 0.2; done"  # like `sleep` or many shells as PID 1


class Journal:
    def __init__(self) -> None:
        self.closed: list[str] = []

    def resumed(self, ref: ContainerRef) -> None:
        self.closed.append(ref.id)


def test_a_stop_in_flight_settles_before_the_container_is_started_again(engine, docker_client, test_image, unique):
    app = docker_client.containers.run(test_image, ["sh", "-c", IGNORES_TERM], name=unique("stubborn"), detach=True,
                                       network_mode="none", stop_signal="SIGTERM")
    try:
        ref = ContainerRef(app.id, app.name, "running")
        halted_at = datetime.now(UTC)
        stopping = threading.Thread(target=docker_client.api.stop, args=(app.id,), kwargs={"timeout": 3})
        stopping.start()  # what the killed dockvault had asked; the engine goes on with it
        journal = Journal()
        resumed = recover_halted(engine, [Halted(ref, "stop", halted_at, "p")], journal, now=datetime.now(UTC))
        stopping.join()
        app.reload()
        assert app.status == "running", "the stop in flight won over the recovery"
        assert resumed == [app.name] and journal.closed == [app.id]
    finally:
        app.remove(force=True)


def test_an_entry_stays_open_while_its_container_cannot_be_resumed(engine, docker_client, test_image, unique):
    app = docker_client.containers.create(test_image, ["/no/such/program"], name=unique("broken"),
                                          network_mode="none")
    try:
        journal = Journal()
        ref = ContainerRef(app.id, app.name, "exited")
        assert recover_halted(engine, [Halted(ref, "stop", datetime.now(UTC), "p")], journal,
                              now=datetime.now(UTC)) == []
        assert journal.closed == []  # the next start-up tries again
    finally:
        app.remove(force=True)
