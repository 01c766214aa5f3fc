"""Docker volumes: archived with tar by a read-only helper container, restored through a staging folder."""

from __future__ import annotations

import collections
import itertools
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import zstandard

from ..api.backup import Artifact
from ..api.policy import BackupTarget, CompressionSpec, DrillCheck
from ..api.restore import RestoreTarget
from ..engine.core import CONTROL, LABEL_DRILL, STREAM, Engine, EngineError, Helper
from ..engine.fifo import PeerGone
from ..engine.quiesce import Journal, quiesced
from ..storage.codec import ChecksumMismatch, ZstdFrames, compressed, read_chunks
from .base import BackupContext, Opener, RestoreContext, RestoreRefused, SourceError
from .tarcheck import checked_tar, new_checker
from .tarindex import chain_index, tree_index
from .tarstream import EndMarker

kind = "volume"
# Restores extract into a staging folder and swap it in only on "commit", sent once the whole stream was read,
# checked and its checksum matched: the artifacts need no checksum pass of their own before (actions/restore.py).
staged = True

SOURCE_MOUNT = "/source"
TARGET_MOUNT = "/target"
# POSIX (pax) format keeps sub-second mtimes and long names without GNU extensions; atime/ctime are noise.
# 1 MiB records: tar's default 10 KiB would cost a pipe round trip and a compress call per 10 KiB.
TAR_CREATE = ["tar", "--create", "--file", STREAM, "--format=posix", "--pax-option=delete=atime,delete=ctime",
              "--record-size=1M", "--numeric-owner", "--directory", SOURCE_MOUNT, "."]
# GNU tar exits 1 when a file changed while it was read: the archive is complete, the file may be torn.
TAR_CHANGED = 1
# Chained backups (spec.differential / spec.incremental): tar's snapshot file lives in the helper's /tmp, is
# copied in from the base backup and out into the repository. The volume is mounted into a new helper each
# time, maybe on another device number (an engine restart, another host): --no-check-device keeps tar from
# taking every directory for new.
SNAPSHOT = "/tmp/dockvault.snar"
LISTED = [f"--listed-incremental={SNAPSHOT}", "--no-check-device"]
SNAPSHOT_SPOOL = 8 << 20  # bytes of a snapshot file held in memory; the rest spools to disk

