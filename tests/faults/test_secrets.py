"""One pass over everything dockvault shows while it works with every kind of secret: database passwords, S3 keys,
an age identity, an SMTP password and a webhook token. argv is sampled with `ps` (on the host, which sees the
containers' processes too, and `docker top` in the database containers) during the jobs; then logs, status,
manifests, state, metrics, notifications and error messages are read. Each secret must appear nowhere."""

from __future__ import annotations

import http.server
import json
import secrets
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyrage
import pytest
import yaml

from tests.e2e.cli import dockvault
from tests.second_engine import free_port, make_certificates
from tests.treecheck import populate_volume
from tests.waiting import eventually

pytestmark = pytest.mark.docker


class Sampler(threading.Thread):
    """`ps` on the host and `docker top` in the given containers, every few milliseconds, until stopped."""

    def __init__(self, containers: list) -> None:
        super().__init__(daemon=True)
        self.containers = containers
        self.seen: set[str] = set()
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, errors="replace").stdout
            self.seen.update(ps.splitlines())
            for container in self.containers:
                try:
                    for row in container.top(ps_args="-eo args").get("Processes") or []:
                        self.seen.add(" ".join(row))
                except Exception:  # noqa: BLE001 - a container between states: the host's ps still saw it
                    pass
            self.samples += 1
            time.sleep(0.02)


class Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args):
        pass


