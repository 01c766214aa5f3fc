"""The restore helper's verdict ("commit", "abort") reaches its script whenever dockvault sends it, on both
transports. On the api transport the verdict is written by a second exec that opens the control FIFO, writes and
closes at once; a FIFO drops what is in it when its last opener closes, so a verdict sent while the helper's tar
was still extracting used to vanish, and the helper then waited for it forever (seen under load over TLS)."""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from dockvault.engine.core import CONTROL, STREAM, Engine
from dockvault.engine.fifo import PeerGone
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


def restore_helper(docker_client, image: str, volume: str, transport: str):
    """A restore helper (step "only") into a new volume, on `transport`."""
    engine = Engine(docker_client, helper_image=image, transport=transport)
    docker_client.volumes.create(volume)
    return engine, engine.helper(["sh", "-c", RESTORE_SCRIPT, "sh", ".dockvault-restore-t", STREAM, CONTROL, "only"],
                                 volume=volume, mount=TARGET_MOUNT, read_only=False, labels={}, stdin=True)


@pytest.mark.parametrize("transport", ["api", "fifo"])
def test_a_verdict_sent_before_tar_finished_is_not_lost(docker_client, test_image, volumes, transport):
    volume = volumes("verdict")
    archive = small_tar()
    engine, running = restore_helper(docker_client, test_image, volume, transport)
    with running as helper:
        with helper.writer() as out:
            out.write(archive[:512])  # tar is running and waits for the rest
            helper.decide("commit")
            out.write(archive[512:])
        result = helper.wait(timeout=60)
    assert result.exit_code == 0, result.stderr
    check = engine.client.containers.run(test_image, ["cat", "/target/note.txt"], entrypoint=[], remove=True,
                                         network_mode="none", volumes={volume: {"bind": "/target", "mode": "ro"}})
    assert check == b"restored\n"


def _processes(container) -> str:
    """The command lines of every process in the helper (minbase has no ps)."""
    result = container.exec_run(["sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"])
    return result.output.decode(errors="replace")


@pytest.mark.parametrize("transport", ["api", "fifo"])
def test_the_restore_helper_writes_the_volume_out_while_tar_extracts_and_stops_with_it(
        docker_client, test_image, volumes, transport):
    """The helper's exit syncs the volume's filesystem (Docker unmounts its overlayfs): a loop beside tar writes the
    files out as they come, so that exit does not write the whole restore in one go."""
    archive = small_tar()
    _, running = restore_helper(docker_client, test_image, volumes("writer"), transport)
    with running as helper:
        with helper.writer() as out:
            out.write(archive[:512])  # tar is running and waits for the rest
            seen = ""
            for _ in range(50):
                seen = _processes(helper.container)
                if "sleep 0.5" in seen or "sync -f /target" in seen:
                    break
                time.sleep(0.1)
            assert "sleep 0.5" in seen or "sync -f /target" in seen, seen
            out.write(archive[512:])
        helper.decide("commit")
        result = helper.wait(timeout=60)
        assert result.exit_code == 0, result.stderr
        if transport == "api":  # the container outlives the script there: the loop went with tar
            time.sleep(0.6)
            assert "sleep 0.5" not in _processes(helper.container)


@pytest.mark.parametrize("transport", ["api", "fifo"])
def test_a_helper_that_stops_reading_fails_the_writer_at_once(test_image, volumes, transport):
    """A helper whose command exits before it read its input (its tar failed, a full disk) must fail dockvault's
    write as a broken pipe, so the job reports the helper's exit code and message. On the api transport the
    engine simply stops reading the connection: the write used to wait for the socket's timeout (300 s in
    production, 120 s here) and then failed with a bare "timed out"."""
    import docker

    client = docker.from_env(timeout=120)
    try:
        volume = volumes("stops-reading")
        client.volumes.create(volume)
        engine = Engine(client, helper_image=test_image, transport=transport)
        with engine.helper(["sh", "-c", 'echo "no space left" >&2; exit 2', STREAM], volume=volume,
                           mount=TARGET_MOUNT, read_only=False, labels={}, stdin=True) as helper:
            with pytest.raises((PeerGone, BrokenPipeError, ConnectionResetError)):  # what _extract expects
                with helper.writer() as out:
                    for _ in range(256):  # 256 MiB: far more than any socket and pipe buffers hold
                        out.write(bytes(1 << 20))
            result = helper.wait(timeout=60)
        assert result.exit_code == 2 and "no space left" in result.stderr
    finally:
        client.close()
