"""The fault tier: SIGKILL at random points, an engine restarted mid-backup, full disks, a secrets scan and
concurrent processes, each at small scale with seeded randomness (benchmarks/faults.py runs them at scale)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dbfixtures import maria_database, maria_server, pg_database, pg_server  # noqa: F401  (fixtures)

SEED = int(os.environ.get("DOCKVAULT_FAULT_SEED", "13"))


@pytest.fixture
def fault_site(request, tmp_path, docker_client, test_image) -> Iterator[Callable[..., object]]:
    """Factory: `fault_site(kind)` -> a set-up tests.faults.crash.Site, closed after the test."""
    from tests.faults.crash import Site

    sites: list[Site] = []

    def make(kind: str, **kwargs) -> Site:
        extra = {}
        if kind == "postgres":
            extra["pg"] = request.getfixturevalue("pg_server")
        if kind == "mariadb":
            extra["maria"] = request.getfixturevalue("maria_server")
        if kind == "s3":
            extra["s3"] = request.getfixturevalue("s3_server")
        site = Site(kind, Path(tmp_path) / kind, docker_client, test_image, **extra, **kwargs)
        sites.append(site)
        site.setup()
        return site

    yield make
    for site in sites:
        site.close()
