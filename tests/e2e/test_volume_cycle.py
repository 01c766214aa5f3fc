"""End to end through the `dockvault` CLI on the real engine: back up real data, destroy it, restore it, compare."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cli import dockvault, write_policy, write_restore
from tests.treecheck import populate_volume, snapshot_volume

pytestmark = pytest.mark.docker


def test_backup_delete_restore_is_identical(docker_client, volumes, repo_dir, cli_env, tmp_path):
    volume = volumes("e2e-data")
    populate_volume(docker_client, volume, megabytes=50)
    before = snapshot_volume(docker_client, volume)
    assert sum(1 for v in before.values() if v[4]) > 1000  # the content is as varied as promised
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    write_policy(config, name="cycle", volume=volume, repo=repo_dir)

    dockvault("backup", "cycle", env=cli_env)
    listed = json.loads(dockvault("get", "backups", "-o", "json", env=cli_env).stdout)
    assert len(listed) == 1 and listed[0]["status"]["phase"] == "Succeeded"
    artifact = listed[0]["status"]["artifacts"][0]
    assert artifact["file"] == "data.tar.zst" and artifact["rawBytes"] > 50 * 1024 * 1024

    docker_client.volumes.get(volume).remove()
    write_restore(config, name="bring-back", policy="cycle", volume=volume)
    dockvault("run", "--once", env=cli_env)

    assert snapshot_volume(docker_client, volume) == before
    restores = json.loads(dockvault("get", "restores", "-o", "json", env=cli_env).stdout)
    assert restores[0]["PHASE"] == "Succeeded" and restores[0]["BACKUP"] == listed[0]["spec"]["id"]

    # The request ran once: a second pass neither restores again nor fails on the now-existing volume.
    again = dockvault("run", "--once", env=cli_env)
    assert "restore bring-back: " not in again.stderr and "restore bring-back failed" not in again.stderr

    # The state dir is a cache: lost, it is rebuilt from the manifests, and the schedule does not restart.
    shutil.rmtree(cli_env["DOCKVAULT_STATE_DIR"])
    dockvault("run", "--once", env=cli_env)
    (row,) = json.loads(dockvault("get", "policies", "-o", "json", env=cli_env).stdout)
    assert row["status"]["lastSuccessfulBackup"]["id"] == listed[0]["spec"]["id"]
    assert [p.name for p in (repo_dir / "cycle").iterdir()] == [listed[0]["spec"]["id"]]


def test_artifact_restores_by_hand_with_tar_and_zstd(docker_client, volumes, repo_dir, cli_env, tmp_path):
    volume = volumes("e2e-hand")
    populate_volume(docker_client, volume, megabytes=2)
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    write_policy(config, name="byhand", volume=volume, repo=repo_dir)
    dockvault("backup", "byhand", env=cli_env)
    (artifact,) = repo_dir.glob("byhand/*/data.tar.zst")
    out = tmp_path / "by-hand"
    out.mkdir()
    subprocess.run(f"zstd -d -c '{artifact}' | tar -x --numeric-owner -C '{out}'", shell=True, check=True)
    source = Path(docker_client.volumes.get(volume).attrs["Mountpoint"])
    assert (out / "private" / "key").read_bytes() == (source / "private" / "key").read_bytes()
    assert os.readlink(out / "link-rel") == "text/d1/e1"


def test_bad_file_is_reported_and_other_policies_still_run(docker_client, volumes, repo_dir, cli_env):
    volume = volumes("e2e-good")
    populate_volume(docker_client, volume, megabytes=1)
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    write_policy(config, name="good", volume=volume, repo=repo_dir)
    write_policy(config, name="bad", volume=volume, repo=repo_dir, extra="  retention: {keepDaily: -1}\n")
    result = dockvault("run", "--once", env=cli_env, check=False)
    assert result.returncode == 1
    assert "bad.yaml: BackupPolicy bad: spec.retention.keepDaily: Input should be greater than or equal to 0" in result.stderr
    assert len(list(repo_dir.glob("good/*/manifest.json"))) == 1  # never run before, so due at once
    assert not (repo_dir / "bad").exists()
    table = dockvault("get", "policies", env=cli_env).stdout
    assert "good" in table and "InvalidSpec" in table


def test_missing_volume_fails_clearly_and_publishes_nothing(volumes, repo_dir, cli_env):
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    missing = volumes("never-created")
    write_policy(config, name="ghost", volume=missing, repo=repo_dir)
    result = dockvault("backup", "ghost", env=cli_env, check=False)
    assert result.returncode == 1
    assert f"target data: volume '{missing}' does not exist" in result.stderr
    assert list((repo_dir / "ghost").iterdir()) == []
    rows = json.loads(dockvault("get", "policies", "-o", "json", env=cli_env).stdout)
    ready = rows[0]["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "BackupFailed")
    assert missing in ready["message"]


def test_one_pass_runs_every_due_job_of_a_policy_one_after_another(docker_client, volumes, repo_dir, cli_env):
    volume = volumes("e2e-once")
    populate_volume(docker_client, volume, megabytes=2)
    before = snapshot_volume(docker_client, volume)
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    write_policy(config, name="busy", volume=volume, repo=repo_dir, extra='  verify: {schedule: "0 5 * * 0"}\n  objectives: {rto: 30m}\n')  # verify: drill's deprecated alias
    dockvault("backup", "busy", env=cli_env)
    docker_client.volumes.get(volume).remove()
    write_restore(config, name="busy-restore", policy="busy", volume=volume)

    result = dockvault("run", "--once", env=cli_env)  # a drill is due too: same policy, so they take turns
    assert "drill busy of backup" in result.stderr and "restore busy-restore succeeded" in result.stderr
    assert snapshot_volume(docker_client, volume) == before
    (row,) = json.loads(dockvault("get", "policies", "-o", "json", env=cli_env).stdout)
    assert row["status"]["lastDrill"]["phase"] == "Succeeded"
    assert row["status"]["lastSuccessfulDrill"] == row["status"]["lastDrill"]  # standalone writes it as Kubernetes does
    assert row["status"]["lastVerification"]["result"] == "Succeeded"  # the deprecated copy is still written
    assert row["status"]["measuredRto"]["source"] in ("drill", "restore")
    assert {c["type"]: c["status"] for c in row["status"]["conditions"]}["RTOMet"] == "True"
