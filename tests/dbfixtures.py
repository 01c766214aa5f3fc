"""PostgreSQL 15 and MariaDB 10.11 servers for database dump tests, started from the fixture image.

Both servers run in containers of DOCKVAULT_TEST_IMAGE (Debian packages, see scripts/harness.sh) with
`network_mode="none"`, their data directory on a named Docker volume, and an init script passed as
`sh -c SCRIPT` that behaves like the official images' entrypoints: initialise the data directory on
first start from the password in the environment, skip that on later starts, then `exec` the server
as PID 1 so that `docker stop` (SIGTERM) shuts it down cleanly.

Passwords are required on the local socket, and never appear in the argv of any process:

- PostgreSQL: `initdb --pwfile` from a mode-600 file the script writes (shell builtin `printf`, no
  exec) and deletes right after; pg_hba.conf is `local all all scram-sha-256` and nothing else;
  `listen_addresses = ''` (no TCP); socket in /var/run/postgresql (Debian's libpq default).
- MariaDB: `mariadb-install-db --auth-root-authentication-method=normal --extra-file=FILE` where the
  mode-600 FILE (deleted right after) holds `ALTER USER root@localhost IDENTIFIED VIA
  mysql_native_password USING PASSWORD('...')` (quotes and backslashes escaped by `sed`, reading the
  password from stdin) and drops every other account but `mariadb.sys`; no unix_socket login for
  anyone; `--skip-networking`; socket /run/mysqld/mysqld.sock (Debian's client default).
- Clients get the password through the `docker exec` environment (PGPASSWORD / MYSQL_PWD); the
  password variables are unset before the server is exec'd (they stay in `docker inspect`, as with
  the official images).

Use the fixtures `pg_server` / `maria_server` (session-wide, removed with their volumes at the end)
and the factories `pg_database` / `maria_database` (a fresh, uniquely named database per call,
dropped after the test). `start_pg_server` / `start_maria_server` start dedicated servers for tests
that stop, restart or restore one; call `.remove()` when done.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import docker
import pytest
from docker.types import Mount

READY_TIMEOUT = 60.0      # seconds until a server must answer
EXEC_TIMEOUT = 120.0      # seconds for one client command
LABEL = "dockvault-test.dbfixture"

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_DATA = "/var/lib/postgresql/data"
PG_SOCKET_DIR = "/var/run/postgresql"
PG_PATH = f"{PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MARIA_DATA = "/var/lib/mysql"
MARIA_SOCKET = "/run/mysqld/mysqld.sock"

# `sh -c` init scripts. Only shell builtins (printf, test, umask, unset) ever see the password; `sed`
# reads it on stdin. No password reaches the argv of any process, short- or long-lived.
PG_INIT = r"""
set -eu
: "${POSTGRES_USER:=postgres}"
: "${PGDATA:=/var/lib/postgresql/data}"
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
chmod 2775 /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "dbfixture: POSTGRES_PASSWORD is empty; refusing to initialise $PGDATA" >&2
        exit 1
    fi
    pwfile=$(umask 077 && mktemp /var/run/postgresql/.pwfile.XXXXXX)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres:postgres "$pwfile"
    echo "dbfixture: initdb $PGDATA (superuser $POSTGRES_USER)" >&2
    as_pg initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    trap - EXIT
    # Only the local socket, and only with a password: no peer/trust, no TCP.
    printf 'local all all scram-sha-256\n' >"$PGDATA/pg_hba.conf"
    printf "%s\n" "listen_addresses = ''" "unix_socket_directories = '/var/run/postgresql'" \
        "password_encryption = 'scram-sha-256'" >>"$PGDATA/postgresql.conf"
else
    echo "dbfixture: $PGDATA already initialised; skipping initdb" >&2
