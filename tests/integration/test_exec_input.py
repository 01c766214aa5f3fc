"""Feeding a client through `docker exec` (database restores: pg_restore, psql, mysql) when the client exits before
it read all of its input. The engine then stops reading the connection: the feed used to wait for the socket's
timeout (300 s in production, 120 s here) and fail with a bare "timed out", hiding the client's exit code and
message (pg_restore --exit-on-error stopping at a failing statement)."""

from __future__ import annotations

import docker
import pytest

from dockvault.engine import execstream
from dockvault.engine.core import Engine
from dockvault.sources.base import SourceError
from dockvault.sources.database import DbContainer

pytestmark = pytest.mark.docker
INPUT = [bytes(1 << 20)] * 256  # 256 MiB: far more than any socket and pipe buffers hold


@pytest.fixture
def client_container(test_image, unique):
    client = docker.from_env(timeout=120)
    container = client.containers.run(test_image, ["sleep", "600"], entrypoint=[], detach=True, network_mode="none",
                                      name=unique("exec-input"), labels={"dockvault.test": "exec-input"})
    try:
        yield client, container
    finally:
        container.remove(force=True)
        client.close()


def test_a_client_that_fails_early_returns_its_exit_code_and_message(client_container):
    client, container = client_container
    result = execstream.run(client, container.id, ["sh", "-c", "echo 'ERROR: relation exists' >&2; exit 1"],
                            stdin=iter(INPUT))
    assert result.exit_code == 1 and result.stderr == "ERROR: relation exists"


def test_the_database_feed_names_the_clients_error(client_container, test_image):
    client, container = client_container
    db = DbContainer(Engine(client, helper_image=test_image), container.id, container.name, {})
    with pytest.raises(SourceError, match=r"pg_restore into database 'shop' failed .*\(exit 1\): ERROR: boom"):
        db.feed(["sh", "-c", "head -c 1000 > /dev/null; echo 'ERROR: boom' >&2; exit 1"], iter(INPUT),
                what="pg_restore into database 'shop'")


def test_a_client_that_exits_0_before_the_end_of_its_input_is_a_failure(client_container, test_image):
    """Its exit code says success, but part of the dump was never applied."""
    client, container = client_container
    db = DbContainer(Engine(client, helper_image=test_image), container.id, container.name, {})
    with pytest.raises(SourceError, match="exited 0 before it read all of its input"):
        db.feed(["sh", "-c", "head -c 1000 > /dev/null"], iter(INPUT), what="restoring database 'shop'")
