"""examples/compose runs dockvault as a container and backs up a volume: `docker-compose up`, a manifest
appears in the backups directory, metrics answer on 127.0.0.1, `docker-compose down`.

Compose is Debian's docker-compose 1.29 (python; installed by scripts/harness.sh), which talks to the
harness's dockerd 20.10 through DOCKER_HOST. Nothing is pulled: the image is the one test_image.py builds
(tests/e2e/imagebuild.py, built once per test process), named through DOCKVAULT_IMAGE, and the service uses
`pull_policy: never` and `--no-build`. The example's paths and ports come from the variables compose.yaml
reads (socket, backups and pipe directories under tmp_path, a free loopback port for the metrics), and
the policy is the example policy with its volume and storage path pointed at this test's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import IN_HARNESS
from tests.e2e import imagebuild
from tests.e2e.cli import dockvault
from tests.treecheck import populate_volume

pytestmark = pytest.mark.docker

EXAMPLE = imagebuild.REPO_ROOT / "examples" / "compose"
IMAGE_UID = 10001  # the Dockerfile's DOCKVAULT_UID default


def _compose_cli() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if IN_HARNESS:
        pytest.fail("inside the harness, but neither docker-compose nor `docker compose` is installed")
    pytest.skip("no docker-compose; run through scripts/harness.sh, which installs it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_example_policies_validate(cli_env):
    dockvault("validate", str(EXAMPLE / "policies"), env=cli_env)


def test_compose_example_backs_up_a_volume(docker_client, volumes, tmp_path, cli_env):
    compose = _compose_cli()
    image = imagebuild.operator_image(docker_client)
    volume = volumes("compose-data")
    populate_volume(docker_client, volume, megabytes=2)

    backups, pipes, policies = tmp_path / "backups", tmp_path / "pipes", tmp_path / "policies"
    for path in (backups, pipes):
        path.mkdir()
        os.chown(path, IMAGE_UID, IMAGE_UID)  # the image's non-root user writes there
    policies.mkdir()
    policy = yaml.safe_load((EXAMPLE / "policies" / "myapp.yaml").read_text())
    policy["spec"]["targets"][0]["volume"]["name"] = volume
    policy["spec"]["storage"]["local"]["path"] = str(backups)
    (policies / "myapp.yaml").write_text(yaml.safe_dump(policy))

    sock = os.environ["DOCKER_HOST"].removeprefix("unix://")
    port = _free_port()
    project = f"dvcompose{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DOCKVAULT_IMAGE": image, "DOCKVAULT_HELPER_IMAGE": image, "DOCKER_SOCKET": sock,
           "DOCKER_GID": str(os.stat(sock).st_gid), "DOCKVAULT_POLICY_DIR": str(policies),
           "DOCKVAULT_BACKUP_DIR": str(backups), "DOCKVAULT_PIPE_DIR": str(pipes),
           "DOCKVAULT_METRICS_ADDR": f"127.0.0.1:{port}"}
    base = [*compose, "--project-directory", str(EXAMPLE), "-f", str(EXAMPLE / "compose.yaml"), "-p", project]

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=180,
                                stdin=subprocess.DEVNULL, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def logs() -> str:
        return run("logs", "--no-color", check=False).stdout

    try:
        run("up", "-d", "--no-build")
        (container,) = docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.attrs["Config"]["User"] == "dockvault"

        deadline = time.monotonic() + 120
        manifests: list[Path] = []
        while time.monotonic() < deadline and not manifests:
            container.reload()
            assert container.status == "running", logs()
            manifests = list(backups.glob("myapp/*/manifest.json"))
            time.sleep(0.5)
        assert manifests, f"no backup completed within 120 s\n{logs()}"
        assert (manifests[0].parent / "data.tar.zst").stat().st_size > 0

        body = ""
        while time.monotonic() < deadline:  # the gauges come from the manifests: the backup shows at once
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if 'dockvault_repository_backups{' in body and 'policy="myapp"' in body:
                break
            time.sleep(0.5)
        assert 'policy="myapp"' in body, body[-2000:]
        assert not list(pipes.iterdir())  # every helper's pipe directory was removed again
    finally:
        run("down", "-v", "--timeout", "30", check=False)

    assert not docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
    assert not docker_client.volumes.list(filters={"label": f"com.docker.compose.project={project}"})
