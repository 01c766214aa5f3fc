"""Offsite through the CLI, as a user runs it: S3 (SeaweedFS on 127.0.0.1) as the only thing that survives.

- Disaster recovery: a fresh host with only the policy YAML (new state dir, no local data) lists the backups
  from the bucket and restores them.
- Migration (seed 1): host B restores host A's backups from the shared bucket into its own engine (a second
  private dockerd), without ever backing up host A's policy.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import docker
import pytest

from dockvault.storage.s3 import INDEX
from tests.e2e.cli import dockvault
from tests.treecheck import populate_volume, snapshot_volume

pytestmark = pytest.mark.docker


def write_policy(config: Path, server, bucket: str, volumes: list[str], host: str = "local") -> None:
    targets = "".join(f"    - {{name: {v.rsplit('-', 1)[0]}, volume: {{name: {v}}}}}\n" for v in volumes)
    (config / "policy.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: dockvault.io/v1alpha1
        kind: BackupPolicy
        metadata: {{name: app}}
        spec:
          host: {host}
          schedule: "0 3 * * *"
          storage:
            s3:
              bucket: {bucket}
              prefix: fleet
              endpoint: {server.endpoint}
              credentials:
                accessKeyIdFrom: {{env: DV_TEST_S3_KEY}}
                secretAccessKeyFrom: {{env: DV_TEST_S3_SECRET}}
          targets:
        """) + targets)


def write_restore(config: Path, volumes: list[str], host: str | None = None) -> None:
    """Every volume target back under its original name: the seed's migration loop as one short request."""
    targets = "".join(f"    - {{from: {v.rsplit('-', 1)[0]}, volume: {{name: {v}}}}}\n" for v in volumes)
    where = f"  host: {host}\n" if host else ""
    (config / "restore.yaml").write_text(textwrap.dedent("""\
        apiVersion: dockvault.io/v1alpha1
        kind: RestoreRequest
        metadata: {name: bring-back}
        spec:
          policy: app
          backup: latest
        """) + where + "  targets:\n" + targets)


def env_for(cli_env: dict[str, str], server, root: Path, **extra: str) -> dict[str, str]:
    (root / "config").mkdir(parents=True, exist_ok=True)
    return {**cli_env, **server.env, "DOCKVAULT_CONFIG_DIR": str(root / "config"),
            "DOCKVAULT_STATE_DIR": str(root / "state"), **extra}


def test_a_fresh_host_lists_the_bucket_and_restores_everything(s3_server, docker_client, volumes, cli_env, tmp_path):
    media, uploads = volumes("media-x"), volumes("uploads-x")
    for volume in (media, uploads):
        populate_volume(docker_client, volume, megabytes=2, seed=len(volume))
    before = {v: snapshot_volume(docker_client, v) for v in (media, uploads)}
    bucket = s3_server.bucket()
    old = env_for(cli_env, s3_server, tmp_path / "old-host")
    write_policy(Path(old["DOCKVAULT_CONFIG_DIR"]), s3_server, bucket, [media, uploads])
    dockvault("backup", "app", env=old)
    dockvault("backup", "app", env=old)

    # the host is gone: its state and config with it; the volumes too
    for volume in (media, uploads):
        docker_client.volumes.get(volume).remove(force=True)
    new = env_for(cli_env, s3_server, tmp_path / "new-host")
    write_policy(Path(new["DOCKVAULT_CONFIG_DIR"]), s3_server, bucket, [media, uploads])
    listed = json.loads(dockvault("get", "backups", "-o", "json", env=new).stdout)
    assert len(listed) == 2 and all(row["status"]["phase"] == "Succeeded" for row in listed)
    write_restore(Path(new["DOCKVAULT_CONFIG_DIR"]), [media, uploads])
    result = dockvault("run", "--once", env=new, check=False)
    assert "restore bring-back succeeded" in result.stderr, result.stderr
    for volume in (media, uploads):
        assert snapshot_volume(docker_client, volume) == before[volume]


