"""The Docker engine adapter: helper containers, volumes and container state; the only module that talks to dockerd."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import docker
import docker.errors
from docker.models.containers import Container

from . import fifo

log = logging.getLogger(__name__)

LABEL_POLICY = "dockvault.io/policy"
LABEL_TARGET = "dockvault.io/target"
LABEL_JOB = "dockvault.io/job"
LABEL_DRILL = "dockvault.io/drill"  # scratch resources of restore drills: removed after use, and at start-up
PIPE_MOUNT = "/dockvault"
DEFAULT_HELPER_IMAGE = "dockvault:latest"


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
    return {LABEL_POLICY: policy, LABEL_TARGET: target, LABEL_JOB: job}


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class Helper:
    """A started helper container with a pipe directory shared with this process."""

    def __init__(self, container: Container, pipe_dir: Path) -> None:
        self.container = container
        self.pipe_dir = pipe_dir

    def pipe(self, name: str) -> str:
        return str(self.pipe_dir / name)

    def alive(self) -> bool:
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return False
        return self.container.status in ("created", "running")

    def read(self, name: str) -> Iterator[bytes]:
        """The stream the helper writes into pipe `name`."""
        return fifo.read_chunks(self.pipe(name), alive=self.alive)

    def writer(self, name: str) -> BinaryIO:
        """A file object feeding pipe `name`, opened once the helper reads it."""
        return fifo.open_writer(self.pipe(name), alive=self.alive)

    def wait(self, timeout: float | None = None) -> HelperResult:
        result = self.container.wait(timeout=timeout)
        stderr = self.container.logs(stdout=False, stderr=True).decode("utf-8", "replace").strip()
        return HelperResult(int(result.get("StatusCode", -1)), stderr[-2000:])


class Engine:
    """Thin wrapper over the Docker SDK, configured from DOCKER_HOST like the docker CLI."""

    def __init__(self, client: docker.DockerClient, *, helper_image: str = DEFAULT_HELPER_IMAGE) -> None:
        self.client = client
        self.helper_image = helper_image
        self._image_id: str | None = None

    @classmethod
    def from_env(cls, *, helper_image: str = DEFAULT_HELPER_IMAGE) -> Engine:
        try:
            client = docker.from_env(version="auto", timeout=300)
            client.ping()
        except docker.errors.DockerException as exc:
            host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            raise EngineError(f"cannot reach the Docker engine at {host}: {exc}", temporary=True) from exc
        return cls(client, helper_image=helper_image)

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
        found = self.client.containers.list(all=True, filters={"volume": volume})
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

    @contextlib.contextmanager
    def helper(
        self,
        command: list[str],
        *,
        volume: str,
        mount: str,
        read_only: bool,
        labels: Mapping[str, str],
        pipes: tuple[str, ...] = (),
    ) -> Iterator[Helper]:
        """Run a short-lived helper with `volume` at `mount`; it is removed afterwards whatever happens."""
        self.helper_image_id()
        pipe_dir = Path(tempfile.mkdtemp(prefix="dockvault-pipe-"))
        container = None
        try:
            for name in pipes:
                os.mkfifo(pipe_dir / name, 0o600)
            container = self.client.containers.create(
                self.helper_image,
                command,
                entrypoint=[],
                labels=dict(labels),
                network_mode="none",
                user="0:0",
                working_dir="/",
                volumes={
                    volume: {"bind": mount, "mode": "ro" if read_only else "rw"},
                    str(pipe_dir): {"bind": PIPE_MOUNT, "mode": "rw"},
                },
            )
            container.start()
            yield Helper(container, pipe_dir)
        except docker.errors.APIError as exc:
            raise EngineError(f"helper container for volume {volume!r} failed: {exc.explanation or exc}") from exc
        finally:
            if container is not None:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    container.remove(force=True)
            shutil.rmtree(pipe_dir, ignore_errors=True)

    def remove_leftovers(self, *, policy: str | None = None, spare: frozenset[str] = frozenset()) -> list[str]:
        """Remove helpers and drill scratch resources a killed dockvault left behind (found by their labels): of
        `policy` only, or of every policy but those in `spare` (whose jobs may be running in another process)."""
        label = [LABEL_JOB] if policy is None else [LABEL_JOB, f"{LABEL_POLICY}={policy}"]
        scratch = [LABEL_DRILL] if policy is None else [LABEL_DRILL, f"{LABEL_POLICY}={policy}"]
        removed = []
        for container in self.client.containers.list(all=True, filters={"label": label}):
            if container.labels.get(LABEL_POLICY) in spare:
                continue
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True, v=True)
                removed.append(container.name)
        for volume in self.client.volumes.list(filters={"label": scratch}):
            if (volume.attrs.get("Labels") or {}).get(LABEL_POLICY) in spare:
                continue
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                volume.remove(force=True)
                removed.append(f"volume {volume.name}")
        return removed
