"""The restore helper's verdict ("commit", "abort") reaches its script whenever dockvault sends it, on both
transports. On the api transport the verdict is written by a second exec that opens the control FIFO, writes and
closes at once; a FIFO drops what is in it when its last opener closes, so a verdict sent while the helper's tar
was still extracting used to vanish, and the helper then waited for it forever (seen under load over TLS)."""

from __future__ import annotations

import io
import tarfile

import pytest

from dockvault.engine.core import CONTROL, STREAM, Engine
from dockvault.sources.volume import RESTORE_SCRIPT, TARGET_MOUNT

pytestmark = pytest.mark.docker


def small_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        body = b"restored\n"
        info = tarfile.TarInfo("note.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


@pytest.mark.parametrize("transport", ["api", "fifo"])
def test_a_verdict_sent_before_tar_finished_is_not_lost(docker_client, test_image, volumes, transport):
    engine = Engine(docker_client, helper_image=test_image, transport=transport)
    volume = volumes("verdict")
    docker_client.volumes.create(volume)
    archive = small_tar()
    with engine.helper(["sh", "-c", RESTORE_SCRIPT, "sh", ".dockvault-restore-t", STREAM, CONTROL, "only"],
                       volume=volume, mount=TARGET_MOUNT, read_only=False, labels={}, stdin=True) as helper:
        with helper.writer() as out:
            out.write(archive[:512])  # tar is running and waits for the rest
            helper.decide("commit")
            out.write(archive[512:])
        result = helper.wait(timeout=60)
    assert result.exit_code == 0, result.stderr
    check = engine.client.containers.run(test_image, ["cat", "/target/note.txt"], entrypoint=[], remove=True,
                                         network_mode="none", volumes={volume: {"bind": "/target", "mode": "ro"}})
    assert check == b"restored\n"
