"""The Docker engine restarted in the middle of a quiesced backup, under `dockvault run`: a clean failure, a retry
once the engine is back, and nothing left behind. The engine is a private dockerd of this test (the harness's
shared one is never restarted), restarted on the same data root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import docker
import pytest

from tests.e2e.cli import dockvault, write_policy
from tests.second_engine import _engine, restartable_engine
from tests.treecheck import APP_LOOP, populate_volume
from tests.waiting import eventually

pytestmark = pytest.mark.docker


def test_an_engine_restart_mid_backup_fails_cleanly_and_is_retried(test_image, tmp_path, repo_dir):
    config, state, tmp = tmp_path / "config", tmp_path / "state", tmp_path / "tmp"
    for path in (config, tmp):
        path.mkdir()
    write_policy(config, name="restart", volume="restart-src", repo=repo_dir)  # quiesce: stop, never backed up
    log = tmp_path / "run.log"
    with restartable_engine(test_image, os.environ["DOCKER_HOST"]) as (root, first_host):
        with _engine(test_image, first_host, 90, root, keep_root=True) as host:
            client = docker.DockerClient(base_url=host)
            populate_volume(client, "restart-src", megabytes=150)
            app = client.containers.run(test_image, ["sh", "-c", APP_LOOP], name="restart-app", detach=True,
                                        network_mode="none", volumes={"restart-src": {"bind": "/data"}})
            env = dict(os.environ, DOCKER_HOST=host, DOCKVAULT_CONFIG_DIR=str(config), DOCKVAULT_STATE_DIR=str(state),
                       DOCKVAULT_HELPER_IMAGE=test_image, TMPDIR=str(tmp))
            service = subprocess.Popen([sys.executable, "-m", "dockvault", "run", "--metrics-addr", "off"], env=env,
                                       stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            eventually("a helper archiving while the application is stopped", lambda: (
                client.containers.list(filters={"label": "dockvault.io/policy=restart"})
                and client.containers.get(app.id).status == "exited"), timeout=90, interval=0.02)
            client.close()
        try:
            eventually("the failure noticed", lambda: "temporary" in log.read_text(), timeout=60)
            time.sleep(1)
            with _engine(test_image, first_host, 90, root, keep_root=True) as host:  # the same data root
                client = docker.DockerClient(base_url=host)
                eventually("the retry's backup", lambda: any((f / "manifest.json").is_file()
                                                             for f in (repo_dir / "restart").iterdir()), timeout=180)
                eventually("the application running again",
                           lambda: client.containers.get(app.id).status == "running", timeout=60)
                eventually("no helper left", lambda: not client.containers.list(
                    all=True, filters={"label": "dockvault.io/policy=restart"}), timeout=30)
                status = json.loads(dockvault("get", "policies", "-o", "json", env=env).stdout)
                client.containers.get(app.id).remove(force=True)
                client.close()
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(60)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert service.returncode == 0, text
    assert status[0]["status"]["lastBackup"]["phase"] == "Succeeded", status
    folders = list((repo_dir / "restart").iterdir())
    assert all((f / "manifest.json").is_file() for f in folders), folders
    assert not list(repo_dir.rglob("*.dvtmp")) and list(tmp.iterdir()) == []
