"""A remote engine over TCP with TLS client certificates (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), with
REQUESTS_CA_BUNDLE set as on these machines: dockvault.engine.connect.client_from_env reaches it where
docker.from_env() fails (docker-py issue #2433), and a database job runs through it end to end.

The engine is tests/second_engine.tls_engine (fixture `tls_docker_env`): same machine, but dockvault talks to
it only over tcp://127.0.0.1 with TLS. Set-up that is not under test (seeding a database) uses its unix socket.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import docker
import pytest

from dockvault.engine.connect import DockerEnvError, client_from_env
from tests.second_engine import make_certificates

pytestmark = pytest.mark.docker

DOCKER_VARS = ("DOCKER_HOST", "DOCKER_TLS", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT")


@pytest.fixture
def ca_bundle() -> str:
    """REQUESTS_CA_BUNDLE, the trap: set on these machines; set here to the system's CAs where it is not."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE")
    if bundle:
        return bundle
    candidates = [ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt"]
    bundle = next((path for path in candidates if path and os.path.isfile(path)), None)
    if bundle is None:
        import certifi

        bundle = certifi.where()
    return bundle


@pytest.fixture
def remote_env(tls_docker_env, ca_bundle, monkeypatch) -> dict[str, str]:
    """This process's environment pointed at the TLS engine, with REQUESTS_CA_BUNDLE set."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_bundle)
    for name in DOCKER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in tls_docker_env.items():
        monkeypatch.setenv(name, value)
    return dict(tls_docker_env)


def cert_dir(tmp_path: Path, source: Path, **replace: Path | None) -> Path:
    """A copy of the client's ca.pem, cert.pem, key.pem; `name=None` leaves a file out, `name=path` swaps it."""
    target = tmp_path / "certs"
    target.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        origin = replace.get(name.replace(".pem", ""), source / name)
        if origin is not None:
            shutil.copyfile(origin, target / name)
    return target


def test_requests_ca_bundle_is_set_as_on_these_machines(remote_env):
    assert os.environ["REQUESTS_CA_BUNDLE"] and os.path.isfile(os.environ["REQUESTS_CA_BUNDLE"])
    assert remote_env["DOCKER_HOST"].startswith("tcp://127.0.0.1:") and remote_env["DOCKER_TLS_VERIFY"] == "1"


def test_client_from_env_reaches_the_tls_engine(remote_env, test_image):
    client = client_from_env()
    try:
        assert client.ping() is True
        assert client.version()["ApiVersion"]
        assert any(test_image in image.tags for image in client.images.list())
        assert client.api.base_url == "https://" + remote_env["DOCKER_HOST"].removeprefix("tcp://")
        assert client.api.verify == os.path.join(remote_env["DOCKER_CERT_PATH"], "ca.pem")
        client.api.trust_env = True  # what requests.Session.__init__ does; must not bring the bundle back
        assert client.ping() is True
    finally:
        client.close()


def test_the_docker_cli_reaches_it_with_the_same_environment(remote_env):
    result = subprocess.run(["docker", "version", "--format", "{{.Server.APIVersion}}"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_docker_from_env_falls_into_the_ca_bundle_trap(remote_env, monkeypatch):
    """docker-py issue #2433: requests swaps DOCKER_CERT_PATH's CA for REQUESTS_CA_BUNDLE on every request."""
    try:
        docker.from_env(version="auto", timeout=30).close()
    except docker.errors.DockerException as exc:
        assert "CERTIFICATE_VERIFY_FAILED" in str(exc)
    else:
        pytest.skip("docker.from_env() reached the TLS engine with REQUESTS_CA_BUNDLE set: docker-py or requests "
                    "no longer let the bundle override DOCKER_CERT_PATH (issue #2433 fixed?)")
    # The bundle is the cause: without it (and CURL_CA_BUNDLE, the fallback) from_env connects.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    client = docker.from_env(version="auto", timeout=30)
    try:
        assert client.ping() is True
    finally:
        client.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_docker_tls_without_verification_stays_unverified(remote_env, monkeypatch, tmp_path):
    """DOCKER_TLS=1 (no DOCKER_TLS_VERIFY): the engine is not checked, whatever REQUESTS_CA_BUNDLE says; the
    client certificate is still sent (the engine requires one). A wrong ca.pem does not matter then."""
    other_server, _ = make_certificates(tmp_path / "other")
    monkeypatch.delenv("DOCKER_TLS_VERIFY")
    monkeypatch.setenv("DOCKER_TLS", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(cert_dir(tmp_path, Path(remote_env["DOCKER_CERT_PATH"]),
                                                        ca=other_server / "ca.pem")))
    client = client_from_env(timeout=30)
    try:
        assert client.api.verify is False
        assert client.ping() is True
    finally:
        client.close()


def test_a_wrong_ca_fails_with_a_clear_error(remote_env, monkeypatch, tmp_path):
    other_server, _ = make_certificates(tmp_path / "other")
    certs = cert_dir(tmp_path, Path(remote_env["DOCKER_CERT_PATH"]), ca=other_server / "ca.pem")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(certs))
    with pytest.raises(DockerEnvError) as caught:
        client_from_env(timeout=30)
    message = str(caught.value)
    assert "certificate is not accepted with the CA" in message and str(certs / "ca.pem") in message
    assert f"DOCKER_CERT_PATH={certs}" in message and "CERTIFICATE_VERIFY_FAILED" in message
    assert remote_env["DOCKER_HOST"] in message


def test_a_client_certificate_from_another_ca_is_refused_clearly(remote_env, monkeypatch, tmp_path):
    _, other_client = make_certificates(tmp_path / "other")
    certs = cert_dir(tmp_path, Path(remote_env["DOCKER_CERT_PATH"]), cert=other_client / "cert.pem",
                     key=other_client / "key.pem")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(certs))
    with pytest.raises(DockerEnvError) as caught:
        client_from_env(timeout=30)
    assert "most likely refusing the client certificate" in str(caught.value)
    assert f"client certificate {certs / 'cert.pem'}" in str(caught.value)


def test_no_client_certificate_is_refused_clearly(remote_env, monkeypatch, tmp_path):
    """Like the CLI, cert.pem and key.pem may both be absent; this engine then refuses the handshake."""
    certs = cert_dir(tmp_path, Path(remote_env["DOCKER_CERT_PATH"]), cert=None, key=None)
    monkeypatch.setenv("DOCKER_CERT_PATH", str(certs))
    with pytest.raises(DockerEnvError) as caught:
        client_from_env(timeout=30)
    assert "no client certificate (neither cert.pem nor key.pem in" in str(caught.value)


@pytest.mark.parametrize("missing", ["ca", "cert", "key"])
def test_a_missing_certificate_file_is_named(remote_env, monkeypatch, tmp_path, missing):
    certs = cert_dir(tmp_path, Path(remote_env["DOCKER_CERT_PATH"]), **{missing: None})
    monkeypatch.setenv("DOCKER_CERT_PATH", str(certs))
    with pytest.raises(DockerEnvError) as caught:
        client_from_env(timeout=30)
    assert f"{certs / (missing + '.pem')} does not exist" in str(caught.value)
    assert f"DOCKER_CERT_PATH={certs}" in str(caught.value)


# ------------------------------------------------------------------------ a job over TLS --
PG_SEED = """
CREATE TABLE items (id integer PRIMARY KEY, title text, payload bytea);
INSERT INTO items SELECT i, 'Ürün №' || i || ' ' || repeat('ß', i % 7), decode(md5(i::text), 'hex')
FROM generate_series(1, 2000) AS i;
CREATE SEQUENCE ticket START 500;
SELECT nextval('ticket');
"""
PG_CHECKS = ["SELECT id, title, encode(payload, 'base64') FROM items ORDER BY id", "SELECT last_value FROM ticket"]
RESTORE_TIMEOUT = 60.0


class Hung(AssertionError):
    """A job or command over the TLS connection did not finish in time."""


@pytest.fixture
def pg_on_tls_engine(tls_docker_env, test_image):
    """A PostgreSQL server (network_mode none) in a container of the TLS engine, started through its unix socket."""
    from tests.dbfixtures import start_pg_server

    setup = docker.DockerClient(base_url=tls_docker_env.setup_host, version="auto", timeout=300)
    server = start_pg_server(setup, test_image)
    yield server
    server.remove()
    setup.close()


@pytest.fixture
def tls_engine_job(remote_env, test_image, pg_on_tls_engine, tmp_path):
    from dockvault.api import BackupPolicy
    from dockvault.engine.core import Engine
    from dockvault.storage.local import LocalRepository

    server = pg_on_tls_engine
    server.psql("CREATE DATABASE shop")
    server.psql(PG_SEED, "shop")
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    policy = BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "p"},
        "spec": {"targets": [{"name": "db", "postgres": {"container": server.name, "databases": ["shop"]}}],
                 "storage": {"local": {"path": str(repo_dir)}}}})
    engine = Engine(client_from_env(), helper_image=test_image)
    assert engine.client.api.base_url.startswith("https://127.0.0.1:")
    yield engine, policy, LocalRepository(repo_dir), server
    engine.client.close()