fi
unset POSTGRES_PASSWORD
exec setpriv --reuid=postgres --regid=postgres --init-groups -- postgres -D "$PGDATA"
"""

MARIA_INIT = r"""
set -eu
datadir=/var/lib/mysql
mkdir -p /run/mysqld "$datadir"
chown mysql:mysql /run/mysqld "$datadir"
if [ ! -d "$datadir/mysql" ]; then
    if [ -z "${MARIADB_ROOT_PASSWORD:-}" ]; then
        echo "dbfixture: MARIADB_ROOT_PASSWORD is empty; refusing to initialise $datadir" >&2
        exit 1
    fi
    sqlfile=$(umask 077 && mktemp /run/mysqld/.init.XXXXXX)
    trap 'rm -f "$sqlfile" /run/mysqld/.install.log' EXIT
    # SQL string literal: backslash -> \\, quote -> '' (sed reads the password on stdin).
    pw=$(printf '%s' "$MARIADB_ROOT_PASSWORD" | sed -e 's/\\/\\\\/g' -e "s/'/''/g")
    # Bootstrap mode runs with grant tables unloaded: FLUSH PRIVILEGES loads them for ALTER USER.
    printf '%s\n' \
        "DELETE FROM mysql.global_priv WHERE NOT (User = 'root' AND Host = 'localhost') AND User <> 'mariadb.sys';" \
        "FLUSH PRIVILEGES;" >"$sqlfile"
    printf "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('%s');\n" \
        "$pw" >>"$sqlfile"
    pw=
    echo "dbfixture: mariadb-install-db $datadir" >&2
    if ! mariadb-install-db --user=mysql --datadir="$datadir" --auth-root-authentication-method=normal \
            --skip-test-db --skip-name-resolve --extra-file="$sqlfile" >/run/mysqld/.install.log 2>&1; then
        cat /run/mysqld/.install.log >&2
        exit 1
    fi
    rm -f "$sqlfile" /run/mysqld/.install.log
    trap - EXIT
else
    echo "dbfixture: $datadir already initialised; skipping mariadb-install-db" >&2
fi
unset MARIADB_ROOT_PASSWORD
exec mariadbd --user=mysql --datadir="$datadir" --skip-networking --socket=/run/mysqld/mysqld.sock
"""


# ------------------------------------------------------------------- exec --
@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """stdout as UTF-8, without its one trailing newline."""
        out = self.stdout.decode("utf-8")
        return out.removesuffix("\n")


class DbCommandError(RuntimeError):
    """A client command inside a database container exited non-zero."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        self.exit_code = result.exit_code
        self.stderr = result.stderr.decode("utf-8", "replace")
        super().__init__(f"{' '.join(result.argv)} exited {result.exit_code}: {self.stderr.strip()}")


def exec_command(container, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 stdin: bytes | None = None, user: str = "", timeout: float = EXEC_TIMEOUT) -> CommandResult:
    """`docker exec` with stdin fed and stdout/stderr kept apart, without output limits."""
    api = container.client.api
    exec_id = api.exec_create(container.id, list(argv), stdout=True, stderr=True, stdin=stdin is not None,
                              environment=dict(env or {}), user=user)["Id"]
    conn = api.exec_start(exec_id, socket=True)
    sock: socket.socket = getattr(conn, "_sock", conn)
    sock.settimeout(timeout)
    received = bytearray()
    failure: list[BaseException] = []

    def read() -> None:
        try:
            while chunk := sock.recv(1 << 16):
                received.extend(chunk)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if stdin is not None:
            try:
                sock.sendall(stdin)
            finally:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
        reader.join(timeout)
    finally:
        with contextlib.suppress(OSError):
            conn.close()
        with contextlib.suppress(OSError):
            sock.close()
    if reader.is_alive() or failure:
        raise TimeoutError(f"{' '.join(argv)}: no end of output within {timeout}s") from (failure or [None])[0]
    out, err = bytearray(), bytearray()
    pos = 0
    while pos + 8 <= len(received):
        kind, size = received[pos], int.from_bytes(received[pos + 4:pos + 8], "big")
        (err if kind == 2 else out).extend(received[pos + 8:pos + 8 + size])
        pos += 8 + size
    deadline = time.monotonic() + 10
    while (info := api.exec_inspect(exec_id))["Running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    code = info.get("ExitCode")
    return CommandResult(tuple(argv), -1 if code is None else int(code), bytes(out), bytes(err))


# ---------------------------------------------------------------- servers --
@dataclass
class _Server:
    container: object            # docker.models.containers.Container
    name: str                    # container name
    password: str
    user: str
    volume: str                  # named volume holding the data directory
    owns_volume: bool = field(default=True, repr=False)

    def exec(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: bytes | None = None,
             user: str = "", check: bool = False) -> CommandResult:
        result = exec_command(self.container, argv, env=env, stdin=stdin, user=user)
        if check and result.exit_code != 0:
            raise DbCommandError(result)
        return result

    def logs(self, tail: int = 200) -> str:
        return self.container.logs(tail=tail).decode("utf-8", "replace")

    def remove(self, *, volume: bool | None = None) -> None:
        """Remove the container and (by default, when this object created it) its volume."""
        with contextlib.suppress(docker.errors.NotFound):
            self.container.remove(force=True)
        if self.owns_volume if volume is None else volume:
            with contextlib.suppress(docker.errors.NotFound):
                self.container.client.volumes.get(self.volume).remove(force=True)

    def _probe(self) -> CommandResult:
        raise NotImplementedError

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the probe succeeds; fails with the container's logs when it exits or time is up."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            self.container.reload()
            if self.container.status not in ("created", "running"):
                raise RuntimeError(f"{self.name} is {self.container.status} "
                                   f"(exit {self.container.attrs['State'].get('ExitCode')}):\n{self.logs()}")
            if self.container.status == "running":
                try:
                    result = self._probe()
                except docker.errors.APIError as exc:  # e.g. the container stopped in between
                    last = str(exc)
                else:
                    if result.exit_code == 0:
                        return
                    last = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout:.0f}s (last probe: {last})\n"
                                   f"{self.logs()}")
            time.sleep(0.2)

    def restart(self, timeout: float = READY_TIMEOUT) -> None:
        """`docker restart` (SIGTERM, so a clean shutdown) and wait until the server answers again."""
        self.container.restart(timeout=30)
        self.wait_ready(timeout)