def test_host_b_restores_host_a_backups_into_its_own_engine(s3_server, second_docker_host, docker_client, volumes,
                                                            cli_env, tmp_path):
    media = volumes("media-m")
    populate_volume(docker_client, media, megabytes=3)
    before = snapshot_volume(docker_client, media)
    bucket = s3_server.bucket()
    host_a = env_for(cli_env, s3_server, tmp_path / "host-a")
    write_policy(Path(host_a["DOCKVAULT_CONFIG_DIR"]), s3_server, bucket, [media], host="host-a")
    dockvault("backup", "app", env=host_a)

    # host B: another engine, the same policy file (spec.host: host-a), a request naming host-b
    host_b = env_for(cli_env, s3_server, tmp_path / "host-b", DOCKER_HOST=second_docker_host)
    write_policy(Path(host_b["DOCKVAULT_CONFIG_DIR"]), s3_server, bucket, [media], host="host-a")
    write_restore(Path(host_b["DOCKVAULT_CONFIG_DIR"]), [media], host="host-b")
    result = dockvault("run", "--once", "--host", "host-b", "--metrics-addr", "off", env=host_b, check=False)
    assert "restore bring-back succeeded" in result.stderr, result.stderr
    assert "backup app/" not in result.stderr  # host B never backs up host A's policy

    engine_b = docker.DockerClient(base_url=second_docker_host)
    try:
        assert snapshot_volume(engine_b, media) == before
    finally:
        engine_b.volumes.get(media).remove(force=True)
        engine_b.close()
    listed = json.loads(dockvault("get", "backups", "-o", "json", env=host_a).stdout)
    assert len(listed) == 1  # still only host A's own backup
    # and host A's own `run` does not perform a restore that names host B
    write_restore(Path(host_a["DOCKVAULT_CONFIG_DIR"]), [media], host="host-b")
    result = dockvault("run", "--once", "--host", "host-a", "--metrics-addr", "off", env=host_a, check=False)
    assert "restore bring-back succeeded" not in result.stderr and "restore bring-back failed" not in result.stderr
    assert result.returncode == 0, result.stderr


def _uploads(server, bucket: str) -> list[dict]:
    return server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _backup_in_flight(env: dict[str, str], server, bucket: str):
    """`dockvault backup app` started, returned once its artifact's multipart upload is open."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "dockvault", "backup", "app"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _uploads(server, bucket):
        assert proc.poll() is None, f"the backup ended before its upload could be caught: {proc.communicate()}"
        assert time.monotonic() < deadline, "no multipart upload appeared"
        time.sleep(0.05)
    return proc


def test_sigkill_mid_upload_is_cleaned_up_by_the_next_start(s3_server, docker_client, volumes, cli_env, tmp_path):
    import os
    import signal

    media = volumes("media-k")
    populate_volume(docker_client, media, megabytes=200)
    bucket = s3_server.bucket()
    env = env_for(cli_env, s3_server, tmp_path / "host")
    write_policy(Path(env["DOCKVAULT_CONFIG_DIR"]), s3_server, bucket, [media])
    proc = _backup_in_flight(env, s3_server, bucket)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _uploads(s3_server, bucket), "the killed run's upload is open"

    result = dockvault("backup", "app", env=env)  # one-shot commands repair what a killed dockvault left too
    assert _uploads(s3_server, bucket) == []
    assert "multipart upload" in result.stderr
    listed = json.loads(dockvault("get", "backups", "-o", "json", env=env).stdout)
    assert len(listed) == 1 and listed[0]["status"]["phase"] == "Succeeded"
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
            if not o["Key"].endswith(f"/{INDEX}")]  # the listing index
    assert len({k.split("/")[2] for k in keys}) == 1  # no half backup folder left


def test_s3_stopped_mid_upload_fails_cleanly_and_keeps_older_backups(s3_server, docker_client, volumes, cli_env,
                                                                     tmp_path):
    media = volumes("media-s")
    populate_volume(docker_client, media, megabytes=200)
    bucket = s3_server.bucket()
    env = env_for(cli_env, s3_server, tmp_path / "host")
    write_policy(Path(env["DOCKVAULT_CONFIG_DIR"]), s3_server, bucket, [media])
    dockvault("backup", "app", env=env)
    proc = _backup_in_flight(env, s3_server, bucket)
    s3_server.stop()
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        s3_server.start()
    assert proc.returncode != 0
    assert "cannot reach the S3 endpoint" in stderr, stderr
    listed = json.loads(dockvault("get", "backups", "-o", "json", env=env).stdout)
    assert len(listed) == 1 and listed[0]["status"]["phase"] == "Succeeded"  # the older one, intact
    drill = dockvault("drill", "app", env=env)
    assert "succeeded" in drill.stdout
