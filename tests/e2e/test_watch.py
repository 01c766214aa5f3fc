"""`dockvault run` as a long-lived process: the config directory is watched and applied without restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.e2e.cli import write_policy, write_restore
from tests.treecheck import populate_volume, snapshot_volume

pytestmark = pytest.mark.docker


def free_port() -> int:
    """An ephemeral loopback port nobody holds now (never a fixed one: another process may hold it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_watched_directory_applies_changes_without_restart(docker_client, volumes, repo_dir, tmp_path, test_image):
    config, log_path = tmp_path / "config", tmp_path / "run.log"
    config.mkdir()
    source, restored = volumes("watch-src"), volumes("watch-dst")
    populate_volume(docker_client, source, megabytes=2)
    env = dict(os.environ, DOCKVAULT_HELPER_IMAGE=test_image)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dockvault", "run", "--config-dir", str(config),
                                 "--state-dir", str(tmp_path / "state"), "--metrics-addr", f"127.0.0.1:{free_port()}"],
                                env=env, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
    logged = lambda text: text in log_path.read_text()  # noqa: E731
    try:
        time.sleep(1.0)
        write_policy(config, name="watched", volume=source, repo=repo_dir)
        manifest = wait_for(lambda: next(repo_dir.glob("watched/*/manifest.json"), None), "the new policy's first backup")

        (config / "broken.yaml").write_text("apiVersion: dockvault.io/v1alpha1\nkind: BackupPolicy\nmetadata: {name: broken}\n"
                                            "spec: {targets: [], storage: {local: {path: /x}}}\n")
        wait_for(lambda: logged("broken.yaml: BackupPolicy broken: spec.targets: List should have at least 1 item"),
                 "the bad file's error in the log")

        write_restore(config, name="from-watch", policy="watched", volume=restored)
        wait_for(lambda: logged("restore from-watch succeeded"), "the restore")
        assert snapshot_volume(docker_client, restored) == snapshot_volume(docker_client, source)

        (config / "watched.yaml").unlink()
        wait_for(lambda: logged("policy watched removed"), "the removal to be noticed")
        assert proc.poll() is None, "a bad or removed file must not stop dockvault"
        assert manifest.exists()  # removing a policy never deletes its backups
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()
    assert docker_client.containers.list(all=True, filters={"label": "dockvault.io/job"}) == []