def test_postgres_dump_backup_over_tls(tls_engine_job):
    from dockvault.actions.backup import run_backup

    engine, policy, repo, server = tls_engine_job
    outcome = run_backup(policy, engine=engine, repository=repo)
    assert outcome.succeeded, outcome.record.status.message
    dump, roles = outcome.record.status.artifacts
    assert dump.file == "db.shop.pgdump" and dump.details["serverVersion"].startswith("15.")
    assert roles.file == "db.globals.sql.zst"
    assert outcome.record.status.bytes > 0


def test_postgres_dump_backup_drop_restore_over_tls(tls_engine_job):
    from dockvault.actions.backup import run_backup
    from dockvault.actions.restore import run_restore
    from dockvault.api import RestoreRequest

    engine, policy, repo, server = tls_engine_job
    before = [server.psql(sql, "shop") for sql in PG_CHECKS]
    assert before[1] == "500"
    outcome = run_backup(policy, engine=engine, repository=repo)
    assert outcome.succeeded, outcome.record.status.message

    server.psql('DROP DATABASE "shop" WITH (FORCE)')
    request = RestoreRequest.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "r"},
        "spec": {"policy": "p", "targets": [{"from": "db", "postgres": {"container": server.name,
                                                                          "database": "shop"}}]}})
    done: dict = {}

    def restore() -> None:
        try:
            done["result"] = run_restore(request, policy, engine=engine, repository=repo)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            done["error"] = exc

    worker = threading.Thread(target=restore, daemon=True)
    worker.start()
    worker.join(RESTORE_TIMEOUT)
    if worker.is_alive():
        server.container.remove(force=True)  # ends the exec, and with it the stuck connection
        worker.join(30)
        raise Hung(f"the restore over TLS did not finish within {RESTORE_TIMEOUT:.0f}s")
    if "error" in done:
        raise done["error"]
    result = done["result"]
    assert result.succeeded, result.status.message
    assert [server.psql(sql, "shop") for sql in PG_CHECKS] == before


