"""Volumes on a remote engine: dockvault reaches a second private dockerd only over TCP+TLS (client
certificates; REQUESTS_CA_BUNDLE set, as on these machines), from its own mount namespace with a private tmpfs
as its temp dir, so it shares no filesystem with the engine. The volume streams go through the Docker API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import docker
import pytest

from tests.treecheck import populate_volume, snapshot_volume

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")]

ISOLATED = 'mount -t tmpfs dockvault-private "$1" && shift && TMPDIR="$0" exec "$@"'


def isolated(env: dict[str, str], private: Path, *args: str) -> subprocess.CompletedProcess:
    """`dockvault ARGS` in a mount namespace of its own, its temp dir a private tmpfs the engine cannot see."""
    private.mkdir(exist_ok=True)
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", ISOLATED, str(private),
                           str(private), sys.executable, "-m", "dockvault", *args], env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_volume_backup_restore_and_drill_over_tls_sharing_nothing(tls_docker_env, cli_env, tmp_path, unique):
    import os

    setup = docker.DockerClient(base_url=tls_docker_env.setup_host, version="auto", timeout=300)
    media = unique("remote-media")
    try:
        populate_volume(setup, media, megabytes=20)
        before = snapshot_volume(setup, media)
        env = {**cli_env, **tls_docker_env, "REQUESTS_CA_BUNDLE": os.environ.get("REQUESTS_CA_BUNDLE")
               or "/etc/ssl/certs/ca-certificates.crt"}
        env.pop("DOCKVAULT_TRANSPORT", None)  # auto must choose the api transport by itself
        config, repo = Path(env["DOCKVAULT_CONFIG_DIR"]), tmp_path / "repo"
        repo.mkdir()
        (config / "policy.yaml").write_text(textwrap.dedent(f"""\
            apiVersion: dockvault.io/v1alpha1
            kind: BackupPolicy
            metadata: {{name: remote}}
            spec:
              targets: [{{name: media, volume: {{name: {media}}}}}]
              storage: {{local: {{path: {repo}}}}}
              drill: {{}}
            """))
        private = tmp_path / "private-tmp"
        backup = isolated(env, private, "backup", "remote")
        assert backup.returncode == 0, backup.stderr
        assert "helper streams use the api transport" in backup.stderr
        (manifest,) = repo.glob("remote/*/manifest.json")
        (artifact,) = json.loads(manifest.read_text())["status"]["artifacts"]
        assert artifact["rawBytes"] > 20_000_000
        # The helper compressed near the data, so the TLS link carried the compressed bytes; dockvault proved the
        # archive all the same (the restore below compares the whole tree).
        assert artifact["details"]["compressedBy"] == "helper" and artifact["file"].endswith(".tar.zst")
        assert artifact["bytes"] < artifact["rawBytes"]

        drill = isolated(env, private, "drill", "remote")
        assert drill.returncode == 0 and "paths restored identical" in drill.stdout, drill.stderr

        setup.volumes.get(media).remove(force=True)
        (config / "restore.yaml").write_text(textwrap.dedent(f"""\
            apiVersion: dockvault.io/v1alpha1
            kind: RestoreRequest
            metadata: {{name: back}}
            spec: {{policy: remote, targets: [{{from: media, volume: {{name: {media}}}}}]}}
            """))
        restore = isolated(env, private, "run", "--once", "--metrics-addr", "off")
        assert "restore back succeeded" in restore.stderr, restore.stderr
        assert snapshot_volume(setup, media) == before
        assert setup.containers.list(all=True, filters={"label": "dockvault.io/job"}) == []
    finally:
        for container in setup.containers.list(all=True, filters={"volume": media}):
            container.remove(force=True)
        try:
            setup.volumes.get(media).remove(force=True)
        except docker.errors.NotFound:
            pass
        setup.close()