# On a remote engine the helper compresses (zstd, the policy's level): the network and the engine then carry the
# compressed bytes. The engine relays an exec's output through containerd's shim and dockerd (about 5 s of CPU per
# raw GiB between them here, TLS included, on top of dockvault's own work), and a real network link is slower still.
# dockvault still proves the archive: it decompresses a copy and walks tar's headers to the end-of-archive marker.
# A helper image without zstd sends the plain tar, which dockvault compresses itself. tar's exit code wins; a zstd
# failure after a good tar becomes 2 (tar's own "fatal"), never 1 ("a file changed").
TAR_ZSTD = r"""
out=$1 level=$2
shift 2
[ "$out" = - ] || exec > "$out"
command -v zstd > /dev/null 2>&1 || exec "$@"
ultra=
[ "$level" -le 19 ] || ultra=--ultra
{ "$@"; echo "$?" > /tmp/.dockvault-tar-rc; } | zstd -q -T0 $ultra "-$level"
zrc=$?
rc=$(cat /tmp/.dockvault-tar-rc 2> /dev/null || echo 2)
if [ "$zrc" != 0 ]; then
  echo "zstd failed with exit code $zrc" >&2
  [ "$rc" != 0 ] && [ "$rc" != 1 ] || rc=2
fi
exit "$rc"
"""
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Extract into a staging folder inside the volume, then swap it in only when dockvault says "commit",
# so a refused or broken archive never replaces what the volume held. A chain (a full, then differentials or
# incrementals) is extracted into the same staging folder by one helper per archive: step first|next keeps
# the folder on "next"; step last|only swaps it in on "commit". Extra arguments go to tar (the chain's
# --listed-incremental=/dev/null, which deletes what a later backup no longer had). The script holds the control
# FIFO open (fd 3) from its start: a verdict written before it reaches `read` (the api transport's decide
# opens the FIFO, writes and closes at once) stays in the pipe instead of vanishing with the last opener.
# While tar extracts, a loop writes the volume's filesystem out every half second (`sync -f`, syncfs): the
# helper's exit syncs that filesystem anyway (Docker unmounts the container's overlayfs), and would otherwise
# write the whole restore in one go after it, 0.6-0.9 s for 1 GiB here; now the disk works while tar does.
# With --zstd first among the extra arguments, the stream is the zstd artifact and the helper decompresses it (a
# remote engine: see _wire_codec); after tar, `cat` reads the rest (the archive's zero padding), so zstd never
# fails writing it. dockvault proves the whole artifact itself before it says "commit".
# From the FIFO that dockvault fills 1 MiB at a time (the fifo transport), tar reads 1 MiB records: with its default
# 10 KiB ones, extracting 1 GiB from such a pipe took it 1.4 s, with 1 MiB records 0.9 s. From a 64 KiB pipe (zstd's
# output; the api transport's stdin), waiting for whole 1 MiB records stalled the writer and took longer: the default
# stays there.
RESTORE_SCRIPT = r"""
set -eu
stage="/target/$1" before="/target/$1.before" stream="$2" control="$3" step="$4"
shift 4
codec=plain
if [ "${1-}" = --zstd ]; then codec=zstd; shift; fi
[ -p "$control" ] || mkfifo "$control"
exec 3<>"$control"
case "$step" in first|only) touch -r /target /tmp/.dockvault-before ;; *) touch -r "$before" /tmp/.dockvault-before ;; esac
(while sleep 0.5; do sync -f /target || exit 0; done) 2>/dev/null & writer=$!
trap 'kill "$writer" 2>/dev/null || :; rm -rf -- "$stage" "$before"; touch -r /tmp/.dockvault-before /target' EXIT
case "$step" in first|only) mkdir -- "$stage"; touch -r /tmp/.dockvault-before "$before" ;; esac
if [ "$codec" = zstd ]; then
  zstd -d -q -c "$stream" | { tar --extract --read-full-records --file - --directory "$stage" --numeric-owner --same-owner --same-permissions "$@"; cat > /dev/null; }
else
  records=
  [ "$stream" = - ] || records=--record-size=1M
  tar --extract --read-full-records $records --file "$stream" --directory "$stage" --numeric-owner --same-owner --same-permissions "$@"
fi
kill "$writer" 2>/dev/null || :
read -r decision <&3
case "$step" in first|next) [ "$decision" = next ] || exit 3; trap - EXIT; exit 0 ;; esac
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


class _HelperZstd:
    """The stream of a helper that compresses (TAR_ZSTD), passed on as it is. A copy is decompressed here, so that
    `end` walks tar's own stream; `problem` tells when that copy is not whole zstd. A plain tar (an image without
    zstd) is compressed here as `spec` says."""

    def __init__(self, end: EndMarker, spec: CompressionSpec) -> None:
        self.end = end
        self.spec = spec
        self.problem = ""
        self.in_helper = False  # known once the stream began: False for a plain tar

    def watch(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        chunks = iter(chunks)
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= len(ZSTD_MAGIC):
                break
        stream = itertools.chain((head,) if head else (), chunks)
        if not head.startswith(ZSTD_MAGIC):
            yield from compressed(self.end.watch(stream), self.spec)
            return
        self.in_helper = True
        frames = ZstdFrames()
        for chunk in stream:
            if not self.problem:
                try:
                    for _ in self.end.watch(frames.feed(chunk)):
                        pass
                except zstandard.ZstdError as exc:
                    self.problem = f"the helper's zstd stream is corrupt ({exc})"
            yield chunk  # after a problem too: the helper finishes, the artifact is not published
        if not self.problem:
            try:
                frames.finish()
            except EOFError as exc:
                self.problem = f"the helper's {exc}"


def _archive(engine: Engine, volume: str, quiesce: str, labels: dict[str, str], notes: list[str],
             journal: Journal | None = None, *, snapshot: BinaryIO | None = None,
             base: tuple[int, BinaryIO] | None = None, wire: _HelperZstd | None = None) -> Iterator[bytes]:
    """The volume's tar stream. With `snapshot`, a listed-incremental archive: changes since `base` (the base
    backup's snapshot file; none: everything, level 0), and tar's new snapshot file is written to `snapshot`.
    With `wire`, the helper compresses and the stream is that of `wire` (watching its own EndMarker)."""
    if not engine.volume_exists(volume):
        raise SourceError(f"volume {volume!r} does not exist on the Docker host")
    end = wire.end if wire is not None else EndMarker()
    opened = True
    engine.transport  # noqa: B018 - chosen (a probe may run) before anything is quiesced, not while it waits
    with quiesced(engine, volume, quiesce, journal):
        command = TAR_CREATE[:-3] + LISTED + TAR_CREATE[-3:] if snapshot is not None else TAR_CREATE
        if wire is not None:
            tar = ["-" if part == STREAM else part for part in command]
            command = ["sh", "-c", TAR_ZSTD, "sh", STREAM, str(wire.spec.effective_level), *tar]
        with engine.helper(command, volume=volume, mount=SOURCE_MOUNT, read_only=True, labels=labels,
                           files={SNAPSHOT: base} if base is not None else None) as helper:
            try:
                yield from (wire or end).watch(helper.read())
            except PeerGone:
                opened = False  # the exit code below says why, or the checks after it
            result = helper.wait()
            pipes = str(helper.pipe_dir)
            if snapshot is not None and opened and end.seen and result.exit_code in (0, TAR_CHANGED):
                for block in helper.fetch(SNAPSHOT):
                    snapshot.write(block)
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
    if wire is not None and wire.problem:
        raise SourceError(f"the archive of volume {volume!r} is incomplete: {wire.problem} "
                          f"(after {end.members} members); nothing was published")
    if not end.seen:
        raise SourceError(f"the archive of volume {volume!r} is incomplete: "
                          f"{end.problem or 'the stream ended without tar end-of-archive marker'} "
                          f"(after {end.members} members); nothing was published")
    if result.exit_code == TAR_CHANGED:
        notes.append(f"files changed while volume {volume} was archived (consider quiesce: stop): {result.stderr}")


def backup(target: BackupTarget, ctx: BackupContext) -> list[Artifact]:
    """The volume as one tar archive; in a chained policy, also tar's snapshot file (the next run's base)."""
    spec = target.volume
    assert spec is not None
    notes: list[str] = []
    details = {"volume": spec.name, "quiesce": spec.quiesce, "helperImage": ctx.engine.helper_image,
               "helperImageId": ctx.engine.helper_image_id(), "format": "tar (POSIX pax)"}
    increment = ctx.increment
    wire = _HelperZstd(EndMarker(), ctx.compression) if _helper_compresses(ctx) else None
    if increment is None:
        chunks = _archive(ctx.engine, spec.name, spec.quiesce, ctx.labels(target.name), notes, ctx.journal, wire=wire)
        return [_published(ctx, target, chunks, details, notes, wire)]
    details |= {"format": "tar (POSIX pax, GNU listed-incremental)", "level": increment.level}
    with tempfile.SpooledTemporaryFile(SNAPSHOT_SPOOL) as snapshot:
        chunks = _archive(ctx.engine, spec.name, spec.quiesce, ctx.labels(target.name), notes, ctx.journal,
                          snapshot=snapshot, base=increment.snapshots.get(target.name),  # type: ignore[arg-type]
                          wire=wire)
        archive = _published(ctx, target, chunks, details, notes, wire)
        snapshot.seek(0)
        snar = ctx.publish(target=target.name, source=kind, base_name=f"{target.name}.snar",
                           chunks=read_chunks(snapshot), details={"snapshotOf": archive.file})
    return [archive, snar.model_copy(update={"role": "snapshot"})]


def _across_network(engine: Engine) -> bool:
    """Does the helper's stream cross a network to reach dockvault (a remote engine, the api transport)? Then the
    helper compresses backups and decompresses restores. On a local engine dockvault does both: the stream costs
    little there, and the decompressing proof would not pay (benchmarks/compress_where.py)."""
    return engine.remote and engine.transport == "api"


def _helper_compresses(ctx: BackupContext) -> bool:
    return ctx.compression.algorithm == "zstd" and _across_network(ctx.engine)


def _published(ctx: BackupContext, target: BackupTarget, chunks: Iterator[bytes], details: dict[str, str],
               notes: list[str], wire: _HelperZstd | None = None) -> Artifact:
    artifact = ctx.publish(target=target.name, source=kind, base_name=f"{target.name}.tar", chunks=chunks,
                           details=details, raw_size=(lambda: wire.end.length) if wire is not None else None)
    if wire is not None:
        by = "helper" if wire.in_helper else "dockvault (the helper image has no zstd)"
        artifact = artifact.model_copy(update={"details": {**artifact.details, "compressedBy": by}})
    if notes:
        artifact = artifact.model_copy(update={"details": {**artifact.details, "warning": "; ".join(notes)[:500]}})
    return artifact


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
    return artifacts  # one archive per backup: of a chain, the full first and each later archive in order


def _step(position: int, count: int) -> str:
    if count == 1:
        return "only"
    return "first" if position == 0 else "last" if position == count - 1 else "next"


def restore(destination: RestoreTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext) -> None:
    """Extract the archive (or the chain's archives, in order) into a staging folder, then swap it in."""
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
    listed = ["--listed-incremental=/dev/null"] if any("level" in a.details for a, _ in streams) else []
    checker = new_checker()
    kept = False  # a staging folder that a finished step left for the next one
    try:
        for position, (artifact, opener) in enumerate(streams):
            step = _step(position, len(streams))
            kept = _extract(engine, spec.name, destination.from_, ctx, opener, checker,
                            [stage, STREAM, CONTROL, step, *listed], _wire_codec(engine, artifact, opener))
    except BaseException:
        if not existed:
            engine.remove_volume(spec.name)
        elif kept:
            _drop_stage(engine, spec.name, stage, ctx.labels(destination.from_))
        raise
    if not existed:
        ctx.notes.append(f"created volume {spec.name}")
    if len(streams) > 1:
        ctx.notes.append(f"{destination.from_}: restored a chain of {len(streams)} archives")


def _wire_codec(engine: Engine, artifact: Artifact, opener: Opener) -> str:
    """zstd: the helper gets the artifact still compressed and decompresses it (a remote engine: half the bytes
    cross the network and the engine), when the opener can give the compressed stream and the helper image has
    zstd; else plain."""
    if (artifact.compression == "zstd" and hasattr(opener, "compressed") and _across_network(engine)
            and engine.helper_has("zstd")):
        return "zstd"
    return "plain"


def _checked_compressed(opener: Opener, checker, ctx: RestoreContext) -> Iterator[bytes]:
    """The artifact's zstd stream, each chunk passed on only once the tar headers it decompresses to were checked
    (by `checked_tar`, on a copy decompressed here): the helper's tar never reads an unchecked header."""
    checked: collections.deque[bytes] = collections.deque()
    frames = ZstdFrames()

    def plain() -> Iterator[bytes]:
        try:
            for chunk in ctx.stream(opener.compressed):  # type: ignore[attr-defined]
                yield from frames.feed(chunk)
                checked.append(chunk)  # asked for more: all of this chunk's output was checked (or is an incomplete header)
            frames.finish()
        except (zstandard.ZstdError, EOFError) as exc:
            raise ChecksumMismatch(f"artifact {opener.label} is corrupt: {exc}") from None  # type: ignore[attr-defined]

    for _ in checked_tar(plain(), checker):
        while checked:
            yield checked.popleft()
    yield from checked


def _extract(engine: Engine, volume: str, target: str, ctx: RestoreContext, opener: Opener, checker,
             arguments: list[str], codec: str = "plain") -> bool:
    """One archive into the staging folder; True when the folder stays for the next step."""
    last = arguments[3] in ("last", "only")
    if codec == "zstd":
        arguments = [*arguments[:4], "--zstd", *arguments[4:]]
    with engine.helper(["sh", "-c", RESTORE_SCRIPT, "sh", *arguments], volume=volume, mount=TARGET_MOUNT,
                       read_only=False, labels=ctx.labels(target), stdin=True) as helper:
        try:
            with helper.writer() as out:
                blocks = (_checked_compressed(opener, checker, ctx) if codec == "zstd"
                          else checked_tar(ctx.stream(opener), checker))
                for block in blocks:
                    out.write(block)
            helper.decide("commit" if last else "next")
        except (PeerGone, BrokenPipeError, ConnectionResetError):
            pass  # the helper's tar stopped reading: its exit code and message follow
        except BaseException:
            _abort(helper)
            raise
        result = helper.wait()
    if result.exit_code != 0:
        raise SourceError(f"extracting into volume {volume!r} failed (exit {result.exit_code}): {result.stderr}")
    return not last


def _drop_stage(engine: Engine, volume: str, stage: str, labels: dict[str, str]) -> None:
    """Remove a staging folder a finished step left when a later one could not start (best effort)."""
    try:
        with engine.helper(["sh", "-c", 'touch -r "/target/$1.before" /tmp/b && rm -rf -- "/target/$1" '
                            '"/target/$1.before" && touch -r /tmp/b /target', "sh", stage],
                           volume=volume, mount=TARGET_MOUNT, read_only=False, labels=labels) as helper:
            helper.wait(timeout=120)
    except Exception:  # noqa: BLE001 - the restore failed already; its error is the one to report
        pass


def drill(target: BackupTarget, streams: list[tuple[Artifact, Opener]], ctx: RestoreContext,
          checks: list[DrillCheck]) -> None:
    """Restore into a scratch volume, archive that again, and compare it path by path with the backup."""
    scratch = f"dockvault-drill-{ctx.job_id}-{target.name}"
    ctx.engine.create_volume(scratch, {**ctx.labels(target.name), LABEL_DRILL: "true"})
    try:
        destination = RestoreTarget.model_validate({"from": target.name, "volume": {"name": scratch, "overwrite": True}})
        restore(destination, streams, ctx)
        expected = chain_index(ctx.stream(opener) for _, opener in streams)
        restored = tree_index(_archive(ctx.engine, scratch, "none", ctx.labels(target.name), []))
        problems = expected.differences(restored)
        if problems:
            raise SourceError(f"the restored volume differs from backup: {'; '.join(problems)}")
        ctx.notes.append(f"{target.name}: {len(expected.entries)} paths restored identical")
    finally:
        ctx.engine.remove_volume(scratch)
