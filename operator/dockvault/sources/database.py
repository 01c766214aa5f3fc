"""What the database sources share: finding the container, its credentials, and exec streams that fail loudly."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from dataclasses import dataclass, field

import docker.errors
from docker.types import Mount

from ..api.backup import Artifact
from ..api.policy import DrillCheck, expectation
from ..api.restore import RestoreTarget
from ..credentials import SecretError, mask, resolve_password
from ..engine.core import LABEL_DRILL, Engine
from ..engine.execstream import ExecProcess, ExecResult, run
from .base import SourceError, check_cancel

log = logging.getLogger(__name__)


@dataclass
class DbContainer:
    """A running database container and the exec environment that authenticates to its server."""

    engine: Engine
    id: str
    name: str
    env: dict[str, str] = field(repr=False)
    image: str = ""

    def run(self, argv: list[str], *, stdin: Iterable[bytes] | None = None, what: str) -> bytes:
        """Run a short client command; a non-zero exit is a SourceError naming `what`."""
        result = run(self.engine.client, self.id, argv, env=self.env, stdin=stdin)
        self.check(result, what)
        return result.stdout

    def check(self, result: ExecResult, what: str) -> None:
        if result.exit_code in (126, 127):
            raise SourceError(f"{what}: client tool not found in container {self.name!r} "
                              f"(exit {result.exit_code}): {mask(result.stderr)}")
        if result.exit_code != 0:
            raise SourceError(f"{what} failed in container {self.name!r} (exit {result.exit_code}): {mask(result.stderr)}")

    def stream(self, argv: list[str], *, what: str, cancel=None) -> Iterator[bytes]:
        """Stdout of a long-running dump; ending early or exiting non-zero raises, so nothing is published."""
        with ExecProcess(self.engine.client, self.id, argv, env=self.env) as proc:
            for chunk in proc.stdout():
                check_cancel(cancel)
                yield chunk
            result = proc.result()
        if result.exit_code != 0:
            state = self.state()
            detail = f"; container is {state}" if state != "running" else ""
            raise SourceError(f"{what} failed in container {self.name!r} (exit {result.exit_code}{detail}): "
                              f"{mask(result.stderr) or 'stream ended early'}")

    def feed(self, argv: list[str], chunks: Iterable[bytes], *, what: str, cancel=None) -> None:
        """Stream `chunks` into a client's stdin; a failure on our side kills the client before it sees EOF."""
        with ExecProcess(self.engine.client, self.id, argv, env=self.env, stdin=True) as proc:
            def guarded() -> Iterator[bytes]:
                for chunk in chunks:
                    check_cancel(cancel)
                    yield chunk

            try:
                proc.feed(guarded())
            except BaseException:
                # The client must not take a cut-short input for the whole (a transaction would commit it).
                with contextlib.suppress(Exception):
                    proc.kill()
                raise
            result = proc.result()
        self.check(result, what)
        if proc.input_cut:
            raise SourceError(f"{what}: the client in container {self.name!r} exited 0 before it read all of its "
                              f"input: {mask(result.stderr) or 'no message'}")

    def session(self, argv: list[str]) -> ExecProcess:
        """A client kept open with stdin, for a conversation (e.g. holding a snapshot for pg_dump)."""
        return ExecProcess(self.engine.client, self.id, argv, env=self.env, stdin=True)

    def state(self) -> str:
        try:
            return self.engine.client.containers.get(self.id).status
        except docker.errors.NotFound:
            return "removed"


def connect(engine: Engine, container: str) -> tuple[str, str, dict[str, str], str]:
    """The container's id, name, environment and image; it must exist and be running."""
    try:
        found = engine.client.containers.get(container)
    except docker.errors.NotFound:
        raise SourceError(f"container {container!r} does not exist") from None
    if found.status != "running":
        raise SourceError(f"container {container!r} is {found.status}, not running", temporary=True)
    env = dict(item.split("=", 1) for item in found.attrs["Config"].get("Env") or [] if "=" in item)
    return found.id, found.name, env, found.attrs["Config"].get("Image", "")