@dataclass
class PgServer(_Server):
    """`user` is the superuser (POSTGRES_USER), `password` its password."""

    def env(self, password: str | None = None) -> dict[str, str]:
        """Environment for a client `docker exec` (the password comes from here, never argv)."""
        return {"PGPASSWORD": self.password if password is None else password, "PGCLIENTENCODING": "UTF8"}

    def _probe(self) -> CommandResult:
        return self.exec(["pg_isready", "-q", "-h", PG_SOCKET_DIR, "-U", self.user, "-d", "postgres"])

    def psql(self, sql: str, db: str = "postgres", *, password: str | None = None, user: str | None = None,
             os_user: str = "") -> str:
        """Run SQL (on stdin) with `psql -XAtqw -v ON_ERROR_STOP=1`; returns stdout without its final newline.

        `password` / `user` override the server's credentials (e.g. to prove a wrong one is refused);
        raises DbCommandError with psql's stderr on a non-zero exit.
        """
        env = self.env(password)
        if password == "":
            del env["PGPASSWORD"]
        argv = ["psql", "-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1",
                "-U", user or self.user, "-d", db]
        return self.exec(argv, env=env, stdin=sql.encode("utf-8"), user=os_user, check=True).text


@dataclass
class MariaServer(_Server):
    """`user` is `root` (@localhost), `password` its password."""

    def env(self, password: str | None = None) -> dict[str, str]:
        """Environment for a client `docker exec` (the password comes from here, never argv)."""
        return {"MYSQL_PWD": self.password if password is None else password}

    def _probe(self) -> CommandResult:
        return self.exec(["mariadb-admin", "-u", self.user, "ping"], env=self.env())

    def mysql(self, sql: str, db: str | None = None, *, password: str | None = None, user: str | None = None,
              os_user: str = "") -> str:
        """Run SQL (on stdin) with `mariadb -N -B`; returns stdout without its final newline.

        `password=""` connects without any password; raises DbCommandError with stderr on failure.
        """
        env = self.env(password)
        if password == "":
            del env["MYSQL_PWD"]
        argv = ["mariadb", "-N", "-B", "--default-character-set=utf8mb4", "-u", user or self.user]
        if db is not None:
            argv.append(db)
        return self.exec(argv, env=env, stdin=sql.encode("utf-8"), user=os_user, check=True).text


def new_password() -> str:
    """A random secret that also exercises quoting: it has a quote, a backslash and a dollar sign."""
    return f"pw'{secrets.token_urlsafe(18)}\\${secrets.token_hex(4)}\""


def _start(cls, client, image: str, *, kind: str, env: dict[str, str], script: str, data_dir: str,
           volume: str | None, name: str | None, timeout: float, **fields):
    token = uuid.uuid4().hex[:8]
    name = name or f"dv-{kind}-{token}"
    owns_volume = volume is None
    volume = volume or f"dv-{kind}-data-{token}"
    if owns_volume:
        client.volumes.create(name=volume, labels={LABEL: kind})
    try:
        container = client.containers.run(
            image, ["sh", "-c", script], name=name, detach=True, network_mode="none", environment=env,
            labels={LABEL: kind}, stop_signal="SIGTERM",
            # no_copy: a fresh volume stays empty even if the image has files at the mount point.
            mounts=[Mount(target=data_dir, source=volume, type="volume", no_copy=True)])
    except BaseException:
        if owns_volume:
            with contextlib.suppress(docker.errors.APIError):
                client.volumes.get(volume).remove(force=True)
        raise
    server = cls(container=container, name=name, volume=volume, owns_volume=owns_volume, **fields)
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.remove()
        raise
    return server


