"""Processes that meet: two `dockvault run` on one state dir, a manual backup during the service's backup of the
same policy, and two hosts sharing one repository."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.cli import dockvault, write_policy
from tests.treecheck import populate_volume
from tests.waiting import eventually

pytestmark = pytest.mark.docker


def policy(config: Path, *, name: str, volume: str, repo: Path, host: str = "local", quiesce: str = "none",
           extra: str = "") -> None:
    write_policy(config, name=name, volume=volume, repo=repo, extra=extra, file=f"{name}-{host}.yaml", host=host,
                 quiesce=quiesce)


def spawn_run(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dockvault", "run", "--metrics-addr", "off", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_second_run_on_the_same_state_dir_is_refused(cli_env, volumes, docker_client, repo_dir, tmp_path):
    source = volumes("conc-run")
    docker_client.volumes.create(source)
    policy(Path(cli_env["DOCKVAULT_CONFIG_DIR"]), name="twice", volume=source, repo=repo_dir)
    first = spawn_run(cli_env, log=tmp_path / "first.log")
    try:
        eventually("the first run holding the state dir",
                   lambda: (tmp_path / "state" / "run.lock").is_file()
                   and (tmp_path / "state" / "run.lock").read_text().strip() == str(first.pid))
        second = dockvault("run", "--metrics-addr", "off", env=cli_env, check=False)
        assert second.returncode == 1
        assert f"another `dockvault run` (pid {first.pid}) is using state dir" in second.stderr
        assert "Traceback" not in second.stderr
        once = dockvault("run", "--once", env=cli_env, check=False)
        assert once.returncode == 1 and f"pid {first.pid}" in once.stderr
        assert first.poll() is None  # the first one was not disturbed
    finally:
        stop(first)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()


def test_a_manual_backup_while_the_service_backs_up_the_same_policy(cli_env, volumes, docker_client, repo_dir,
                                                                     tmp_path, test_image, containers):
    """The service's backup holds the policy for 20 s (`quiesce: stop` of an application that ignores SIGTERM): a
    manual backup is refused naming the service, and with --wait runs once the service's backup is done."""
    source = volumes("conc-manual")
    populate_volume(docker_client, source, megabytes=5)
    api = docker_client.api
    app = api.create_container(test_image, ["sh", "-c", "while true; do sleep 1; done"], stop_timeout=20,
                               host_config=api.create_host_config(network_mode="none", binds={source: {"bind": "/data"}}))
    containers.append(docker_client.containers.get(app["Id"]))
    containers[-1].start()
    policy(Path(cli_env["DOCKVAULT_CONFIG_DIR"]), name="busy", volume=source, repo=repo_dir, quiesce="stop")
    lock = tmp_path / "state" / "locks" / "busy.lock"
    service = spawn_run(cli_env, log=tmp_path / "run.log")  # never backed up: due at once
    try:
        eventually("the service's backup holding the policy", lambda: lock.is_file()
                   and lock.read_text().startswith(f"{service.pid} "), timeout=90, interval=0.05)
        refused = dockvault("backup", "busy", env=cli_env, check=False)
        waited = dockvault("backup", "busy", "--wait", "300", env=cli_env, check=False)
        listing = dockvault("get", "backups", "-p", "busy", "-o", "json", env=cli_env)
    finally:
        stop(service)
    assert refused.returncode == 1
    assert f"pid {service.pid}" in refused.stderr and "busy" in refused.stderr and "Traceback" not in refused.stderr
    assert waited.returncode == 0, waited.stderr
    folders = sorted((repo_dir / "busy").iterdir())
    assert len(folders) == 2 and all((f / "manifest.json").is_file() for f in folders)
    assert not list(repo_dir.rglob("*.dvtmp"))
    assert len(json.loads(listing.stdout)) == 2
    assert docker_client.containers.list(all=True, filters={"label": "dockvault.io/policy=busy"}) == []
    containers[-1].reload()
    assert containers[-1].status == "running"


def test_two_hosts_on_one_repository_keep_their_policies_apart(cli_env, volumes, docker_client, repo_dir, tmp_path):
    """Host A and host B each run a policy named `app` into one repository, with retention; neither deletes,
    lists or restores the other's backups."""
    sources = {host: volumes(f"conc-{host}") for host in ("host-a", "host-b")}
    envs = {}
    for host, source in sources.items():
        populate_volume(docker_client, source, megabytes=2, seed=len(host) + ord(host[-1]))
        config, state = tmp_path / f"config-{host}", tmp_path / f"state-{host}"
        config.mkdir()
        policy(config, name="app", volume=source, repo=repo_dir, host=host, extra="  retention: {keepLast: 1}\n")
        envs[host] = dict(cli_env, DOCKVAULT_CONFIG_DIR=str(config), DOCKVAULT_STATE_DIR=str(state))
    for _ in range(2):
        for host in sources:
            result = dockvault("run", "--once", "--host", host, env=envs[host], check=False)
            assert result.returncode == 0, result.stderr
            dockvault("backup", "app", env=envs[host])
    listed = json.loads(dockvault("get", "backups", "-p", "app", "-o", "json", env=envs["host-a"]).stdout)
    assert sorted(b["spec"]["host"] for b in listed) == ["host-a", "host-b"], listed  # keepLast 1 each, own only


def test_start_up_leaves_the_helpers_of_another_live_dockvault_alone(cli_env, docker_client, test_image, containers):
    """Two dockvault instances (own config and state dirs) on one engine: a start-up sweeps helpers of policies it
    does not know only when the process that made them is gone (regression: it removed a live backup's helper)."""
    import os
    import socket

    from dockvault.engine.core import LABEL_JOB, LABEL_OWNER, LABEL_POLICY

    dead = subprocess.Popen(["true"])
    dead.wait()
    made = {}
    for who, pid in (("live", os.getpid()), ("dead", dead.pid)):
        made[who] = docker_client.containers.create(test_image, ["true"], network_mode="none", labels={
            LABEL_JOB: "x", LABEL_POLICY: f"other-{who}-{os.getpid()}", LABEL_OWNER: f"{socket.gethostname()}:{pid}"})
        containers.append(made[who])
    result = dockvault("run", "--once", env=cli_env, check=False)
    assert result.returncode == 0, result.stderr
    names = {c.id for c in docker_client.containers.list(all=True, filters={"label": LABEL_JOB})}
    assert made["live"].id in names and made["dead"].id not in names
