"""A full disk under the repository and under the state dir (small tmpfs mounts): the backup fails cleanly with a
message that says the disk is full, publishes no manifest, leaves no temporaries, and the earlier backups stay
intact and restorable."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cli import dockvault, write_restore
from tests.treecheck import volume_path

pytestmark = pytest.mark.docker


@pytest.fixture
def small_disk(tmp_path):
    """Factory: `small_disk(name, megabytes)` -> a tmpfs of that size, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def make(name: str, megabytes: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def policy(config: Path, repo: Path, volume: str) -> None:
    (config / "full.yaml").write_text(f"""\
apiVersion: dockvault.io/v1alpha1
kind: BackupPolicy
metadata: {{name: full}}
spec:
  targets:
    - name: data
      volume: {{name: {volume}}}
  storage: {{local: {{path: {repo}}}}}
""")


def fill(folder: Path, megabytes: int, name: str = "blob") -> None:
    (folder / name).write_bytes(os.urandom(megabytes << 20))  # incompressible


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_intact_and_restorable(cli_env, docker_client, volumes, expected: dict[str, str], ids: list[str],
                                 repo: Path) -> None:
    listed = json.loads(dockvault("get", "backups", "-p", "full", "-o", "json", env=cli_env).stdout)
    assert [b["spec"]["id"] for b in listed] == ids
    for folder in (repo / "full").iterdir():
        assert (folder / "manifest.json").is_file(), f"{folder.name}: no manifest"
    assert not list(repo.rglob("*.dvtmp"))
    target = volumes("full-restored")
    write_restore(Path(cli_env["DOCKVAULT_CONFIG_DIR"]), name="full-restore", policy="full", volume=target)
    result = dockvault("run", "--once", env=cli_env, check=False)
    assert result.returncode == 0, result.stderr
    assert tree_digest(volume_path(docker_client, target)) == expected


def test_a_full_repository_disk_fails_cleanly_and_keeps_earlier_backups(cli_env, docker_client, volumes, small_disk):
    repo = small_disk("repo", 12)
    source = volumes("full-src")
    docker_client.volumes.create(source)
    fill(volume_path(docker_client, source), 5)
    expected = tree_digest(volume_path(docker_client, source))
    policy(Path(cli_env["DOCKVAULT_CONFIG_DIR"]), repo, source)
    dockvault("backup", "full", env=cli_env)
    first = [f.name for f in (repo / "full").iterdir()]

    fill(volume_path(docker_client, source), 8, "more")  # 13 MiB now: the second backup cannot fit
    result = dockvault("backup", "full", env=cli_env, check=False)
    assert result.returncode == 1
    assert "disk is full" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert (repo / "full").stat() and sorted(f.name for f in (repo / "full").iterdir()) == first
    (volume_path(docker_client, source) / "more").unlink()
    assert_intact_and_restorable(cli_env, docker_client, volumes, expected, first, repo)


def test_a_full_state_disk_fails_cleanly_and_keeps_earlier_backups(cli_env, docker_client, volumes, small_disk,
                                                                   repo_dir):
    state = small_disk("state", 2)
    cli_env = dict(cli_env, DOCKVAULT_STATE_DIR=str(state))
    source = volumes("full-state-src")
    docker_client.volumes.create(source)
    fill(volume_path(docker_client, source), 1)
    expected = tree_digest(volume_path(docker_client, source))
    policy(Path(cli_env["DOCKVAULT_CONFIG_DIR"]), repo_dir, source)
    dockvault("backup", "full", env=cli_env)
    first = [f.name for f in (repo_dir / "full").iterdir()]

    ballast = state / "ballast"
    with open(ballast, "wb", buffering=0) as f:  # every free byte of the state disk, down to the last page
        for piece in (65536, 4096, 1):
            try:
                while f.write(b"\0" * piece):
                    pass
            except OSError:
                pass
    result = dockvault("backup", "full", env=cli_env, check=False)
    assert result.returncode == 1
    assert "disk is full" in (result.stdout + result.stderr) and "Traceback" not in result.stderr, result.stderr
    assert sorted(f.name for f in (repo_dir / "full").iterdir()) == first  # nothing published
    ballast.unlink()
    assert_intact_and_restorable(cli_env, docker_client, volumes, expected, first, repo_dir)
    dockvault("backup", "full", env=cli_env)  # and the next one works again
