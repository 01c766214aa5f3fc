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
from tests.waiting import eventually

pytestmark = pytest.mark.docker


def free_port() -> int:
    """An ephemeral loopback port nobody holds now (never a fixed one: another process may hold it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
        try:
            manifest = eventually("the new policy's first backup",
                                  lambda: next(repo_dir.glob("watched/*/manifest.json"), None), 90)
        except AssertionError as exc:  # say what dockvault said
            raise AssertionError(f"{exc}\n--- dockvault's log ---\n{log_path.read_text()[-4000:]}") from None

        (config / "broken.yaml").write_text("apiVersion: dockvault.io/v1alpha1\nkind: BackupPolicy\nmetadata: {name: broken}\n"
                                            "spec: {targets: [], storage: {local: {path: /x}}}\n")
        eventually("the bad file's error in the log",
                   lambda: logged("broken.yaml: BackupPolicy broken: spec.targets: List should have at least 1 item"), 90)

        write_restore(config, name="from-watch", policy="watched", volume=restored)
        eventually("the restore", lambda: logged("restore from-watch succeeded"), 90)
        assert snapshot_volume(docker_client, restored) == snapshot_volume(docker_client, source)

        (config / "watched.yaml").unlink()
        eventually("the removal to be noticed", lambda: logged("policy watched removed"), 90)
        assert proc.poll() is None, "a bad or removed file must not stop dockvault"
        assert manifest.exists()  # removing a policy never deletes its backups
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()
    assert docker_client.containers.list(all=True, filters={"label": "dockvault.io/job"}) == []
