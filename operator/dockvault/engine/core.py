"""The Docker engine adapter: helper containers, volumes and container state; the only module that talks to dockerd."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import docker
import docker.errors
import docker.types
from docker.models.containers import Container

from . import execstream, fifo
from .connect import DockerEnvError, client_from_env
from .names import DEFAULT_HELPER_IMAGE, TRANSPORTS  # noqa: F401 - re-exported
from .execstream import ExecProcess

log = logging.getLogger(__name__)

LABEL_POLICY = "dockvault.io/policy"
LABEL_TARGET = "dockvault.io/target"
LABEL_JOB = "dockvault.io/job"
LABEL_PROBE = "dockvault.io/probe"  # a short-lived probe container (Engine._probe); removed at start-up if left
LABEL_OWNER = "dockvault.io/owner"  # host:pid of the dockvault that made it: a live one's resources are never swept
LABEL_DRILL = "dockvault.io/drill"  # scratch resources of restore drills: removed after use, and at start-up
PIPE_MOUNT = "/dockvault"
STREAM, CONTROL = "{stream}", "{control}"  # placeholders in a helper's command, replaced per transport
API_CONTROL = "/tmp/dockvault-control"  # the control FIFO inside an api-transport helper


class EngineError(RuntimeError):
    """A Docker-side failure, phrased for the user; `temporary` when trying again later may well work."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


def _temporary_docker_error(exc: BaseException) -> bool:
    import requests.exceptions

    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        explanation = str(exc.explanation or exc).lower()
        return status >= 500 or (status == 409 and ("is not running" in explanation or "is paused" in explanation
                                                    or "is restarting" in explanation))
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                            TimeoutError))


def _connection_reason(exc: BaseException) -> str:
    """The innermost cause of a connection failure ("[Errno 111] Connection refused"), not urllib3's retry text."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\][^'\")]*", text)
    return found[-1].strip() if found else text[:300]


def is_temporary(exc: BaseException) -> bool:
    """Would the same job likely work in a minute? The engine unreachable or answering 5xx, a container not
    running (restarting), a timeout; looked for along the exception's causes, as sources wrap engine errors."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "temporary", False) or _temporary_docker_error(current):
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass(frozen=True)
class HelperResult:
    exit_code: int
    stderr: str


@dataclass(frozen=True)
class ContainerRef:
    id: str
    name: str
    status: str