def start_pg_server(client, image: str, *, password: str | None = None, user: str = "postgres",
                    volume: str | None = None, name: str | None = None,
                    timeout: float = READY_TIMEOUT) -> PgServer:
    """Start a PostgreSQL 15 server and wait until it answers with the password.

    With `volume` (an existing named volume) an initialised data directory is reused, initdb is
    skipped and `password` must be the one it was initialised with; the volume is then not removed
    by `remove()`.
    """
    password = password if password is not None else new_password()
    env = {"POSTGRES_USER": user, "POSTGRES_PASSWORD": password, "PGDATA": PG_DATA, "PATH": PG_PATH,
           "LANG": "C.UTF-8"}
    server = _start(PgServer, client, image, kind="pg", env=env, script=PG_INIT, data_dir=PG_DATA,
                    volume=volume, name=name, timeout=timeout, password=password, user=user)
    try:
        server.psql("SELECT 1")
    except BaseException:
        server.remove()
        raise
    return server


def start_maria_server(client, image: str, *, password: str | None = None, volume: str | None = None,
                       name: str | None = None, timeout: float = READY_TIMEOUT) -> MariaServer:
    """Start a MariaDB 10.11 server and wait until root@localhost answers with the password.

    `volume`: as for start_pg_server.
    """
    password = password if password is not None else new_password()
    env = {"MARIADB_ROOT_PASSWORD": password, "LANG": "C.UTF-8"}
    server = _start(MariaServer, client, image, kind="maria", env=env, script=MARIA_INIT, data_dir=MARIA_DATA,
                    volume=volume, name=name, timeout=timeout, password=password, user="root")
    try:
        server.mysql("SELECT 1")
    except BaseException:
        server.remove()
        raise
    return server


# --------------------------------------------------------------- fixtures --
# The servers are shared by every conftest that imports these fixtures (pytest forbids
# `pytest_plugins` in non-top-level conftests, so tests/integration and tests/e2e each import them,
# which makes two fixture definitions): one server per kind and image, removed after the last user.
_SHARED: dict[tuple[str, str], list] = {}


@contextlib.contextmanager
def _shared(key: tuple[str, str], start: Callable[[], _Server]) -> Iterator[_Server]:
    entry = _SHARED.get(key)
    if entry is None:
        entry = _SHARED[key] = [start(), 0]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _SHARED[key]
            entry[0].remove()


@pytest.fixture(scope="session")
def pg_server(docker_client, test_image) -> Iterator[PgServer]:
    """A PostgreSQL 15 server for the whole session (superuser `postgres`, random password)."""
    with _shared(("pg", test_image), lambda: start_pg_server(docker_client, test_image)) as server:
        yield server


@pytest.fixture(scope="session")
def maria_server(docker_client, test_image) -> Iterator[MariaServer]:
    """A MariaDB 10.11 server for the whole session (`root`@localhost, random password)."""
    with _shared(("maria", test_image), lambda: start_maria_server(docker_client, test_image)) as server:
        yield server


def _unique_db(prefix: str) -> str:
    if not prefix.replace("_", "").isalnum() or not prefix.islower() or not prefix.isascii():
        raise ValueError(f"database prefix must be lowercase ASCII letters, digits and _: {prefix!r}")
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_database(pg_server) -> Iterator[Callable[..., str]]:
    """Factory: `pg_database(prefix="t") -> name` creates an empty database, dropped after the test."""
    created: list[str] = []

    def make(prefix: str = "t") -> str:
        name = _unique_db(prefix)
        pg_server.psql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return name

    yield make
    for name in reversed(created):
        pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def maria_database(maria_server) -> Iterator[Callable[..., str]]:
    """Factory: `maria_database(prefix="t") -> name` creates an empty database (utf8mb4), dropped after the test."""
    created: list[str] = []

    def make(prefix: str = "t") -> str:
        name = _unique_db(prefix)
        maria_server.mysql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        created.append(name)
        return name

    yield make
    for name in reversed(created):
        maria_server.mysql(f"DROP DATABASE IF EXISTS `{name}`")