def credentials(spec, container_env: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    try:
        return resolve_password(spec.password_from, container_env, keys)
    except SecretError as exc:
        raise SourceError(str(exc)) from None


def hex_names(output: bytes) -> list[str]:
    """Names listed as hex, one per line: immune to quotes, spaces, newlines and odd encodings."""
    return [bytes.fromhex(line).decode("utf-8") for line in output.decode().split() if line]


def pick_dumps(artifacts: list[Artifact], destination: RestoreTarget, wanted: str | None, *, field: str) -> list[Artifact]:
    """The dump of one database: the one named, or the only one the target has."""
    dumps = [a for a in artifacts if a.details.get("database")]
    if wanted is None and len(dumps) == 1:
        return dumps
    if wanted is None:
        names = ", ".join(repr(a.details["database"]) for a in dumps)
        raise SourceError(f"target {destination.from_!r} holds several databases ({names}); set {field}")
    chosen = [a for a in dumps if a.details["database"] == wanted]
    if not chosen:
        raise SourceError(f"target {destination.from_!r} has no dump of database {wanted!r}")
    return chosen


@dataclass
class Scratch:
    """A drill's scratch server: started from a user's database container, with no data and no network."""

    name: str
    source: str
    container: Any

    def problem(self) -> str | None:
        """None while it runs; else its exit code and last log lines, naming the container it was made from."""
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return f"the scratch server started from container {self.source!r} is gone"
        if self.container.status in ("created", "running"):
            return None
        code = self.container.attrs.get("State", {}).get("ExitCode")
        return (f"the scratch server started from container {self.source!r} exited with code {code}; "
                f"its last log lines: {self.tail() or '(none)'}")

    def tail(self, lines: int = 8) -> str:
        with contextlib.suppress(docker.errors.APIError):
            return " | ".join(self.container.logs(tail=lines).decode("utf-8", "replace").strip().splitlines())
        return ""


@contextlib.contextmanager
def throwaway(engine: Engine, source: str, *, name: str, labels: dict[str, str]) -> Iterator[Scratch]:
    """A scratch server from the same image and settings as `source`, with no network and no data: an empty
    scratch volume at each of the source's mount points (images whose data directory exists only as a mount
    point cannot start without one), and its tmpfs mounts. Volumes and server are removed afterwards."""
    try:
        attrs = engine.client.containers.get(source).attrs
    except docker.errors.NotFound:
        raise SourceError(f"a drill starts its scratch server from container {source!r}, which does not exist") from None
    config = attrs["Config"]
    scratch_labels = {**labels, LABEL_DRILL: "true"}
    destinations = sorted({m["Destination"] for m in attrs.get("Mounts") or [] if m.get("Type") in ("volume", "bind")})
    volumes: list[str] = []
    container = None
    try:
        for index in range(len(destinations)):
            engine.create_volume(f"{name}-m{index}", scratch_labels)
            volumes.append(f"{name}-m{index}")
        container = engine.client.containers.run(
            config["Image"], command=config.get("Cmd"), entrypoint=config.get("Entrypoint"),
            environment=config.get("Env"), user=config.get("User") or None,
            working_dir=config.get("WorkingDir") or None, labels=scratch_labels, name=name, network_mode="none",
            detach=True, tmpfs=(attrs.get("HostConfig") or {}).get("Tmpfs") or None,
            mounts=[Mount(target=d, source=v, type="volume") for d, v in zip(destinations, volumes)])
        yield Scratch(container.name, source, container)
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True, v=True)
        for volume in volumes:
            _remove_scratch_volume(engine, volume)


def _remove_scratch_volume(engine: Engine, volume: str, attempts: int = 20) -> None:
    """The engine may still hold the volume for a moment after the container is gone ("volume is in use");
    what stays is removed at the next start-up (by its drill label)."""
    for attempt in range(attempts):
        try:
            engine.remove_volume(volume)
            return
        except docker.errors.APIError as exc:
            if attempt == attempts - 1:
                log.warning("scratch volume %s is left for the next start-up: %s", volume, exc)
                return
            time.sleep(0.25)


def wait_ready(probe, *, what: str, timeout: float = 180.0, cancel=None, scratch: Scratch | None = None) -> None:
    """Call `probe` until it stops raising SourceError; a scratch server needs a moment to initialise. One that
    exits fails at once, with its exit code and last log lines."""
    deadline = time.monotonic() + timeout
    while True:
        check_cancel(cancel)
        try:
            probe()
            return
        except (SourceError, docker.errors.APIError) as exc:  # a stopped container answers exec with 409
            gone = scratch.problem() if scratch is not None else None
            if gone:
                raise SourceError(gone) from None
            if time.monotonic() > deadline:
                tail = f"; its last log lines: {scratch.tail()}" if scratch is not None else ""
                raise SourceError(f"{what} did not become ready within {timeout:.0f}s: {exc}{tail}") from None
        time.sleep(0.5)


def check_value(check: DrillCheck, value: str) -> str | None:
    """None when the query's value meets the check's expectation, else what went wrong."""
    op, wanted = expectation(check.expect)
    try:
        number = float(value.strip())
    except ValueError:
        return f"check {check.sql!r} returned {value.strip()[:80]!r}, not a number"
    ok = {"==": number == wanted, "!=": number != wanted, ">": number > wanted, ">=": number >= wanted,
          "<": number < wanted, "<=": number <= wanted}[op]
    return None if ok else f"check {check.sql!r} returned {value.strip()}, expected {check.expect}"


def checks_for(checks: list[DrillCheck], target: str, database: str) -> list[DrillCheck]:
    return [c for c in checks if c.target in (None, target) and c.database in (None, database)]
