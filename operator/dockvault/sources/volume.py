"""Docker volumes: archived with tar by a read-only helper container, restored through a staging folder."""

from __future__ import annotations

from collections.abc import Iterator

from ..api.backup import Artifact
from ..api.policy import BackupTarget, DrillCheck
from ..api.restore import RestoreTarget
from ..engine.core import CONTROL, LABEL_DRILL, STREAM, Engine, EngineError, Helper
from ..engine.fifo import PeerGone
from ..engine.quiesce import Journal, quiesced
from .base import BackupContext, Opener, RestoreContext, RestoreRefused, SourceError
from .tarcheck import checked_tar
from .tarindex import tree_index
from .tarstream import EndMarker

kind = "volume"

SOURCE_MOUNT = "/source"
TARGET_MOUNT = "/target"
# POSIX (pax) format keeps sub-second mtimes and long names without GNU extensions; atime/ctime are noise.
# 1 MiB records: tar's default 10 KiB would cost a pipe round trip and a compress call per 10 KiB.
TAR_CREATE = ["tar", "--create", "--file", STREAM, "--format=posix", "--pax-option=delete=atime,delete=ctime",
              "--record-size=1M", "--numeric-owner", "--directory", SOURCE_MOUNT, "."]
# GNU tar exits 1 when a file changed while it was read: the archive is complete, the file may be torn.
TAR_CHANGED = 1

# Extract into a staging folder inside the volume, then swap it in only when dockvault says "commit",
# so a refused or broken archive never replaces what the volume held.
RESTORE_SCRIPT = r"""
set -eu
stage="/target/$1" stream="$2" control="$3"
[ -p "$control" ] || mkfifo "$control"
touch -r /target /tmp/.dockvault-before
trap 'rm -rf -- "$stage"; touch -r /tmp/.dockvault-before /target' EXIT
mkdir -- "$stage"
tar --extract --read-full-records --file "$stream" --directory "$stage" --numeric-owner --same-owner --same-permissions
read -r decision < "$control"
[ "$decision" = commit ] || exit 3
touch -r "$stage" /tmp/.dockvault-mtime
find /target -mindepth 1 -maxdepth 1 ! -path "$stage" -exec rm -rf -- {} +
find "$stage" -mindepth 1 -maxdepth 1 -exec mv -t /target -- {} +
chown --reference="$stage" /target
chmod --reference="$stage" /target
rmdir -- "$stage"
trap - EXIT
touch -r /tmp/.dockvault-mtime /target
"""


def _archive(engine: Engine, volume: str, quiesce: str, labels: dict[str, str], notes: list[str],
             journal: Journal | None = None) -> Iterator[bytes]:
    if not engine.volume_exists(volume):
        raise SourceError(f"volume {volume!r} does not exist on the Docker host")
    end = EndMarker()
    opened = True
    engine.transport  # noqa: B018 - chosen (a probe may run) before anything is quiesced, not while it waits
    with quiesced(engine, volume, quiesce, journal):
        with engine.helper(TAR_CREATE, volume=volume, mount=SOURCE_MOUNT, read_only=True, labels=labels) as helper:
            try:
                yield from end.watch(helper.read())
            except PeerGone:
                opened = False  # the exit code below says why, or the checks after it
            result = helper.wait()
            pipes = str(helper.pipe_dir)
    # The archive is published only when tar exited 0 (or 1: a file changed), the helper wrote into our
    # stream, and the stream itself ends with tar's end-of-archive marker.
    if result.exit_code not in (0, TAR_CHANGED):
        raise SourceError(f"tar of volume {volume!r} failed with exit code {result.exit_code}: {result.stderr}")
    if not opened:
        raise SourceError(
            f"the helper archiving volume {volume!r} exited {result.exit_code} without writing into dockvault's stream: "
            f"the Docker engine cannot see dockvault's temp dir ({pipes}). Use the api transport (--transport api, "
            "or DOCKVAULT_TRANSPORT=api; auto chooses it when the engine does not share the temp dir), or give "
            "dockvault a temp dir the engine shares (TMPDIR; in a container, bind-mount it at the same path)")
    if not end.seen:
        raise SourceError(f"the archive of volume {volume!r} is incomplete: "
                          f"{end.problem or 'the stream ended without tar end-of-archive marker'} "
                          f"(after {end.members} members); nothing was published")
    if result.exit_code == TAR_CHANGED:
        notes.append(f"files changed while volume {volume} was archived (consider quiesce: stop): {result.stderr}")


