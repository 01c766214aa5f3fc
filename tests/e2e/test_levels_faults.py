"""Chains under faults: a SIGKILL in the middle of a differential, and an engine restart between a full and a
differential. Neither may break the chain, nor silently turn the next differential into a full."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from dockvault.actions.backup import run_backup
from dockvault.actions.restore import run_restore
from dockvault.engine.core import Engine
from dockvault.storage.local import LocalRepository
from tests.e2e.cli import dockvault, write_policy, write_restore
from tests.integration.test_volume_jobs import policy, restore_request
from tests.second_engine import _engine, restartable_engine
from tests.treecheck import populate_volume, snapshot_volume, volume_path

pytestmark = pytest.mark.docker

DIFFERENTIAL = 'differential: {schedule: "45 17 * * *"}\n'


def test_sigkill_mid_differential_leaves_the_chain_usable(docker_client, volumes, repo_dir, cli_env):
    source, restored = volumes("killdiff"), volumes("killdiff-back")
    populate_volume(docker_client, source, megabytes=20)
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    write_policy(config, name="killdiff", volume=source, repo=repo_dir, extra="  " + DIFFERENTIAL)
    full = dockvault("backup", "killdiff", "--level", "full", env=cli_env)
    with open(volume_path(docker_client, source) / "upload.bin", "wb") as upload:  # a differential that takes a while
        for _ in range(48):
            upload.write(os.urandom(4 << 20))

    proc = subprocess.Popen([sys.executable, "-m", "dockvault", "backup", "killdiff", "--level", "differential"],
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline, helpers = time.monotonic() + 60, []
    while time.monotonic() < deadline and proc.poll() is None and not helpers:
        helpers = docker_client.containers.list(filters={"label": ["dockvault.io/job", "dockvault.io/policy=killdiff"]})
        time.sleep(0.02)
    assert helpers, "the differential finished before it could be killed mid-archive; write more data"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    listed = json.loads(dockvault("get", "backups", "-p", "killdiff", "-o", "json", env=cli_env).stdout)
    assert [b["spec"].get("level") for b in listed] == ["full"]  # the killed run published nothing
    again = dockvault("backup", "killdiff", "--level", "differential", env=cli_env)
    full_id = full.stdout.split()[1].split("/")[1]
    assert f"(differential on {full_id})" in again.stdout, again.stdout
    expected = snapshot_volume(docker_client, source)
    write_restore(config, name="back", policy="killdiff", volume=restored)
    dockvault("run", "--once", env=cli_env)
    assert snapshot_volume(docker_client, restored) == expected
    assert docker_client.containers.list(all=True, filters={"label": "dockvault.io/policy=killdiff"}) == []


def test_an_engine_restart_between_full_and_differential_does_not_make_a_full(docker_client, test_image, repo_dir,
                                                                                unique):
    """The differential after a restart is as small as the change (the volume's folders are not taken for new:
    tar's --no-check-device, inode-based snapshot), and the chain restores on the restarted engine."""
    name = unique("restart")
    pol = policy("restart", name, repo_dir, differential={"schedule": "45 17 * * *"})
    repo = LocalRepository(repo_dir)
    with restartable_engine(test_image, os.environ["DOCKER_HOST"]) as (root, first_host):
        with _engine(test_image, first_host, 90, root, keep_root=True) as host:
            client = docker.DockerClient(base_url=host)
            populate_volume(client, name, megabytes=8)
            full = run_backup(pol, engine=Engine(client, helper_image=test_image), repository=repo)
            assert full.succeeded, full.record.status.message
            client.close()
        with _engine(test_image, first_host, 90, root) as host:  # the same data root: a restarted engine
            client = docker.DockerClient(base_url=host)
            (volume_path(client, name) / "after-restart.txt").write_text("one new file\n")
            expected = snapshot_volume(client, name)
            engine = Engine(client, helper_image=test_image)
            diff = run_backup(pol, engine=engine, repository=repo, level="differential")
            assert diff.succeeded, diff.record.status.message
            assert (diff.record.level, diff.record.base) == ("differential", full.record.id)
            assert diff.record.artifact("data").raw_bytes < full.record.artifact("data").raw_bytes / 10
            back = unique("restart-back")
            result = run_restore(restore_request("restart", back), pol, engine=engine, repository=repo)
            assert result.succeeded, result.status.message
            assert snapshot_volume(client, back) == expected
            client.close()