# ---------------------------------------------------------------------- exec streams over TLS --
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the reader's EOFError
def test_exec_output_written_after_stdin_ends_arrives_over_tls(remote_env, test_image):
    """What ExecProcess.feed does for restores (psql, mysql, the api transport's helpers): send stdin, end it,
    read what the command writes then. Over TLS, ending stdin must be a TLS close_notify, not a TCP half-close
    (which dropped the TLS layer: the output after it was lost and a MariaDB backup hung on its first query)."""
    from dockvault.engine.execstream import ExecProcess

    client = client_from_env(timeout=60)
    container = client.containers.run(test_image, ["sleep", "300"], entrypoint=[], detach=True, network_mode="none")
    try:
        proc = ExecProcess(client, container.id, ["sh", "-c", "wc -c; echo done >&2"], stdin=True)
        done: dict = {}

        def feed() -> None:
            try:
                done["out"] = proc.feed([b"x" * 1000])
                done["result"] = proc.result(timeout=30)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                done["error"] = exc

        worker = threading.Thread(target=feed, daemon=True)
        worker.start()
        worker.join(15)
        if worker.is_alive():
            exited = client.api.exec_inspect(proc.exec_id)
            proc.close()  # unblocks the reader
            worker.join(10)
            raise Hung(f"no end of the exec's output within 15s over TLS (the command itself has "
                       f"{'exited' if not exited['Running'] else 'not exited'})")
        proc.close()
        if "error" in done:
            raise done["error"]
        assert done["out"] == b"1000\n"
        assert done["result"].exit_code == 0 and done["result"].stderr == "done"
    finally:
        container.remove(force=True)
        client.close()
