"""A dockvault killed with SIGKILL mid-backup: the next start resumes quiesced containers and cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.cli import dockvault, write_policy
from tests.treecheck import APP_LOOP
from tests.treecheck import populate_volume

pytestmark = pytest.mark.docker


def test_sigkill_during_quiesced_backup_is_recovered_at_start_up(docker_client, volumes, repo_dir, cli_env, containers,
                                                                  test_image, unique):
    source = volumes("crash")
    populate_volume(docker_client, source, megabytes=150)
    app = docker_client.containers.run(test_image, ["sh", "-c", APP_LOOP], name=unique("crash-app"), detach=True,
                                       network_mode="none", volumes={source: {"bind": "/data", "mode": "rw"}})
    containers.append(app)
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    write_policy(config, name="crash", volume=source, repo=repo_dir)  # quiesce: stop

    proc = subprocess.Popen([sys.executable, "-m", "dockvault", "backup", "crash"], env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    helpers: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        helpers = docker_client.containers.list(filters={"label": "dockvault.io/job"})
        if helpers and docker_client.containers.get(app.id).status == "exited":
            break
        time.sleep(0.02)
    assert helpers, "the backup finished before it could be killed mid-archive; use a bigger volume"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert docker_client.containers.get(app.id).status == "exited"  # left stopped by the killed process

    result = dockvault("run", "--once", env=cli_env, check=False)
    assert "resumed container(s) a stopped dockvault had left quiesced" in result.stderr
    assert docker_client.containers.get(app.id).status == "running"
    assert docker_client.containers.list(all=True, filters={"label": "dockvault.io/job"}) == []
    # the interrupted run left no folder that looks like a backup; the new pass made a complete one
    folders = sorted((repo_dir / "crash").iterdir())
    assert all((f / "manifest.json").exists() for f in folders) and not list((repo_dir / "crash").glob("*/*.dvtmp"))
    assert result.returncode == 0, result.stderr
