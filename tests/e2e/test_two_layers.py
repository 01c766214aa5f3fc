"""The README's four recovery scenarios, run from examples/two-layers through the CLI on a real PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import docker.errors
import pytest

from tests.dbfixtures import start_pg_server
from tests.e2e.cli import dockvault
from tests.treecheck import populate_volume, snapshot_volume

pytestmark = pytest.mark.docker
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "two-layers"


def install(name: str, config: Path, replacements: dict[str, str]) -> None:
    text = (EXAMPLES / name).read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    (config / name).write_text(text)


def remove_volume(client, name: str) -> None:
    """Remove a volume; dockerd drops a force-removed container's reference a moment later."""
    for _ in range(50):
        try:
            client.volumes.get(name).remove()
            return
        except docker.errors.APIError as exc:
            if "in use" not in str(exc):
                raise
            time.sleep(0.2)
    raise AssertionError(f"volume {name} stayed in use")


def test_four_recovery_scenarios(docker_client, test_image, volumes, repo_dir, cli_env):
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    media = volumes("media")
    populate_volume(docker_client, media, megabytes=3)
    server = start_pg_server(docker_client, test_image)  # its data volume is archived as target pgdata
    reborn = None
    try:
        server.psql("CREATE DATABASE myapp")
        server.psql("CREATE TABLE users (id int PRIMARY KEY, name text); "
                    "INSERT INTO users SELECT i, 'user ' || i FROM generate_series(1, 500) i; "
                    "CREATE TABLE orders (id int, user_id int); INSERT INTO orders VALUES (1, 7);", "myapp")
        users = server.psql("SELECT * FROM users ORDER BY id", "myapp")
        names = {"myapp-postgres": server.name, "myapp-pgdata": server.volume, "myapp-media": media,
                 "/var/backups/dockvault": str(repo_dir)}
        install("policy.yaml", config, names)
        env = {**cli_env, "DOCKVAULT_HELPER_IMAGE": test_image}

        dockvault("backup", "myapp", env=env)
        media_before = snapshot_volume(docker_client, media)
        assert server.psql("SELECT count(*) FROM users", "myapp") == "500"  # the quiesced server is back

        # 1. database broken -> logical dump into a new name
        install("restore-database-broken.yaml", config, names)
        dockvault("run", "--once", env=env)
        assert server.psql("SELECT * FROM users ORDER BY id", "myapp_restored") == users

        # 3. one table deleted -> just that table, into the live database
        server.psql("DROP TABLE users; INSERT INTO orders VALUES (2, 9);", "myapp")
        install("restore-one-table.yaml", config, names)
        dockvault("run", "--once", env=env)
        assert server.psql("SELECT * FROM users ORDER BY id", "myapp") == users
        assert server.psql("SELECT count(*) FROM orders", "myapp") == "2"  # other tables keep today's rows

        # 4. yesterday's media -> the newest archive before a time, into a side volume
        side = volumes("media-side")
        install("restore-yesterdays-media.yaml", config, {  # the longer name first: it contains "myapp-media"
            "myapp-media-2026-11-20": side, **names, "2026-11-21T00:00:00+09:00": datetime.now(UTC).isoformat()})
        dockvault("run", "--once", env=env)
        assert snapshot_volume(docker_client, side) == media_before

        # 2. whole server lost -> volumes back, then the database server starts on its restored data directory
        password = server.password
        server.container.remove(force=True)
        remove_volume(docker_client, server.volume)
        remove_volume(docker_client, media)
        install("restore-server-lost.yaml", config, names)
        dockvault("run", "--once", env=env)
        assert snapshot_volume(docker_client, media) == media_before
        reborn = start_pg_server(docker_client, test_image, volume=server.volume, password=password)
        assert reborn.psql("SELECT * FROM users ORDER BY id", "myapp") == users
    finally:
        if reborn is not None:
            reborn.remove()
        server.remove()
