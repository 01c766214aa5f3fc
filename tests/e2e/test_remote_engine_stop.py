"""The remote engine stops in the middle of a volume backup: dockvault reaches a private dockerd of its own only
over TCP+TLS (REQUESTS_CA_BUNDLE set, as on these machines), and that dockerd is stopped (SIGTERM) while the
helper streams. The backup fails with a message that names the engine, publishes no manifest and leaves no
temporaries; the older backup stays intact and restores on the engine started again on the same data, where
the next dockvault start removes the helper container the stopped engine kept.

This test starts and stops its own engine (tests/second_engine.tls_engine on a restartable root), never the
harness's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import pytest

from dockvault.storage.base import TEMP_SUFFIX
from tests.second_engine import restartable_engine, tls_engine
from tests.treecheck import populate_volume, snapshot_volume, volume_path

pytestmark = pytest.mark.docker

POLICY = "remotestop"
VOLUME = "remote-stop-media"


def dockvault(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dockvault", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def tls_env(cli_env: dict[str, str], engine: dict[str, str]) -> dict[str, str]:
    env = {**cli_env, **engine, "REQUESTS_CA_BUNDLE": os.environ.get("REQUESTS_CA_BUNDLE")
           or "/etc/ssl/certs/ca-certificates.crt"}
    env.pop("DOCKVAULT_TRANSPORT", None)  # auto: the api transport, as for any tcp:// engine
    return env


def leftovers(repo: Path) -> list[str]:
    """Files that are not part of a complete backup: outside a folder with a manifest, or temporaries."""
    return [str(p.relative_to(repo)) for p in sorted(repo.rglob("*")) if p.is_file()
            and (not (p.parent / "manifest.json").exists() or p.name.endswith(TEMP_SUFFIX))]


def test_engine_stopped_mid_stream_fails_cleanly_and_keeps_older_backups(docker_client, test_image, cli_env,
                                                                         tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    (config / "policy.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: dockvault.io/v1alpha1
        kind: BackupPolicy
        metadata: {{name: {POLICY}}}
        spec:
          targets: [{{name: media, volume: {{name: {VOLUME}}}}}]
          storage: {{local: {{path: {repo}}}}}
        """))
    first_host = os.environ["DOCKER_HOST"]
    with restartable_engine(test_image, first_host) as (root, _):
        with tls_engine(test_image, first_host, root=root, keep_root=True) as engine:
            setup = docker.DockerClient(base_url=engine.setup_host, version="auto", timeout=300)
            populate_volume(setup, VOLUME, megabytes=8)
            expected = snapshot_volume(setup, VOLUME)
            env = tls_env(cli_env, engine)
            first = finished(dockvault(env, "backup", POLICY))
            assert first.returncode == 0, first.stderr
            assert "helper streams use the api transport" in first.stderr
            (manifest,) = repo.glob(f"{POLICY}/*/manifest.json")
            older = json.loads(manifest.read_text())

            # Enough incompressible data that the stream lasts seconds, not milliseconds.
            with open(volume_path(setup, VOLUME) / "bin" / "big.bin", "wb") as big:
                for _ in range(48):
                    big.write(os.urandom(8 << 20))
            backup = dockvault(env, "backup", POLICY)
            deadline = time.monotonic() + 300
            while not any(p.stat().st_size > (4 << 20) for p in repo.rglob("*") if p.is_file()
                          and p.parent != manifest.parent):
                assert backup.poll() is None, f"the backup ended before the engine stopped: {backup.communicate()}"
                assert time.monotonic() < deadline, "the backup's stream did not start"
                time.sleep(0.05)
            os.kill(int((root / "pid").read_text()), signal.SIGTERM)  # this test's own dockerd
            result = finished(backup)
            setup.close()

        assert result.returncode != 0, result.stderr
        message = result.stderr.lower()
        assert "error:" in message and engine.host.removeprefix("tcp://") in message, result.stderr
        assert "traceback" not in message, result.stderr
        assert [p.parent for p in repo.glob(f"{POLICY}/*/manifest.json")] == [manifest.parent]
        assert json.loads(manifest.read_text()) == older
        assert leftovers(repo) == []

        # The engine comes back on the same data: the older backup restores over TLS, byte for byte.
        with tls_engine(test_image, first_host, root=root) as engine:
            setup = docker.DockerClient(base_url=engine.setup_host, version="auto", timeout=300)
            (config / "restore.yaml").write_text(textwrap.dedent(f"""\
                apiVersion: dockvault.io/v1alpha1
                kind: RestoreRequest
                metadata: {{name: back}}
                spec: {{policy: {POLICY}, backup: {older["spec"]["id"]}, targets: [{{from: media, volume: {{name: {VOLUME}-back}}}}]}}
                """))
            restore = finished(dockvault(tls_env(cli_env, engine), "run", "--once", "--metrics-addr", "off"))
            assert "restore back succeeded" in restore.stderr, restore.stderr
            assert snapshot_volume(setup, f"{VOLUME}-back") == expected
            # the helper the stopped engine kept was removed by this dockvault's start-up
            assert setup.containers.list(all=True, filters={"label": f"dockvault.io/policy={POLICY}"}) == []
            setup.close()
