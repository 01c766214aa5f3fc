"""Mail notifications against a real SMTP server: aiosmtpd in this process on 127.0.0.1 (a port the kernel picks),
in plain mode, with STARTTLS and with implicit TLS (a throwaway CA made with the `cryptography` package, given as
caFile), with a login. Mails arrive with the right subject and body; a server that is down delays nothing; the
password is in no log record, result, exception or mail. Only the backoff sleep is faked."""

from __future__ import annotations

import email
import email.policy
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from prometheus_client import CollectorRegistry

from dockvault.api.notify import NotifySpec
from dockvault.credentials import MASK, secret_reader
from dockvault.metrics import DockvaultMetrics
from dockvault.notify import DeliveryResult, Event, Notifier, mail_body
from tests.second_engine import free_port, make_certificates

NOW = datetime(2026, 11, 21, 3, 0, 5, tzinfo=UTC)
USER = "dockvault-mailer"
PASSWORD = "Sm7p-pa55word-Qx9"  # noqa: S105 - the test's own server accepts it
TO = ["ops@example.com", "tech@example.com"]
FAILED = Event(policy="myapp", target="media", kind="backup", phase="Failed", backup_id="20261121T030000Z",
               bytes=None, duration_seconds=4.5, message="target media: volume mydata not found", host="host-a")
SUCCEEDED = Event(policy="myapp", target=None, kind="backup", phase="Succeeded", backup_id="20261121T040000Z",
                  bytes=1048576, duration_seconds=5.2, message=None, host="host-a", compression="zstd level 3")


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage
    tls: bool
    authenticated: bool


class Mailbox:
    """An aiosmtpd handler and authenticator: keeps every accepted mail; `replies` scripts answers to DATA, and
    `refuse` answers to RCPT by address."""

    def __init__(self) -> None:
        self.mails: list[Received] = []
        self.replies: list[str] = []
        self.refuse: dict[str, str] = {}
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's naming
        if self.replies:
            return self.replies.pop(0)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        tls = server.transport.get_extra_info("ssl_object") is not None  # STARTTLS or SMTPS
        self.mails.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message, tls,
                                   bool(session.authenticated)))
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        self.logins.append((data.login, data.password))
        return AuthResult(success=(data.login, data.password) == (USER.encode(), PASSWORD.encode()), handled=False)


class EphemeralController(Controller):
    """aiosmtpd's Controller on port 0: the port the kernel chose is read back before the readiness probe uses it."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class SmtpServer:
    mailbox: Mailbox
    port: int
    ca_file: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """The server's ca.pem, cert.pem and key.pem, for 127.0.0.1."""
    server, _client = make_certificates(tmp_path_factory.mktemp("smtp-tls"))
    return server