def test_no_secret_in_argv_logs_status_manifests_metrics_or_notifications(
        pg_server, maria_server, pg_database, maria_database, s3_server, docker_client, volumes, tmp_path,
        test_image, cli_env):
    from aiosmtpd.smtp import AuthResult
    from tests.integration.test_notify_mail import EphemeralController, Mailbox

    pg_db, maria_db = pg_database("sec"), maria_database("sec")
    pg_server.psql("CREATE TABLE users AS SELECT g AS id FROM generate_series(1, 5000) g", pg_db)
    maria_server.mysql("CREATE TABLE users (id INT PRIMARY KEY); INSERT INTO users VALUES (1), (2), (3)", maria_db)
    source = volumes("sec-src")
    populate_volume(docker_client, source, megabytes=5)
    identity = pyrage.x25519.Identity.generate()
    token = secrets.token_urlsafe(24)
    smtp_password = "smtp-" + secrets.token_urlsafe(18)
    wrong_password = "wrong-" + secrets.token_urlsafe(18)
    secret_values = {"postgres password": pg_server.password, "mariadb password": maria_server.password,
                     "S3 access key": s3_server.access_key, "S3 secret key": s3_server.secret_key,
                     "age identity": str(identity), "SMTP password": smtp_password, "webhook token": token,
                     "a wrong database password": wrong_password}

    # receivers: a webhook whose URL carries the token, and an SMTP server with STARTTLS and a login
    Hook.bodies = []
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    certs, _client = make_certificates(tmp_path / "tls")
    mailbox = Mailbox()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs / "cert.pem", certs / "key.pem")
    smtp = EphemeralController(mailbox, hostname="127.0.0.1", port=0, server_hostname="mail.test",
                               authenticator=lambda _s, _ss, _e, _m, data: AuthResult(
                                   success=(data.login, data.password) == (b"mailer", smtp_password.encode()),
                                   handled=False), auth_required=True, tls_context=tls,
                               require_starttls=True)
    smtp.start()

    files = tmp_path / "secrets"
    files.mkdir()
    (files / "age.txt").write_text(str(identity) + "\n")
    (files / "smtp").write_text(smtp_password + "\n")
    (files / "wrong").write_text(wrong_password + "\n")
    env = dict(cli_env, **s3_server.env, DV_TEST_HOOK=f"http://127.0.0.1:{hook.server_address[1]}/hook/{token}",
               DV_TEST_SMTP_USER="mailer")
    config = Path(cli_env["DOCKVAULT_CONFIG_DIR"])
    bucket = s3_server.bucket("sec")
    notify = {"onSuccess": True, "onFailure": True, "webhooks": [{"urlFrom": {"env": "DV_TEST_HOOK"}, "retries": 0}],
              "email": {"to": ["ops@example.com"], "from": "dockvault@example.com", "retries": 0,
                        "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "starttls",
                                 "caFile": str(certs / "ca.pem"), "usernameFrom": {"env": "DV_TEST_SMTP_USER"},
                                 "passwordFrom": {"file": str(files / "smtp")}}}}
    policy = {"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "sec"}, "spec": {
        "schedule": "0 3 * * *", "storage": s3_server.storage(bucket, prefix="h"),
        "encryption": {"age": {"recipients": [str(identity.to_public())], "identityFrom": {"file": str(files / "age.txt")}}},
        "drill": {"checks": [{"sql": "SELECT count(*) FROM users", "expect": ">0"}]}, "notify": notify,
        "targets": [{"name": "pg", "postgres": {"container": pg_server.name, "databases": [pg_db]}},
                    {"name": "maria", "mysql": {"container": maria_server.name, "databases": [maria_db]}},
                    {"name": "data", "volume": {"name": source, "quiesce": "none"}}]}}
    broken = {"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "broken"}, "spec": {
        "storage": s3_server.storage(bucket, prefix="b"), "notify": notify,
        "targets": [{"name": "maria", "mysql": {"container": maria_server.name, "databases": [maria_db],
                                                "passwordFrom": {"file": str(files / "wrong")}}}]}}
    (config / "sec.yaml").write_text(yaml.safe_dump(policy))
    (config / "broken.yaml").write_text(yaml.safe_dump(broken))

    sampler = Sampler([pg_server.container, maria_server.container])
    sampler.start()
    port = free_port()
    log = tmp_path / "run.log"
    service = subprocess.Popen([sys.executable, "-m", "dockvault", "run", "--verbose", "--metrics-addr",
                                f"127.0.0.1:{port}"], env=env, stdin=subprocess.DEVNULL, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)
    texts: dict[str, str] = {}
    try:
        try:
            eventually("the service's first backup of `sec`", lambda: json.loads(dockvault(
                "get", "backups", "-p", "sec", "-o", "json", env=env).stdout or "[]"), timeout=180, interval=1)
        except AssertionError as exc:
            lines = [line for line in log.read_text(errors="replace").splitlines() if " DEBUG " not in line]
            raise AssertionError(f"{exc}\nthe service's log without DEBUG lines:\n" + "\n".join(lines[-40:])) from None
        (config / "restore.yaml").write_text(yaml.safe_dump({
            "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "sec-restore"},
            "spec": {"policy": "sec", "backup": "latest", "targets": [{"from": "data", "volume": {
                "name": volumes("sec-restored")}}]}}))
        eventually("the restore done", lambda: "Succeeded" in dockvault("get", "restores", "-o", "json",
                                                                        env=env).stdout, timeout=120, interval=1)
        texts["metrics"] = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for args in (("get", "policies", "-o", "json"), ("get", "backups", "-o", "json"),
                     ("get", "restores", "-o", "json"), ("describe", "policy", "sec"), ("describe", "policy", "broken"),
                     ("retention", "plan", "sec")):
            result = dockvault(*args, env=env, check=False)
            texts[" ".join(args)] = result.stdout + result.stderr
    finally:
        service.terminate()
        service.wait(60)
    for args in (("drill", "sec"), ("backup", "sec"), ("backup", "broken")):
        result = dockvault(*args, env=env, check=False)
        texts[" ".join(args)] = result.stdout + result.stderr
    sampler.halt.set()
    sampler.join()
    smtp.stop()
    hook.shutdown()

    assert "failed" in texts["backup broken"] and sampler.samples > 10
    assert len(Hook.bodies) >= 3 and len(mailbox.mails) >= 3  # successes and failures were notified
    texts["log"] = log.read_text(errors="replace")
    texts["argv"] = "\n".join(sampler.seen)
    texts["notifications"] = "\n".join(b.decode(errors="replace") for b in Hook.bodies) + "\n".join(
        m.message.as_string() for m in mailbox.mails)
    client = s3_server.client()
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        if obj["Key"].endswith(".json"):
            texts[f"s3://{obj['Key']}"] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            texts[f"state {path.name}"] = path.read_bytes().decode(errors="replace")
    assert any("manifest.json" in where for where in texts) and any(pg_db in line for line in sampler.seen)
    hits = [f"{what} in {where}" for what, value in secret_values.items() for where, text in texts.items()
            if value in text]
    assert hits == []
