"""dockvault whose temp dir the engine cannot see (its own mount namespace with a private TMPDIR, the local
socket). With the FIFO transport forced, the helper's tar writes into a plain file on the engine's side and
exits 0: the backup must fail and say why, never report success with an empty archive (the bug of issue
"Remote engines" part 0). With the default (auto), dockvault notices and streams through the Docker API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.cli import dockvault, write_policy
from tests.treecheck import populate_volume

pytestmark = pytest.mark.docker

PRIVATE_TMP = 'mount -t tmpfs dockvault-private "$1" && TMPDIR="$1" exec "$0" -m dockvault backup private'


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_backup_whose_helper_cannot_see_the_temp_dir_fails_and_says_why(docker_client, volumes, repo_dir, cli_env,
                                                                          tmp_path):
    source = volumes("private-tmp")
    populate_volume(docker_client, source, megabytes=1)
    write_policy(Path(cli_env["DOCKVAULT_CONFIG_DIR"]), name="private", volume=source, repo=repo_dir)
    private = tmp_path / "private-tmp"
    private.mkdir()

    def backup_in_private_namespace(transport: str) -> subprocess.CompletedProcess:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_TMP,
                               sys.executable, str(private)], env={**cli_env, "DOCKVAULT_TRANSPORT": transport},
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    result = backup_in_private_namespace("fifo")

    assert result.returncode != 0, result.stderr
    assert "without writing into dockvault's stream" in result.stderr
    assert "cannot see dockvault's temp dir" in result.stderr
    assert not list(repo_dir.glob("private/*/manifest.json"))  # nothing published
    (row,) = json.loads(dockvault("get", "policies", "-o", "json", env=cli_env).stdout)
    assert row["status"]["lastBackup"]["phase"] == "Failed"
    assert "lastSuccessfulBackup" not in row["status"]
    # auto: the engine does not see the temp dir, so the streams go through the Docker API, and it works
    result = backup_in_private_namespace("auto")
    assert result.returncode == 0, result.stderr
    assert "helper streams use the api transport" in result.stderr
    (manifest,) = repo_dir.glob("private/*/manifest.json")
    (artifact,) = json.loads(manifest.read_text())["status"]["artifacts"]
    assert artifact["rawBytes"] > 1_000_000  # the whole volume, not an empty archive