@pytest.fixture
def smtp_server(certificates) -> Iterator[Callable[[str], SmtpServer]]:
    """Starts aiosmtpd in mode plain (no TLS, no login), starttls or tls (a login required in both)."""
    started: list[Controller] = []

    def start(mode: str) -> SmtpServer:
        mailbox = Mailbox()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(certificates / "cert.pem", certificates / "key.pem")
        options: dict[str, Any] = {}
        if mode != "plain":
            options = {"authenticator": mailbox.authenticate, "auth_required": True}
        if mode == "starttls":
            options.update(tls_context=tls, require_starttls=True)
        elif mode == "tls":
            # aiosmtpd only knows about TLS it started itself (STARTTLS), so it would refuse AUTH on SMTPS.
            options.update(ssl_context=tls, auth_require_tls=False)
        controller = EphemeralController(mailbox, hostname="127.0.0.1", port=0, server_hostname="mail.test",
                                         **options)
        controller.start()
        started.append(controller)
        return SmtpServer(mailbox, controller.port, certificates / "ca.pem")

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def password_file(tmp_path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(PASSWORD + "\n", encoding="utf-8")
    return path


@pytest.fixture
def all_logs(caplog) -> pytest.LogCaptureFixture:
    """Every record of every logger, dockvault's, smtplib's and the server's, down to DEBUG."""
    caplog.set_level(logging.DEBUG)
    return caplog


def notify(server: SmtpServer, security: str, *, login: dict[str, Any] | None = None, **smtp: Any) -> NotifySpec:
    return NotifySpec.model_validate({"onSuccess": True, "email": {
        "to": TO, "from": "dockvault@example.com", "retries": 3,
        "smtp": {"host": "127.0.0.1", "port": server.port, "security": security, **(login or {}), **smtp}}})


def text(mail: Received) -> str:
    return mail.message.get_content().replace("\r\n", "\n")


def login_from(password_file: Path, monkeypatch) -> dict[str, Any]:
    monkeypatch.setenv("DV_TEST_SMTP_USER", USER)
    return {"usernameFrom": {"env": "DV_TEST_SMTP_USER"}, "passwordFrom": {"file": str(password_file)}}


def assert_no_password(caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    records = [record.getMessage() for record in caplog.records]
    assert not [line for line in records if PASSWORD in line]
    assert not [text for text in texts if PASSWORD in text]


@pytest.fixture
def notifier() -> Notifier:
    """Attempts are counted in each result; the test of backoff records its sleeps."""
    return Notifier(sleep=lambda seconds: None, clock=lambda: NOW)


def test_plain_mode_mails_failure_and_success(smtp_server, notifier):
    server = smtp_server("plain")
    spec = notify(server, "none")
    assert notifier.send(spec, FAILED) == [
        DeliveryResult(f"ops@example.com, tech@example.com via 127.0.0.1:{server.port}", True, 1, 250, None, "email")]
    assert notifier.send(spec, SUCCEEDED)[0].ok
    failed, succeeded = server.mailbox.mails
    assert (failed.mail_from, failed.rcpt_tos, failed.tls, failed.authenticated) == ("dockvault@example.com", TO,
                                                                                     False, False)
    assert failed.message["Subject"] == "[dockvault] backup of myapp on host-a: Failed"
    assert (failed.message["From"], failed.message["To"]) == ("dockvault@example.com", "ops@example.com, tech@example.com")
    body = text(failed)
    assert body == mail_body(FAILED, NOW), "the body unit-tested in tests/unit/test_notify.py, unchanged on the wire"
    assert body.startswith("The backup of policy myapp on host host-a failed.\n")
    for line in ("Backup:       20261121T030000Z", "Duration:     4.5s", "Error:",
                 "  target media: volume mydata not found", "What to do:", "    dockvault describe policy myapp"):
        assert line in body.splitlines()
    assert succeeded.message["Subject"] == "[dockvault] backup of myapp on host-a: Succeeded"
    body = text(succeeded)
    assert body == mail_body(SUCCEEDED, NOW)
    for line in ("Backup:       20261121T040000Z", "Stored:       1,048,576 bytes", "Compression:  zstd level 3"):
        assert line in body.splitlines()
    assert "What to do:" not in body


def test_starttls_with_a_login_and_a_private_ca(smtp_server, notifier, password_file, monkeypatch, all_logs):
    server = smtp_server("starttls")
    spec = notify(server, "starttls", login=login_from(password_file, monkeypatch), caFile=str(server.ca_file))
    [result] = notifier.send(spec, FAILED)
    assert (result.ok, result.attempts, result.error) == (True, 1, None)
    [mail] = server.mailbox.mails
    assert (mail.rcpt_tos, mail.tls, mail.authenticated) == (TO, True, True)
    assert mail.message["Subject"] == "[dockvault] backup of myapp on host-a: Failed"
    assert server.mailbox.logins == [(USER.encode(), PASSWORD.encode())]
    assert_no_password(all_logs, repr(result), mail.message.as_string())


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_with_a_login(smtp_server, notifier, password_file, monkeypatch, all_logs):
    server = smtp_server("tls")
    spec = notify(server, "tls", login=login_from(password_file, monkeypatch), caFile=str(server.ca_file))
    [result] = notifier.send(spec, SUCCEEDED)
    assert (result.ok, result.attempts) == (True, 1)
    [mail] = server.mailbox.mails
    assert (mail.tls, mail.authenticated) == (True, True)
    assert_no_password(all_logs, repr(result), mail.message.as_string())


def test_a_wrong_password_is_refused_without_showing_it(smtp_server, notifier, tmp_path, monkeypatch, all_logs):
    server = smtp_server("starttls")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("Wr0ng-" + PASSWORD, encoding="utf-8")
    spec = notify(server, "starttls", login=login_from(wrong, monkeypatch), caFile=str(server.ca_file))
    [result] = notifier.send(spec, FAILED)
    assert (result.ok, result.attempts, result.status) == (False, 1, 535), "a refused login is not retried"
    assert result.error.startswith("the server refused the login: 535 ")
    assert result.error.endswith("; check email.smtp.usernameFrom and passwordFrom")
    assert server.mailbox.mails == []
    assert_no_password(all_logs, repr(result))
    assert not [r for r in all_logs.records if "Wr0ng-" + PASSWORD in r.getMessage()]


def test_an_untrusted_certificate_stops_before_the_login(smtp_server, notifier, password_file, monkeypatch):
    server = smtp_server("starttls")
    [result] = notifier.send(notify(server, "starttls", login=login_from(password_file, monkeypatch)), FAILED)
    assert (result.ok, result.attempts) == (False, 1)
    assert result.error.startswith("the server's certificate cannot be verified (")
    assert result.error.endswith("); set email.smtp.caFile to the CA that signed it")
    assert (server.mailbox.mails, server.mailbox.logins) == ([], [])


def test_no_fallback_to_plain_text_when_the_server_has_no_starttls(smtp_server, notifier, password_file,
                                                                    monkeypatch, certificates):
    server = smtp_server("plain")
    spec = notify(server, "starttls", login=login_from(password_file, monkeypatch), caFile=str(certificates / "ca.pem"))
    [result] = notifier.send(spec, FAILED)
    assert (result.ok, result.attempts, result.error) == (
        False, 1, "the server cannot take this mail: STARTTLS extension not supported by server.")
    assert server.mailbox.mails == []


def test_a_4xx_reply_is_retried_with_backoff_and_a_5xx_is_not(smtp_server):
    slept: list[float] = []
    notifier = Notifier(sleep=slept.append, clock=lambda: NOW)
    server = smtp_server("plain")
    server.mailbox.replies = ["451 4.3.0 Try again later"]
    [result] = notifier.send(notify(server, "none"), FAILED)
    assert (result.ok, result.attempts, slept) == (True, 2, [1])
    assert len(server.mailbox.mails) == 1
    server.mailbox.replies = ["554 5.7.1 Rejected as spam"]
    [result] = notifier.send(notify(server, "none"), FAILED)
    assert (result.ok, result.attempts, result.status) == (False, 1, 554)
    assert result.error == "the server replied 554 5.7.1 Rejected as spam"
    assert slept == [1]


def test_refused_recipients(smtp_server, notifier):
    """One refused address: the other got the mail, so it is not sent again; all refused for now: tried again."""
    server = smtp_server("plain")
    server.mailbox.refuse = {"tech@example.com": "550 5.1.1 No such user"}
    [result] = notifier.send(notify(server, "none"), FAILED)
    assert (result.ok, result.attempts, result.status) == (False, 1, 550)
    assert result.error == "refused recipients: tech@example.com: 550 5.1.1 No such user"
    assert [mail.rcpt_tos for mail in server.mailbox.mails] == [["ops@example.com"]]
    server.mailbox.refuse = {to: "450 4.2.0 Mailbox busy" for to in TO}
    [result] = notifier.send(notify(server, "none"), FAILED)
    assert (result.ok, result.attempts, result.status) == (False, 4, 450)
    assert result.error == ("refused recipients: ops@example.com: 450 4.2.0 Mailbox busy; "
                            "tech@example.com: 450 4.2.0 Mailbox busy")
    assert len(server.mailbox.mails) == 1


def test_a_down_server_delays_nothing_and_is_counted(all_logs):
    """send_async returns while the mail is still being tried (held in its first backoff here); the attempts run on
    the notification thread, back off 1, 2, 4, and the failure is counted."""
    port = free_port()  # nothing listens on it
    registry = CollectorRegistry()
    metrics = DockvaultMetrics(registry, list)
    release, sleeping = threading.Event(), threading.Event()
    slept: list[tuple[float, str]] = []

    def sleep(seconds: float) -> None:
        slept.append((seconds, threading.current_thread().name))
        sleeping.set()
        assert release.wait(30)

    notifier = Notifier(sleep=sleep, on_failed_delivery=lambda event, channel:
                        metrics.notification_failed(event.policy, event.host, channel))
    spec = NotifySpec.model_validate({"email": {"to": TO, "from": "dockvault@example.com",
                                                "smtp": {"host": "127.0.0.1", "port": port, "security": "none"}}})
    assert notifier.send_async(spec, FAILED), "queued"
    assert sleeping.wait(30), "the first attempt failed and the notification thread is backing off"
    assert not notifier.flush(0), "the job's thread is free while the mail is still being tried"
    release.set()
    assert notifier.flush(30)
    assert slept == [(1, "dockvault-notify"), (2, "dockvault-notify"), (4, "dockvault-notify")]
    assert registry.get_sample_value("dockvault_notifications_failed_total",
                                     {"policy": "myapp", "host": "host-a", "channel": "email"}) == 1
    [final] = [r.getMessage() for r in all_logs.records if "failed after" in r.getMessage()]
    assert final == (f"notification to ops@example.com, tech@example.com via 127.0.0.1:{port} failed after 4 "
                     "attempt(s): connection failed: Connection refused")


def test_secret_key_ref_is_read_with_the_jobs_reader(smtp_server, all_logs):
    """Kubernetes mode: the notification thread reads the Secret through the reader of the job that queued it."""
    server = smtp_server("starttls")
    read: list[tuple[str, str, str]] = []

    def reader(name: str, key: str) -> str:
        read.append((name, key, threading.current_thread().name))
        return {"user": USER, "password": PASSWORD}[key]

    spec = notify(server, "starttls", caFile=str(server.ca_file), login={
        "usernameFrom": {"secretKeyRef": {"name": "smtp", "key": "user"}},
        "passwordFrom": {"secretKeyRef": {"name": "smtp", "key": "password"}}})
    notifier = Notifier(clock=lambda: NOW)
    with secret_reader(reader):
        assert notifier.send_async(spec, FAILED)
    assert notifier.flush(30)
    assert read == [("smtp", "user", "dockvault-notify"), ("smtp", "password", "dockvault-notify")]
    [mail] = server.mailbox.mails
    assert mail.authenticated
    assert_no_password(all_logs, mail.message.as_string())


def test_the_password_in_an_error_is_masked(smtp_server, notifier, password_file, monkeypatch, all_logs):
    """A server that echoes what it was given: the reply carries the password, the result and logs do not."""
    server = smtp_server("starttls")
    server.mailbox.replies = [f"554 5.6.0 Message refused: {PASSWORD}"]
    spec = notify(server, "starttls", login=login_from(password_file, monkeypatch), caFile=str(server.ca_file))
    [result] = notifier.send(spec, FAILED)
    assert result.error == f"the server replied 554 5.6.0 Message refused: {MASK}"
    dockvault_lines = [r.getMessage() for r in all_logs.records if r.name.startswith("dockvault")]
    assert any(MASK in line for line in dockvault_lines)
    assert not [line for line in dockvault_lines if PASSWORD in line]