def job_labels(*, policy: str, target: str, job: str) -> dict[str, str]:
    return {LABEL_POLICY: policy, LABEL_TARGET: target, LABEL_JOB: job, LABEL_OWNER: _owner()}


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(labels: Mapping[str, str]) -> bool:
    """Whether the dockvault that made a resource may still run: another host's, or a live process here."""
    host, _, pid = (labels.get(LABEL_OWNER) or "").rpartition(":")
    if not pid.isdigit():
        return False  # made before owners were recorded
    # this process's own: its jobs of the policy are over (the caller holds the policy's lock)
    return host != socket.gethostname() or (int(pid) != os.getpid() and _pid_alive(int(pid)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temp_dirs() -> list[str]:
    """Temp folders (FIFOs, probe files) of dockvault processes of this host that are gone: a kill can come before
    the helper that would name them exists."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob("dockvault-p*-*-*"):
        match = re.fullmatch(r"dockvault-(?:pipe|probe)-(\d+)-\w+", path.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class Helper:
    """A started helper container and its two channels: `stream` (the data) and `control` (the verdict).

    Two transports carry them (see `Engine.transport`):
    - fifo: named pipes in a temp dir that dockvault and the helper both see (bind-mounted at /dockvault): the
      fastest path, but only where the engine shares dockvault's filesystem;
    - api: the helper idles and its command runs through `docker exec`, the stream is the exec's stdin or
      stdout over the engine's own connection (unix socket, TCP+TLS, ssh), and the verdict is written by a
      second exec into a FIFO inside the container. Nothing is shared but the API.
    The command names the channels by STREAM and CONTROL (see `Engine.helper`).
    """

    def __init__(self, container: Container, pipe_dir: Path | None, process: ExecProcess | None = None) -> None:
        self.container = container
        self.pipe_dir = pipe_dir
        self._process = process

    @property
    def transport(self) -> str:
        return "api" if self._process is not None else "fifo"

    def pipe(self, name: str) -> str:
        assert self.pipe_dir is not None
        return str(self.pipe_dir / name)

    def alive(self) -> bool:
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return False
        return self.container.status in ("created", "running")

    def read(self) -> Iterator[bytes]:
        """The stream the helper's command writes."""
        if self._process is not None:
            return self._process.stdout()
        return fifo.read_chunks(self.pipe("stream"), alive=self.alive)

    def writer(self) -> BinaryIO:
        """A file object feeding the helper's command; closing it ends the stream (end of file)."""
        if self._process is not None:
            return _ExecInput(self._process)  # type: ignore[return-value]
        return fifo.open_writer(self.pipe("stream"), alive=self.alive)

    def decide(self, word: str) -> None:
        """Write one line on the control channel (the helper waits for it before it commits)."""
        if self._process is None:
            with fifo.open_writer(self.pipe("control"), alive=self.alive) as control:
                control.write(word.encode() + b"\n")
            return
        # Opened read-write, a FIFO never blocks the writer, even when the helper's script is gone already.
        result = execstream.run(self.container.client, self.container.id,
                                ["sh", "-c", f'[ -p {API_CONTROL} ] && exec 3<> {API_CONTROL} && printf "%s\\n" "$1" >&3',
                                 "sh", word])
        if result.exit_code != 0:
            raise OSError(f"cannot reach the helper's control channel: {result.stderr or result.exit_code}")

    def fetch(self, path: str) -> Iterator[bytes]:
        """The content of file `path` inside the helper (running or exited), streamed from the engine."""
        try:
            chunks, _ = self.container.get_archive(path)
            with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as archive:
                member = archive.next()
                content = archive.extractfile(member) if member is not None else None
                if content is None:
                    raise EngineError(f"{path} in helper {self.container.name} is not a regular file")
                while block := content.read(1 << 20):
                    yield block
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot read {path} from helper {self.container.name}: {exc.explanation or exc}",
                              temporary=_temporary_docker_error(exc)) from exc

    def wait(self, timeout: float | None = None) -> HelperResult:
        if self._process is not None:
            result = self._process.result(timeout=timeout if timeout is not None else 24 * 3600)
            return HelperResult(result.exit_code, result.stderr[-2000:])
        result = self.container.wait(timeout=timeout)
        stderr = self.container.logs(stdout=False, stderr=True).decode("utf-8", "replace").strip()
        return HelperResult(int(result.get("StatusCode", -1)), stderr[-2000:])


class _ChunkReader(io.RawIOBase):
    """An iterator of byte chunks as a readable file (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


# Run in a killed dockvault's restore helper before it is removed: the helper waits for a verdict that will not
# come, its staging folder in the volume. "abort" makes its own trap drop the folder; a helper already swapping it
# in finishes. A dockvault killed before it opened the stream FIFO left tar blocked in opening it: opening and
# closing it read-write (which never blocks) gives tar its end of file, so it fails and the trap runs. Then wait
# (at most 2 minutes) until the folder is gone. Backup helpers have neither: a no-op.
_SETTLE = r"""
for control in PIPE/control API; do
  if [ -p "$control" ]; then exec 3<>"$control"; printf 'abort\n' >&3; fi
done
if [ -p PIPE/stream ]; then exec 4<>PIPE/stream; exec 4>&-; fi
i=0
while [ -e "/target/.dockvault-restore-$1" ] && [ "$i" -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
"""


def _settle(container: Container) -> None:
    script = _SETTLE.replace("PIPE", PIPE_MOUNT).replace("API", API_CONTROL)
    with contextlib.suppress(docker.errors.APIError, EngineError, OSError):
        execstream.run(container.client, container.id, ["sh", "-c", script, "sh",
                                                        container.labels.get(LABEL_JOB, "")])


def _remove_pipe_dir(container: Container) -> None:
    """The temp folder (FIFOs or probe file) a killed dockvault made for this helper: its bind mount at PIPE_MOUNT."""
    for mount in container.attrs.get("Mounts") or []:
        source = mount.get("Source") or ""
        if mount.get("Destination") == PIPE_MOUNT and Path(source).name.startswith(("dockvault-pipe-", "dockvault-probe-")):
            shutil.rmtree(source, ignore_errors=True)


def _single_file_tar(name: str, size: int, content: BinaryIO) -> Iterator[bytes]:
    """A tar stream of one file, `size` bytes read from `content`, for put_archive (never held whole in memory)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o600
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    left = size
    while left:
        block = content.read(min(left, 1 << 20))
        if not block:
            raise EngineError(f"{name}: the file ended {left} bytes early")
        left -= len(block)
        yield block
    yield b"\0" * (-size % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)


class _ExecInput:
    """The exec's stdin as a write-only file: close() half-closes the connection, so the command sees EOF.

    Its output is drained meanwhile (stderr's tail is kept for the result): a command that writes while it
    reads must never block on a full connection while dockvault blocks on sending. A write after the command
    exited (a tar that failed on a full disk) fails at once as a broken pipe (ExecProcess.send)."""

    def __init__(self, process: ExecProcess) -> None:
        self._process = process
        self._drain = threading.Thread(target=process.drain_output, name="helper-output", daemon=True)
        self._drain.start()

    def write(self, data: bytes) -> int:
        self._process.send(data)
        return len(data)

    def close(self) -> None:
        self._process.close_stdin()

    def __enter__(self) -> _ExecInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engine:
    """Thin wrapper over the Docker SDK, configured from DOCKER_HOST like the docker CLI."""

    def __init__(self, client: docker.DockerClient, *, helper_image: str = DEFAULT_HELPER_IMAGE,
                 transport: str | None = None) -> None:
        transport = transport or os.environ.get("DOCKVAULT_TRANSPORT") or "auto"
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r}: use one of {', '.join(TRANSPORTS)}")
        self.client = client
        self.helper_image = helper_image
        self._image_id: str | None = None
        self._transport = transport
        self._tools: dict[str, bool] = {}

    @classmethod
    def from_env(cls, *, helper_image: str = DEFAULT_HELPER_IMAGE, transport: str | None = None) -> Engine:
        """The engine DOCKER_HOST names, as the docker CLI reaches it; `transport` (default: $DOCKVAULT_TRANSPORT,
        else auto) carries the helpers' streams."""
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        try:
            client = client_from_env(timeout=300)
            client.ping()
        except DockerEnvError as exc:  # a setting or certificate to fix: trying again will not help
            raise EngineError(f"cannot use the Docker engine at {host}: {exc}") from None
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot reach the Docker engine at {host}: {exc}", temporary=True) from exc
        return cls(client, helper_image=helper_image, transport=transport)

    # --- volumes -------------------------------------------------------------------------------
    def volume_exists(self, name: str) -> bool:
        try:
            self.client.volumes.get(name)
            return True
        except docker.errors.NotFound:
            return False

    def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        self.client.volumes.create(name=name, labels=dict(labels))

    def remove_volume(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.volumes.get(name).remove(force=True)

    def containers_using(self, volume: str) -> list[ContainerRef]:
        found = self.client.containers.list(all=True, ignore_removed=True, filters={"volume": volume})
        return [ContainerRef(c.id, c.name, c.status) for c in found if LABEL_JOB not in c.labels]

    # --- container state (quiesce) -------------------------------------------------------------
    def pause(self, ref: ContainerRef) -> None:
        self.client.containers.get(ref.id).pause()

    def unpause(self, ref: ContainerRef) -> None:
        self.client.containers.get(ref.id).unpause()

    def stop(self, ref: ContainerRef) -> None:
        """Stop with the container's own stop signal and timeout, as `docker stop` does."""
        self.client.api.stop(ref.id)

    def start(self, ref: ContainerRef) -> None:
        self.client.containers.get(ref.id).start()

    def state(self, ref: ContainerRef) -> str | None:
        """The container's state now (running, paused, exited, ...); None once it is gone."""
        try:
            container = self.client.containers.get(ref.id)
        except docker.errors.NotFound:
            return None
        return container.status

    def stop_timeout(self, ref: ContainerRef) -> float:
        """How long `docker stop` may take for this container: its own StopTimeout, or the engine's 10 s."""
        try:
            config = self.client.api.inspect_container(ref.id).get("Config") or {}
        except docker.errors.NotFound:
            return 0.0
        value = config.get("StopTimeout")
        return float(value if isinstance(value, int) and value >= 0 else 10)

    def wait_stopped(self, ref: ContainerRef, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a stop in flight to finish; True once the container is not running."""
        import requests.exceptions

        if timeout > 0 and self.state(ref) == "running":
            with contextlib.suppress(requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                                     docker.errors.NotFound):
                self.client.api.wait(ref.id, timeout=timeout, condition="not-running")
        return self.state(ref) != "running"

    # --- helpers -------------------------------------------------------------------------------
    def helper_image_id(self) -> str:
        if self._image_id is None:
            try:
                self._image_id = self.client.images.get(self.helper_image).id
            except docker.errors.ImageNotFound:
                raise EngineError(
                    f"helper image {self.helper_image!r} is not on the Docker host; "
                    "build or load it, or choose another with --helper-image"
                ) from None
        return self._image_id

    def _reachable(self) -> bool:
        try:
            self.client.ping()
        except Exception:  # noqa: BLE001 - any failure means: not reachable now
            return False
        return True

    def helper_has(self, tool: str) -> bool:
        """Has the helper image `tool` on its PATH? Asked once per engine by running `command -v` in a helper
        (its exit code, not its output); any failure answers no."""
        known = self._tools.get(tool)
        if known is None:
            try:
                with self._probe(["sh", "-c", 'command -v "$1" > /dev/null', "sh", tool]) as container:
                    container.start()
                    known = container.wait(timeout=60).get("StatusCode") == 0
            except (docker.errors.DockerException, ConnectionError, OSError) as exc:
                log.debug("cannot tell whether the helper image has %s, assuming not: %s", tool, exc)
                known = False
            self._tools[tool] = known
        return known

    @contextlib.contextmanager
    def _probe(self, command: list[str], **options) -> Iterator[Container]:
        """A short-lived container of the helper image, labelled as a probe of this process (so a killed
        dockvault's is swept at start-up), removed when the block ends (best effort)."""
        container = self.client.containers.create(
            self.helper_image, command, entrypoint=[], network_mode="none", user="0:0",
            labels={LABEL_PROBE: "true", LABEL_OWNER: _owner()}, **options)
        try:
            yield container
        finally:
            with contextlib.suppress(docker.errors.DockerException, ConnectionError, OSError):
                container.remove(force=True)

    @property
    def remote(self) -> bool:
        """Does the engine answer over a network (DOCKER_HOST tcp://, ssh://), not a local unix socket?"""
        return not os.environ.get("DOCKER_HOST", "unix://").startswith("unix://")

    @property
    def transport(self) -> str:
        """fifo or api, resolved once: `auto` takes the FIFOs when the engine sees dockvault's temp dir (a local
        engine sharing this filesystem), else the API (remote engines, or dockvault in its own mount namespace)."""
        if self._transport == "auto":
            self._transport = "fifo" if self._sees_our_temp_dir() else "api"
            log.info("helper streams use the %s transport", self._transport)
        return self._transport

    def _sees_our_temp_dir(self) -> bool:
        """Does the engine see a folder made in our temp dir, under the same path? Asked by creating (never
        starting) a container that bind-mounts it: dockerd refuses a bind whose source path does not exist on its
        side ("bind source path does not exist"), so a create that succeeds means it sees the folder, whose name
        is random. A few milliseconds, where starting a container that reads a file back took 0.25 s per command."""
        if self.remote:
            return False
        probe = Path(tempfile.mkdtemp(prefix=f"dockvault-probe-{os.getpid()}-"))
        try:
            with self._probe(["true"], mounts=[docker.types.Mount(PIPE_MOUNT, str(probe), type="bind", read_only=True)]):
                return True
        except (docker.errors.DockerException, ConnectionError, OSError) as exc:
            log.debug("transport probe failed, using the api transport: %s", exc)
            return False
        finally:
            shutil.rmtree(probe, ignore_errors=True)

    @contextlib.contextmanager
    def helper(
        self,
        command: list[str],
        *,
        volume: str,
        mount: str,
        read_only: bool,
        labels: Mapping[str, str],
        stdin: bool = False,
        files: Mapping[str, tuple[int, BinaryIO]] | None = None,
    ) -> Iterator[Helper]:
        """Run a short-lived helper with `volume` at `mount`; it is removed afterwards whatever happens.

        `command` names its data stream STREAM (read when `stdin`, else written) and its control channel
        CONTROL; they become FIFO paths or, on the api transport, "-" (stdin/stdout) and a FIFO in the container.
        `files` (absolute path: size and content) are copied into the helper before it starts; `Helper.fetch`
        reads files back.
        """
        self.helper_image_id()
        api = self.transport == "api"
        pipe_dir = None if api else Path(tempfile.mkdtemp(prefix=f"dockvault-pipe-{os.getpid()}-"))
        stream, control = ("-", API_CONTROL) if api else (f"{PIPE_MOUNT}/stream", f"{PIPE_MOUNT}/control")
        argv = [part.replace(STREAM, stream).replace(CONTROL, control) for part in command]
        container = None
        try:
            volumes = {volume: {"bind": mount, "mode": "ro" if read_only else "rw"}}
            if pipe_dir is not None:
                for name in ("stream", "control"):
                    os.mkfifo(pipe_dir / name, 0o600)
                volumes[str(pipe_dir)] = {"bind": PIPE_MOUNT, "mode": "rw"}
            container = self.client.containers.create(
                self.helper_image, ["sleep", "infinity"] if api else argv, entrypoint=[], labels=dict(labels),
                network_mode="none", user="0:0", working_dir="/", volumes=volumes)
            for path, (size, content) in (files or {}).items():
                folder, name = os.path.split(path)
                if not container.put_archive(folder, _single_file_tar(name, size, content)):
                    raise EngineError(f"cannot copy {path} into the helper for volume {volume!r}")
            container.start()
            if api:
                with ExecProcess(self.client, container.id, argv, stdin=stdin) as process:
                    yield Helper(container, None, process)
            else:
                yield Helper(container, pipe_dir)
        except docker.errors.APIError as exc:
            raise EngineError(f"helper container for volume {volume!r} failed: {exc.explanation or exc}",
                              temporary=_temporary_docker_error(exc)) from exc
        except Exception as exc:
            if not _temporary_docker_error(exc) or self._reachable():
                raise
            raise EngineError(f"lost the Docker engine at {self.client.api.base_url} while the helper for volume "
                              f"{volume!r} was running (the engine stopped or restarted, or the network failed): "
                              f"{_connection_reason(exc)}", temporary=True) from exc
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except (docker.errors.NotFound, docker.errors.APIError):
                    pass
                except Exception as exc:  # noqa: BLE001 - the engine is gone: its start-up or ours removes it
                    log.warning("cannot remove helper container %s (%s); the next dockvault start removes it",
                                container.short_id, _connection_reason(exc))
            if pipe_dir is not None:
                shutil.rmtree(pipe_dir, ignore_errors=True)

    def remove_leftovers(self, *, policy: str | None = None, spare: frozenset[str] = frozenset()) -> list[str]:
        """Remove helpers and drill scratch resources a killed dockvault left behind (found by their labels): of
        `policy` only, or of every policy but those in `spare` (whose jobs may be running in another process)."""
        label = [LABEL_JOB] if policy is None else [LABEL_JOB, f"{LABEL_POLICY}={policy}"]
        scratch = [LABEL_DRILL] if policy is None else [LABEL_DRILL, f"{LABEL_POLICY}={policy}"]
        removed = []
        # a transport probe of a killed dockvault (one that still runs belongs to a live process: left alone)
        for container in self.client.containers.list(all=True, ignore_removed=True, filters={"label": LABEL_PROBE}):
            if _owner_alive(container.labels) or (LABEL_OWNER not in container.labels and container.status != "exited"):
                continue  # a live dockvault's probe (one killed between create and start stays "created")
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
                removed.append(container.name)
                _remove_pipe_dir(container)
        for container in self.client.containers.list(all=True, ignore_removed=True, filters={"label": label}):
            if container.labels.get(LABEL_POLICY) in spare or _owner_alive(container.labels):
                continue
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                if container.status == "running":
                    _settle(container)
                container.remove(force=True, v=True)
                removed.append(container.name)
                _remove_pipe_dir(container)
        for volume in self.client.volumes.list(filters={"label": scratch}):
            labels = volume.attrs.get("Labels") or {}
            if labels.get(LABEL_POLICY) in spare or _owner_alive(labels):
                continue
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                volume.remove(force=True)
                removed.append(f"volume {volume.name}")
        removed.extend(_remove_dead_temp_dirs())
        return removed