def backup(target: BackupTarget, ctx: BackupContext) -> list[Artifact]:
    spec = target.volume
    assert spec is not None
    notes: list[str] = []
    details = {"volume": spec.name, "quiesce": spec.quiesce, "helperImage": ctx.engine.helper_image,
               "helperImageId": ctx.engine.helper_image_id(), "format": "tar (POSIX pax)"}
    chunks = _archive(ctx.engine, spec.name, spec.quiesce, ctx.labels(target.name), notes, ctx.journal)
    artifact = ctx.publish(target=target.name, source=kind, base_name=f"{target.name}.tar", chunks=chunks, details=details)
    if notes:
        artifact = artifact.model_copy(update={"details": {**artifact.details, "warning": "; ".join(notes)[:500]}})
    return [artifact]


def _abort(helper: Helper) -> None:
    """Tell the helper to drop its staging folder, and let it finish before it is removed."""
    try:
        helper.decide("abort")
    except (PeerGone, OSError, EngineError):
        pass  # the helper is gone already; its trap removed the staging folder
    try:
        helper.wait(timeout=120)
    except Exception:  # noqa: BLE001 - cleanup is best effort; the job already failed
        pass


def artifacts_for(artifacts: list[Artifact], destination: RestoreTarget) -> list[Artifact]:
    return artifacts[:1]


def restore(destination: RestoreTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext) -> None:
    ((_, opener),) = streams
    spec = destination.volume
    assert spec is not None
    engine = ctx.engine
    existed = engine.volume_exists(spec.name)
    if existed and not spec.overwrite:
        raise RestoreRefused(f"volume {spec.name!r} already exists; set overwrite: true to replace its contents")
    if existed:
        running = [c.name for c in engine.containers_using(spec.name) if c.status in ("running", "paused")]
        if running:
            raise RestoreRefused(f"volume {spec.name!r} is in use by running containers {', '.join(running)}; stop them first")
    else:
        engine.create_volume(spec.name, ctx.labels(destination.from_))
    stage = f".dockvault-restore-{ctx.job_id}"
    try:
        with engine.helper(["sh", "-c", RESTORE_SCRIPT, "sh", stage, STREAM, CONTROL], volume=spec.name,
                           mount=TARGET_MOUNT, read_only=False, labels=ctx.labels(destination.from_),
                           stdin=True) as helper:
            try:
                with helper.writer() as out:
                    for block in checked_tar(ctx.stream(opener)):
                        out.write(block)
                helper.decide("commit")
            except (PeerGone, BrokenPipeError, ConnectionResetError):
                pass  # the helper's tar stopped reading: its exit code and message follow
            except BaseException:
                _abort(helper)
                raise
            result = helper.wait()
        if result.exit_code != 0:
            raise SourceError(f"extracting into volume {spec.name!r} failed (exit {result.exit_code}): {result.stderr}")
    except BaseException:
        if not existed:
            engine.remove_volume(spec.name)
        raise
    if not existed:
        ctx.notes.append(f"created volume {spec.name}")


def drill(target: BackupTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext,
          checks: list[DrillCheck]) -> None:
    """Restore into a scratch volume, archive that again, and compare it path by path with the backup."""
    (artifact, opener), *_ = streams
    scratch = f"dockvault-drill-{ctx.job_id}-{target.name}"
    ctx.engine.create_volume(scratch, {**ctx.labels(target.name), LABEL_DRILL: "true"})
    try:
        destination = RestoreTarget.model_validate({"from": target.name, "volume": {"name": scratch, "overwrite": True}})
        restore(destination, [(artifact, opener)], ctx)
        expected = tree_index(ctx.stream(opener))
        restored = tree_index(_archive(ctx.engine, scratch, "none", ctx.labels(target.name), []))
        problems = expected.differences(restored)
        if problems:
            raise SourceError(f"the restored volume differs from backup: {'; '.join(problems)}")
        ctx.notes.append(f"{target.name}: {len(expected.entries)} paths restored identical")
    finally:
        ctx.engine.remove_volume(scratch)
