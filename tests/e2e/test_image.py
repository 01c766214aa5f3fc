"""The operator image: built from the repository's Dockerfile with no registry and no network, it runs
`dockvault`, and it serves as the helper image of a real volume backup and restore.

The base is a Debian bookworm minbase rootfs (python3, python3-venv, tar, zstd, findutils) made by
mmdebstrap and imported, cached by content tag (see tests/e2e/imagebuild.py); uncached, the whole module
takes about a minute and a half, cached about half a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dockvault import __version__

from tests.e2e import imagebuild
from tests.e2e.cli import dockvault, write_policy, write_restore
from tests.treecheck import populate_volume, snapshot_volume

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def operator_image(docker_client) -> str:
    image = imagebuild.operator_image(docker_client)
    print("operator image build timings:", {k: round(v, 1) for k, v in imagebuild.timings.items()})
    return image


def _run(client, image: str, command: list[str], **kwargs) -> tuple[int, str]:
    container = client.containers.run(image, command, detach=True, network_mode="none", **kwargs)
    try:
        status = container.wait(timeout=120)["StatusCode"]
        return status, container.logs().decode()
    finally:
        container.remove(force=True)


def test_image_runs_dockvault_as_non_root(docker_client, operator_image):
    status, out = _run(docker_client, operator_image, ["--version"])
    assert status == 0, out
    assert out.strip() == f"dockvault {__version__}"

    config = docker_client.images.get(operator_image).attrs["Config"]
    assert config["Entrypoint"] == ["dockvault"]
    assert config["User"] == "dockvault"
    status, out = _run(docker_client, operator_image, ["-c", "id -un; id -Gn; tar --version; zstd --version; find --version"],
                       entrypoint=["sh"])
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0] == "dockvault" and "docker" in lines[1].split()
    assert "GNU tar" in out and "Zstandard" in out and "GNU findutils" in out


def test_image_is_the_helper_of_a_backup_and_restore(docker_client, operator_image, volumes, repo_dir, cli_env):
    volume = volumes("img-data")
    populate_volume(docker_client, volume, megabytes=3)
    before = snapshot_volume(docker_client, volume)
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    write_policy(config, name="imaged", volume=volume, repo=repo_dir)

    dockvault("--version", env=cli_env)
    dockvault("backup", "imaged", "--helper-image", operator_image, env=cli_env)
    (backup,) = json.loads(dockvault("get", "backups", "-o", "json", env=cli_env).stdout)
    assert backup["status"]["phase"] == "Succeeded"

    docker_client.volumes.get(volume).remove()
    write_restore(config, name="imaged-back", policy="imaged", volume=volume)
    dockvault("run", "--once", "--metrics-addr", "off", "--helper-image", operator_image, env=cli_env)
    assert snapshot_volume(docker_client, volume) == before
    (restore,) = json.loads(dockvault("get", "restores", "-o", "json", env=cli_env).stdout)
    assert restore["PHASE"] == "Succeeded"
