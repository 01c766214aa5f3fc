"""Notifications: the schema and its messages, which outcomes are sent, the payload, the mail's subject and body,
URL masking, the retry schedule and the failure count, with a fake opener and a fake sleep (the real HTTP and SMTP
exchanges are in tests/integration/test_notify_http.py and test_notify_mail.py)."""

from __future__ import annotations

import dataclasses
import email.message
import io
import json
import logging
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from dockvault import __version__
from dockvault.api.common import ObjectMeta, Schema
from dockvault.api.crd import openapi_schema
from dockvault.api.loader import format_loc
from dockvault.api.notify import NotifySpec
from dockvault.credentials import MASK, mask, register
from dockvault.metrics import DockvaultMetrics
from dockvault.notify import DeliveryResult, Event, Notifier, compose_mail, mail_body, mail_subject, mask_url, wanted

NOW = datetime(2026, 11, 21, 3, 0, 5, tzinfo=UTC)
HOOK = "https://hooks.example.com/dockvault"

FAILED = Event(policy="myapp", target="media", kind="backup", phase="Failed", backup_id="20261121T030000Z",
               bytes=None, duration_seconds=4.5, message="target media: volume mydata not found", host="local")
SUCCEEDED = Event(policy="myapp", target=None, kind="backup", phase="Succeeded", backup_id="20261121T030000Z",
                  bytes=1048576, duration_seconds=5.2, message=None, host="local")


def spec(**webhook: Any) -> NotifySpec:
    return NotifySpec.model_validate({"webhooks": [{"url": HOOK, **webhook}], "onSuccess": True})


# --- the schema -------------------------------------------------------------------------------------------------


def errors(doc: dict[str, Any]) -> list[str]:
    """The lines the loader would print for `doc` under spec.notify."""
    with pytest.raises(ValidationError) as caught:
        NotifySpec.model_validate(doc)
    return [f"{format_loc(e['loc'])}: {e['msg'].removeprefix('Value error, ')}".lstrip(": ")
            for e in caught.value.errors(include_url=False)]


def one_webhook(**fields: Any) -> dict[str, Any]:
    return {"webhooks": [{"url": HOOK, **fields}]}


def test_defaults_and_camel_case_fields():
    notify = NotifySpec.model_validate({"webhooks": [
        {"url": HOOK},
        {"urlFrom": {"env": "DV_HOOK"}, "timeoutSeconds": 2.5, "retries": 0, "headers": {"X-Team": "ops"}},
    ]})
    assert (notify.on_success, notify.on_failure) == (False, True)
    first, second = notify.webhooks
    assert (first.url, first.url_from, first.timeout_seconds, first.retries, first.headers) == (HOOK, None, 10, 3, {})
    assert (second.url_from.env, second.timeout_seconds, second.retries) == ("DV_HOOK", 2.5, 0)
    assert notify.to_dict()["webhooks"][1] == {"urlFrom": {"env": "DV_HOOK"}, "timeoutSeconds": 2.5, "retries": 0,
                                               "headers": {"X-Team": "ops"}}


@pytest.mark.parametrize(("doc", "expected"), [
    ({"webhooks": []}, "notify needs at least one channel: email or webhooks"),
    ({}, "notify needs at least one channel: email or webhooks"),
    ({"onSuccess": True}, "notify needs at least one channel: email or webhooks"),
    (one_webhook(url="ftp://files.example.com/x"), "webhooks[0].url: url must start with http:// or https:// (it has scheme 'ftp')"),
    (one_webhook(url="hooks.example.com/x"), "webhooks[0].url: url must start with http:// or https:// (it has no scheme)"),
    (one_webhook(url="https:///hook"), "webhooks[0].url: url has no host; write it as https://HOST/PATH"),
    (one_webhook(url="https://example.com:99999/"), "webhooks[0].url: url is not a valid URL (check the host and port)"),
    (one_webhook(url="https://example.com/a b"), "webhooks[0].url: url must not contain spaces or control characters"),
    ({"webhooks": [{"urlFrom": {"env": "DV_HOOK"}, "url": HOOK}]},
     "webhooks[0]: a webhook needs exactly one of url or urlFrom, not url and urlFrom "
     "(urlFrom keeps a URL's token out of the resource)"),
    ({"webhooks": [{"timeoutSeconds": 5}]},
     "webhooks[0]: a webhook needs exactly one of url or urlFrom (urlFrom keeps a URL's token out of the resource)"),
    ({"webhooks": [{"urlFrom": {}}]}, "webhooks[0].urlFrom: urlFrom needs exactly one of env or file"),
    ({"webhooks": [{"urlFrom": {"env": "A", "file": "/run/secrets/hook"}}]},
     "webhooks[0].urlFrom: urlFrom needs exactly one of env or file, not env and file"),
    (one_webhook(timeoutSeconds=0), "webhooks[0].timeoutSeconds: timeoutSeconds must be greater than 0 and at most 120"),
    (one_webhook(timeoutSeconds=120.5), "webhooks[0].timeoutSeconds: timeoutSeconds must be greater than 0 and at most 120"),
    (one_webhook(timeoutSeconds=float("nan")), "webhooks[0].timeoutSeconds: timeoutSeconds must be greater than 0 and at most 120"),
    (one_webhook(retries=-1), "webhooks[0].retries: retries must be between 0 and 10"),
    (one_webhook(retries=11), "webhooks[0].retries: retries must be between 0 and 10"),
    (one_webhook(headers={"Bad Name": "x"}), "webhooks[0].headers: headers: 'Bad Name' is not a valid HTTP header name"),
    (one_webhook(headers={"content-type": "text/plain"}),
     "webhooks[0].headers: headers: content-type is set by dockvault and cannot be changed"),
    (one_webhook(headers={"X-Token": "abc\r\nX-Evil: 1"}),
     "webhooks[0].headers: headers: the value of X-Token must be printable ASCII without line breaks"),
    (one_webhook(secret="x"), "webhooks[0].secret: Extra inputs are not permitted"),
    ({**one_webhook(), "onFailure": False},
     "onSuccess and onFailure are both false, so nothing would ever be sent; set one to true or remove notify"),
])
def test_refused_with_a_message_naming_the_field(doc, expected):
    assert errors(doc) == [expected]


def test_messages_never_repeat_a_url_or_header_value():
    secret = "tok3nSECRETvalue99"
    doc = {"webhooks": [{"url": f"ftp://u:{secret}@example.com/{secret}"}, {"url": HOOK, "headers": {"X-Key": f"{secret}\n"}}]}
    assert not [line for line in errors(doc) if secret in line]


# The issue's example, exactly.
EMAIL = {
    "to": ["ops@example.com", "tech@example.com"],
    "from": "dockvault@example.com",
    "smtp": {"host": "smtp.example.com", "port": 587, "security": "starttls",
             "usernameFrom": {"env": "SMTP_USER"}, "passwordFrom": {"file": "/run/secrets/smtp"}},
}


def with_email(**changes: Any) -> dict[str, Any]:
    """The example, with top-level email fields or (smtp_FIELD=...) smtp fields changed; None removes a field."""
    email = {**EMAIL, "smtp": dict(EMAIL["smtp"])}
    for name, value in changes.items():
        where, name = (email["smtp"], name.removeprefix("smtp_")) if name.startswith("smtp_") else (email, name)
        if value is None:
            where.pop(name, None)
        else:
            where[name] = value
    return {"email": email}


def test_the_email_example_as_written():
    notify = NotifySpec.model_validate({"onSuccess": True, "onFailure": True, **with_email()})
    mail = notify.email
    assert (mail.to, mail.from_, mail.timeout_seconds, mail.retries) == (EMAIL["to"], "dockvault@example.com", 30, 3)
    smtp = mail.smtp
    assert (smtp.host, smtp.effective_port, smtp.security, smtp.ca_file) == ("smtp.example.com", 587, "starttls", None)
    assert (smtp.username_from.env, smtp.password_from.file) == ("SMTP_USER", "/run/secrets/smtp")
    assert notify.webhooks == []
    assert notify.to_dict() == {"onSuccess": True, "onFailure": True, "webhooks": [],
                                "email": {**EMAIL, "timeoutSeconds": 30.0, "retries": 3}}
    assert notify.receivers == {"webhook": 0, "email": 1}
    assert NotifySpec.model_validate(notify.to_dict()) == notify, "what describe shows can be applied again"


@pytest.mark.parametrize(("security", "port"), [("none", 25), ("starttls", 587), ("tls", 465)])
def test_the_port_follows_security(security, port):
    notify = NotifySpec.model_validate(with_email(smtp_port=None, smtp_security=security, smtp_usernameFrom=None,
                                                  smtp_passwordFrom=None))
    assert notify.email.smtp.effective_port == port


def test_mail_and_webhooks_together_and_a_private_ca():
    notify = NotifySpec.model_validate({**with_email(smtp_caFile="/etc/dockvault/smtp-ca.pem",
                                                     smtp_passwordFrom={"secretKeyRef": {"name": "smtp", "key": "pw"}}),
                                        "webhooks": [{"url": HOOK}]})
    assert notify.email.smtp.ca_file == "/etc/dockvault/smtp-ca.pem"
    assert notify.email.smtp.password_from.secret_key_ref.name == "smtp"
    assert notify.receivers == {"webhook": 1, "email": 1}


@pytest.mark.parametrize(("doc", "expected"), [
    (with_email(to=[]), "email.to: to needs at least one address"),
    (with_email(to=None), "email.to: Field required"),
    (with_email(to="ops@example.com"), "email.to: Input should be a valid list"),
    (with_email(to=["ops@example.com", "ops at example.com"]),
     "email.to[1]: 'ops at example.com' is not an email address; write it as NAME@DOMAIN, without a display name"),
    (with_email(to=["Ops <ops@example.com>"]),
     "email.to[0]: 'Ops <ops@example.com>' is not an email address; write it as NAME@DOMAIN, without a display name"),
    (with_email(**{"from": None}), "email.from: Field required"),
    (with_email(**{"from": "dockvault"}),
     "email.from: 'dockvault' is not an email address; write it as NAME@DOMAIN, without a display name"),
    (with_email(smtp=None), "email.smtp: Field required"),
    (with_email(smtp_host="smtp://smtp.example.com:587"),
     "email.smtp.host: host 'smtp://smtp.example.com:587' must be a host name or IP address (e.g. smtp.example.com), "
     "not a URL; port and security are separate fields"),
    (with_email(smtp_host=None), "email.smtp.host: Field required"),
    (with_email(smtp_port=0), "email.smtp.port: port must be between 1 and 65535"),
    (with_email(smtp_port=65536), "email.smtp.port: port must be between 1 and 65535"),
    (with_email(smtp_security="ssl"), "email.smtp.security: Input should be 'none', 'starttls' or 'tls'"),
    (with_email(smtp_usernameFrom=None),
     "email.smtp: usernameFrom and passwordFrom go together: set both to log in, or neither"),
    (with_email(smtp_passwordFrom=None),
     "email.smtp: usernameFrom and passwordFrom go together: set both to log in, or neither"),
    (with_email(smtp_security="none"),
     "email.smtp: usernameFrom and passwordFrom need security starttls or tls: with none the password would cross the "
     "network unencrypted"),
    (with_email(smtp_security="none", smtp_usernameFrom=None, smtp_passwordFrom=None, smtp_caFile="/ca.pem"),
     "email.smtp: caFile needs security starttls or tls: with none there is no certificate to check"),
    (with_email(smtp_passwordFrom={}),
     "email.smtp.passwordFrom: passwordFrom needs exactly one of env, file or secretKeyRef"),
    (with_email(smtp_usernameFrom={"env": "SMTP_USER", "file": "/run/secrets/user"}),
     "email.smtp.usernameFrom: a secret source needs exactly one of env, file or secretKeyRef, not env and file"),
    (with_email(smtp_password="hunter2"), "email.smtp.password: Extra inputs are not permitted"),
    (with_email(timeoutSeconds=0), "email.timeoutSeconds: timeoutSeconds must be greater than 0 and at most 120"),
    (with_email(retries=11), "email.retries: retries must be between 0 and 10"),
    (with_email(cc=["boss@example.com"]), "email.cc: Extra inputs are not permitted"),
    ({**with_email(), "onSuccess": False, "onFailure": False},
     "onSuccess and onFailure are both false, so nothing would ever be sent; set one to true or remove notify"),
])
def test_email_refused_with_a_message_naming_the_field(doc, expected):
    assert errors(doc) == [expected]


def test_notify_fits_a_structural_crd():
    """The integrator adds `notify: NotifySpec | None` to BackupPolicySpec; the CRD generator must accept it."""
    spec_model = type("ProbeSpec", (Schema,), {"__annotations__": {"notify": NotifySpec | None}, "notify": None})
    probe = type("Probe", (Schema,), {"__annotations__": {"metadata": ObjectMeta, "spec": spec_model}})
    webhook = openapi_schema(probe)["properties"]["spec"]["properties"]["notify"]["properties"]["webhooks"]
    assert "minItems" not in webhook, "webhooks: [] next to email is fine; the model wants at least one channel"
    fields = webhook["items"]["properties"]
    assert fields["timeoutSeconds"] == {"type": "number", "description": "per attempt; greater than 0, at most 120",
                                        "minimum": 0, "maximum": 120, "default": 10.0}
    assert (fields["retries"]["minimum"], fields["retries"]["maximum"]) == (0, 10)
    assert fields["headers"]["additionalProperties"] == {"type": "string"}
    assert set(fields["urlFrom"]["properties"]) == {"env", "file"}
    email = openapi_schema(probe)["properties"]["spec"]["properties"]["notify"]["properties"]["email"]
    assert email["required"] == ["to", "from", "smtp"]
    assert email["properties"]["to"]["minItems"] == 1
    assert email["properties"]["to"]["items"]["pattern"].startswith("^")
    smtp = email["properties"]["smtp"]
    assert smtp["required"] == ["host"]
    assert smtp["properties"]["security"]["enum"] == ["none", "starttls", "tls"]
    assert (smtp["properties"]["port"]["minimum"], smtp["properties"]["port"]["maximum"]) == (1, 65535)
    assert set(smtp["properties"]["passwordFrom"]["properties"]) == {"env", "file", "secretKeyRef"}


# --- which outcomes are sent ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("on_success", "on_failure", "sent"), [
    (False, True, {"Failed"}),
    (True, False, {"Succeeded"}),
    (True, True, {"Succeeded", "Failed"}),
])
def test_wanted(on_success, on_failure, sent):
    notify = NotifySpec.model_validate({"webhooks": [{"url": HOOK}], "onSuccess": on_success, "onFailure": on_failure})
    assert {e.phase for e in (SUCCEEDED, FAILED) if wanted(notify, e)} == sent


def test_nothing_is_wanted_without_a_spec():
    assert not wanted(None, FAILED)
    assert Notifier(opener=FakeOpener([])).send(None, FAILED) == []


# --- the payload ----------------------------------------------------------------------------------------------------


def test_payload_shape():
    assert FAILED.to_payload(now=NOW) == {
        "policy": "myapp",
        "target": "media",
        "kind": "backup",
        "phase": "Failed",
        "backupId": "20261121T030000Z",
        "bytes": None,
        "durationSeconds": 4.5,
        "message": "target media: volume mydata not found",
        "host": "local",
        "dockvaultVersion": __version__,
        "timestamp": "2026-11-21T03:00:05Z",
    }


def test_payload_timestamp_is_utc_and_message_masked():
    from dockvault.credentials import register

    register("pg-password-123")
    event = Event(policy="db", target="main", kind="drill", phase="Failed", backup_id=None, bytes=None,
                  duration_seconds=None, message="psql: password pg-password-123 refused", host="edge-1")
    payload = event.to_payload(now=datetime.fromisoformat("2026-11-21T12:00:00+09:00"))
    assert payload["timestamp"] == "2026-11-21T03:00:00Z"
    assert payload["message"] == f"psql: password {MASK} refused"


# --- the mail -----------------------------------------------------------------------------------------------------


FULL = Event(policy="myapp", target="media", kind="backup", phase="Failed", backup_id="20261121T030000Z",
             bytes=None, duration_seconds=4.5, message="target media: volume mydata not found\nsecond line",
             host="host-a", compression="zstd level 3", rpo_age_seconds=93600, rpo_target_seconds=86400,
             rto_seconds=754, rto_target_seconds=3600)


def test_subject_names_the_job_the_policy_the_host_and_the_outcome():
    assert mail_subject(FULL) == "[dockvault] backup of myapp on host-a: Failed"
    assert mail_subject(SUCCEEDED) == "[dockvault] backup of myapp on local: Succeeded"


def test_failure_body_in_standalone_mode():
    assert mail_body(FULL, NOW) == f"""\
The backup of policy myapp on host host-a failed.

Policy:       myapp
Host:         host-a
Job:          backup
Outcome:      Failed
Target:       media
Backup:       20261121T030000Z
Compression:  zstd level 3
Duration:     4.5s
RPO:          BREACHED: newest good backup 1d2h old (objective 1d)
RTO:          met: last restore took 12m34s (objective 1h)
Time:         2026-11-21T03:00:05Z
dockvault:    {__version__}

Error:
  target media: volume mydata not found
  second line

What to do:
  Nothing of this backup was published; the older backups are intact. A
  scheduled backup retries a temporary failure before its next slot.
  Look at:
    dockvault describe policy myapp
    dockvault's log around the time above
"""


def test_success_body_gives_sizes_and_no_advice():
    event = dataclasses.replace(SUCCEEDED, raw_bytes=5242880, rpo_age_seconds=5.2, rpo_target_seconds=86400)
    body = mail_body(event, NOW)
    assert body.startswith("The backup of policy myapp on host local succeeded.\n")
    assert "Stored:       1,048,576 bytes\nUncompressed: 5,242,880 bytes\n" in body
    assert "RPO:          met: newest good backup 5.2s old (objective 1d)\n" in body
    assert "RTO:" not in body and "Error:" not in body and "What to do" not in body


@pytest.mark.parametrize(("event", "lines"), [
    (dataclasses.replace(FULL, kind="restore", namespace="shop"), [
        "Namespace:    shop",
        "The restore did not complete; the restore request's status says what failed.",
        "kubectl describe backuppolicy myapp -n shop", "kubectl get restorerequests -n shop",
        "the dockvault operator's log (kubectl logs of its pod) around the time above"]),
    (dataclasses.replace(FULL, kind="drill"), [
        "The restore drill failed: the backups of this policy may not restore when needed."]),
    (dataclasses.replace(FULL, kind="copy"), [
        "The backup itself is safe in the primary repository; the copy catches up on its next sync."]),
    (dataclasses.replace(FULL, rpo_age_seconds=None, rto_seconds=None), [
        "RPO:          NOT MET: no successful backup yet (objective 1d)",
        "RTO:          unknown: no restore or drill measured yet (objective 1h)"]),
    (dataclasses.replace(FULL, rpo_target_seconds=None, rto_target_seconds=None), [
        "RPO:          newest good backup 1d2h old (no objective set)",
        "RTO:          last restore took 12m34s (no objective set)"]),
])
def test_body_by_kind_mode_and_objectives(event, lines):
    flat = " ".join(mail_body(event, NOW).split())  # wrapped lines joined again
    assert [line for line in lines if " ".join(line.split()) not in flat] == []


def test_long_lines_are_wrapped_at_words_so_an_ascii_mail_stays_7bit():
    path = "/var/lib/docker/volumes/" + "x" * 90
    event = dataclasses.replace(FULL, message=f"target media: {'word ' * 30}then {path} is missing\n\nafter a blank")
    lines = mail_body(event, NOW).splitlines()
    assert [line for line in lines if len(line) > 78] == [f"  {path}"], "a word longer than a line stays whole"
    start = lines.index("Error:") + 1
    assert lines[start:start + 7] == [
        "  target media:" + " word" * 12, " " + " word" * 15, "  word word word then", f"  {path}", "  is missing", "",
        "  after a blank"]
    notify = NotifySpec.model_validate(with_email())
    assert compose_mail(notify.email, FULL, NOW)["Content-Transfer-Encoding"] == "7bit"


def test_mail_headers_and_masked_message():
    register("pg-password-456")
    event = dataclasses.replace(FULL, message="psql: password pg-password-456 refused")
    notify = NotifySpec.model_validate(with_email())
    message = compose_mail(notify.email, event, NOW)
    assert message["Subject"] == "[dockvault] backup of myapp on host-a: Failed"
    assert (message["From"], message["To"]) == ("dockvault@example.com", "ops@example.com, tech@example.com")
    assert message["Date"] == "Sat, 21 Nov 2026 03:00:05 +0000"
    assert message["Message-ID"].endswith("@example.com>")
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "text/plain"
    assert f"  psql: password {MASK} refused\n" in message.get_content()
    assert "pg-password-456" not in message.as_string()


# --- masking ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.example.com/dockvault", "https://hooks.example.com/dockvault"),
    ("https://example.com/hook?token=abc123&channel=ops", f"https://example.com/hook?token={MASK}&channel={MASK}"),
    ("https://alice:s3cret@example.com:8443/hook", f"https://alice:{MASK}@example.com:8443/hook"),
    ("https://ghp0123456789abcdefABCDEF@api.example.com/x", f"https://{MASK}@api.example.com/x"),
    ("https://hooks.slack.com/services/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",
     f"https://hooks.slack.com/services/T0AB12CD3/B0EF45GH6/{MASK}"),
    ("https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
     f"https://hooks.slack.com/services/T00000000/B00000000/{MASK}"),
    ("https://outlook.example.com/webhook/3f2a9c1e-8d4b-4f6a-9b2c-1e7d5a3c9f0b@tenant/IncomingWebhook",
     f"https://outlook.example.com/webhook/{MASK}/IncomingWebhook"),
    ("https://example.com/notifications-webhook-endpoint/", "https://example.com/notifications-webhook-endpoint/"),
    ("http://[::1]:8080/hook#k=AbCdEf0123456789XYZ", f"http://[::1]:8080/hook#{MASK}"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


@pytest.mark.parametrize(("url", "secret"), [
    ("https://alice:pw-Alice-2026@example.com/hook", "pw-Alice-2026"),
    ("https://example.com/hook?key=hunter2&format=json", "hunter2"),
    ("https://example.com/services/T0AB12CD3/a1B2c3D4e5F6g7H8i9J0k1L2", "a1B2c3D4e5F6g7H8i9J0k1L2"),
])
def test_sent_urls_and_their_secrets_are_registered(url, secret):
    Notifier(opener=FakeOpener([200]), sleep=no_sleep).send(spec(url=url), FAILED)
    assert mask(f"posting to {url}") == f"posting to {MASK}"
    assert mask(f"error from {secret} receiver") == f"error from {MASK} receiver"
    assert mask("format=json&team=T0AB12CD3") == "format=json&team=T0AB12CD3", "what is no credential stays readable"


# --- delivery and retries, with a fake opener -------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str] | None = None):
        self.status, self.reason = status, "OK"
        self.headers = email.message.Message()
        for name, value in (headers or {}).items():
            self.headers[name] = value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeOpener:
    """Plays `script` one entry per request: a status, (status, headers), or an exception to raise."""

    def __init__(self, script: list[Any]):
        self.script = list(script)
        self.requests: list[tuple[urllib.request.Request, float]] = []

    def open(self, request, timeout):
        self.requests.append((request, timeout))
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, BaseException):
            raise step
        status, headers = step if isinstance(step, tuple) else (step, {})
        if status >= 300:  # as the real opener does, through HTTPErrorProcessor
            message = email.message.Message()
            for name, value in headers.items():
                message[name] = value
            raise urllib.error.HTTPError(request.full_url, status, "Nope", message, io.BytesIO(b"echo " + request.full_url.encode()))
        return FakeResponse(status, headers)


def no_sleep(seconds: float) -> None:
    pass


def send(script: list[Any], **webhook: Any) -> tuple[DeliveryResult, FakeOpener, list[float]]:
    slept: list[float] = []
    opener = FakeOpener(script)
    [result] = Notifier(opener=opener, sleep=slept.append, clock=lambda: NOW).send(spec(**webhook), FAILED)
    return result, opener, slept


def refused() -> urllib.error.URLError:
    return urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))


def test_request_shape():
    result, opener, _ = send([200], headers={"Authorization": "Bearer abcdefgh"}, timeoutSeconds=2.5)
    assert result == DeliveryResult(HOOK, True, 1, 200, None)
    [(request, timeout)] = opener.requests
    assert (request.get_method(), request.full_url, timeout) == ("POST", HOOK, 2.5)
    assert request.get_header("Content-type") == "application/json"
    assert request.get_header("User-agent") == f"dockvault/{__version__}"
    assert request.get_header("Authorization") == "Bearer abcdefgh"
    assert json.loads(request.data) == FAILED.to_payload(now=NOW)


def test_userinfo_becomes_basic_auth_not_part_of_the_host():
    _, opener, _ = send([200], url="https://alice:s3cret@example.com/hook")
    [(request, _)] = opener.requests
    assert request.full_url == "https://example.com/hook"
    assert request.host == "example.com"
    assert request.get_header("Authorization") == "Basic YWxpY2U6czNjcmV0"


def test_5xx_then_200_takes_two_attempts():
    result, opener, slept = send([503, 200])
    assert (result.ok, result.attempts, result.status, result.error) == (True, 2, 200, None)
    assert slept == [1]


def test_429_is_retried_and_retry_after_is_honoured_up_to_a_limit():
    result, _, slept = send([(429, {"Retry-After": "7"}), (503, {"Retry-After": "3600"}), 200])
    assert (result.ok, result.attempts) == (True, 3)
    assert slept == [7, 30]


def test_4xx_is_not_retried():
    result, opener, slept = send([400])
    assert result == DeliveryResult(HOOK, False, 1, 400, "HTTP 400 Nope")
    assert (len(opener.requests), slept) == (1, [])


def test_redirects_are_not_retried():
    result, _, slept = send([302])
    assert (result.ok, result.attempts, result.status) == (False, 1, 302)
    assert result.error == "HTTP 302 Nope (redirects are not followed; configure the final URL)"


def test_connection_refused_four_times_backs_off_1_2_4():
    result, opener, slept = send([refused()] * 4)
    assert result == DeliveryResult(HOOK, False, 4, None, "connection failed: Connection refused")
    assert len(opener.requests) == 4
    assert slept == [1, 2, 4]


def test_backoff_is_capped_and_retries_follow_the_spec():
    result, _, slept = send([refused()] * 11, retries=10)
    assert result.attempts == 11
    assert slept == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    result, _, slept = send([refused()], retries=0)
    assert (result.attempts, slept) == (1, [])


@pytest.mark.parametrize(("error", "shown"), [
    (TimeoutError("timed out"), "timed out after 10s"),
    (urllib.error.URLError(TimeoutError("timed out")), "timed out after 10s"),
    (ConnectionResetError(104, "Connection reset by peer"), "connection failed: Connection reset by peer"),
])
def test_timeouts_and_dropped_connections_are_retried(error, shown):
    result, _, slept = send([error, 204])
    assert (result.ok, result.attempts, result.status, slept) == (True, 2, 204, [1])


def test_a_failure_that_cannot_improve_is_not_retried():
    result, _, slept = send([urllib.error.URLError("unknown url type: htps")])
    assert (result.ok, result.attempts, result.error, slept) == (False, 1, "cannot send: unknown url type: htps", [])


def test_never_raises():
    result, _, _ = send([RuntimeError("receiver library bug")])
    assert (result.ok, result.attempts, result.error) == (False, 1, "RuntimeError: receiver library bug")

    def broken_sleep(seconds: float) -> None:
        raise RuntimeError("sleep is broken")

    [result] = Notifier(opener=FakeOpener([503]), sleep=broken_sleep).send(spec(), FAILED)
    assert (result.ok, result.error) == (False, "RuntimeError: sleep is broken")


def test_every_webhook_gets_its_own_result():
    notify = NotifySpec.model_validate({"webhooks": [
        {"url": "https://a.example.com/x"}, {"urlFrom": {"env": "DV_UNSET_HOOK_FOR_TEST"}}, {"url": "https://b.example.com/y"},
    ]})
    opener = FakeOpener([500, 200])
    results = Notifier(opener=opener, sleep=no_sleep).send(notify, FAILED)
    assert [(r.receiver, r.ok, r.attempts, r.status) for r in results] == [
        ("https://a.example.com/x", True, 2, 200),
        ("(urlFrom.env DV_UNSET_HOOK_FOR_TEST)", False, 0, None),
        ("https://b.example.com/y", True, 1, 200),
    ]
    assert results[1].error == "urlFrom.env: environment variable DV_UNSET_HOOK_FOR_TEST is not set for dockvault"


def test_url_from_file(tmp_path):
    path = tmp_path / "hook-url"
    path.write_text("https://example.com/hook?token=fromfile123\n", encoding="utf-8")
    opener = FakeOpener([200])
    [result] = Notifier(opener=opener).send(spec(url=None, urlFrom={"file": str(path)}), FAILED)
    assert (result.ok, result.receiver) == (True, f"https://example.com/hook?token={MASK}")
    assert opener.requests[0][0].full_url == "https://example.com/hook?token=fromfile123"


@pytest.mark.parametrize(("content", "error"), [
    (None, "urlFrom.file: cannot read {path}: No such file or directory"),
    ("ftp://example.com/token=abc\n", "urlFrom.file {path}: the URL must start with http:// or https:// (it has scheme 'ftp')"),
])
def test_url_from_file_problems(tmp_path, content, error):
    path = tmp_path / "hook-url"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    opener = FakeOpener([])
    [result] = Notifier(opener=opener).send(spec(url=None, urlFrom={"file": str(path)}), FAILED)
    assert (result.ok, result.attempts, result.error) == (False, 0, error.format(path=path))
    assert opener.requests == []


def test_failures_are_logged_with_the_url_masked(caplog):
    token = "Zq8vLw3nPx7rTy2kMb5c"
    url = f"https://bob:pa55-{token}@example.com/hooks/{token}?sig=s1g-{token}"
    with caplog.at_level(logging.DEBUG, logger="dockvault"):
        result, _, _ = send([503, 503, 503, 503], url=url)
    assert not result.ok
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # three retries announced, one final failure
    assert lines[-1] == (f"notification to https://bob:{MASK}@example.com/hooks/{MASK}?sig={MASK} failed after "
                         "4 attempt(s): HTTP 503 Nope")
    assert not [line for line in lines if token in line]
    assert token not in repr(result)


# --- sending from the notification thread ---------------------------------------------------------------------------


class BlockingOpener(FakeOpener):
    def __init__(self):
        super().__init__([])
        self.entered, self.release = threading.Event(), threading.Event()

    def open(self, request, timeout):
        self.entered.set()
        assert self.release.wait(10)
        return super().open(request, timeout)


def test_send_async_returns_at_once_and_flush_waits():
    opener = BlockingOpener()
    notifier = Notifier(opener=opener, sleep=no_sleep)
    assert notifier.send_async(spec(), FAILED)
    assert opener.entered.wait(5)
    assert not notifier.flush(0.05), "a delivery is still in flight"
    opener.release.set()
    assert notifier.flush(5)
    assert len(opener.requests) == 1


def test_send_async_drops_with_a_log_line_when_the_queue_is_full(caplog):
    opener = BlockingOpener()
    notifier = Notifier(opener=opener, sleep=no_sleep, queue_size=1)
    assert notifier.send_async(spec(), FAILED)
    assert opener.entered.wait(5)  # the first is in flight, so the queue is empty again
    assert notifier.send_async(spec(), FAILED)
    with caplog.at_level(logging.WARNING, logger="dockvault"):
        assert not notifier.send_async(spec(), FAILED)
    assert [r.getMessage() for r in caplog.records] == [
        "notification of backup failed of policy myapp dropped: 1 notifications are already waiting"]
    opener.release.set()
    assert notifier.flush(5)
    assert len(opener.requests) == 2


def test_send_async_skips_unwanted_events():
    opener = FakeOpener([])
    notifier = Notifier(opener=opener)
    notify = NotifySpec.model_validate({"webhooks": [{"url": HOOK}]})
    assert not notifier.send_async(notify, SUCCEEDED)
    assert not notifier.send_async(None, FAILED)
    assert notifier.flush(1)
    assert opener.requests == []


def test_send_async_stamps_the_time_it_was_queued():
    times = iter([NOW, datetime(2030, 1, 1, tzinfo=UTC)])
    opener = FakeOpener([200])
    notifier = Notifier(opener=opener, clock=lambda: next(times))
    notifier.send_async(spec(), FAILED)
    assert notifier.flush(5)
    assert json.loads(opener.requests[0][0].data)["timestamp"] == "2026-11-21T03:00:05Z"


# --- mail that cannot be sent, and the failure count -----------------------------------------------------------------


def email_only(**changes: Any) -> NotifySpec:
    return NotifySpec.model_validate({**with_email(**changes), "onSuccess": True})


def test_a_missing_login_is_reported_naming_the_field_and_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("DV_TEST_SMTP_USER", raising=False)
    failed: list[tuple[Event, str]] = []
    notifier = Notifier(sleep=no_sleep, on_failed_delivery=lambda event, channel: failed.append((event, channel)))
    [result] = notifier.send(email_only(smtp_usernameFrom={"env": "DV_TEST_SMTP_USER"}), FAILED)
    assert result == DeliveryResult("ops@example.com, tech@example.com via smtp.example.com:587", False, 0, None,
                                    "email.smtp.usernameFrom.env: environment variable DV_TEST_SMTP_USER is not set "
                                    "for dockvault", "email")
    assert failed == [(FAILED, "email")]


def test_an_unreadable_ca_file_is_reported(tmp_path):
    missing, not_pem = tmp_path / "missing.pem", tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n", encoding="utf-8")
    results = [Notifier(sleep=no_sleep).send(email_only(smtp_caFile=str(path)), FAILED)[0] for path in (missing, not_pem)]
    assert [(r.ok, r.attempts, r.error) for r in results] == [
        (False, 0, f"email.smtp.caFile: cannot read {missing}: No such file or directory"),
        (False, 0, f"email.smtp.caFile: {not_pem} holds no PEM certificate"),
    ]


def test_failed_deliveries_are_counted_per_channel():
    registry = CollectorRegistry()
    metrics = DockvaultMetrics(registry, list)
    metrics.policy_seen("myapp", "local", ())

    def count(channel: str) -> float | None:
        return registry.get_sample_value("dockvault_notifications_failed_total",
                                         {"policy": "myapp", "host": "local", "channel": channel})

    assert (count("webhook"), count("email")) == (0, 0), "both exist at 0 once the policy is loaded"
    notifier = Notifier(opener=FakeOpener([400, 200]), sleep=no_sleep, on_failed_delivery=lambda event, channel:
                        metrics.notification_failed(event.policy, event.host, channel))
    notify = NotifySpec.model_validate({**with_email(smtp_usernameFrom={"env": "DV_TEST_UNSET_USER"}),
                                        "webhooks": [{"url": HOOK}, {"url": HOOK}]})
    results = notifier.send(notify, FAILED)
    assert [(r.channel, r.ok) for r in results] == [("webhook", False), ("webhook", True), ("email", False)]
    assert (count("webhook"), count("email")) == (1, 1)


def test_a_failing_counter_stops_nothing(caplog):
    def broken(event: Event, channel: str) -> None:
        raise RuntimeError("counter is broken")

    opener = FakeOpener([500, 500])
    notify = NotifySpec.model_validate({"webhooks": [{"url": HOOK, "retries": 0}, {"url": HOOK, "retries": 0}]})
    with caplog.at_level(logging.WARNING, logger="dockvault"):
        results = Notifier(opener=opener, on_failed_delivery=broken).send(notify, FAILED)
    assert [r.attempts for r in results] == [1, 1]
    assert "notification failure of policy myapp not counted: counter is broken" in caplog.messages


def test_dropped_notifications_are_counted_per_receiver():
    failed: list[str] = []
    opener = BlockingOpener()
    notifier = Notifier(opener=opener, sleep=no_sleep, queue_size=1,
                        on_failed_delivery=lambda event, channel: failed.append(channel))
    notify = NotifySpec.model_validate({**with_email(), "webhooks": [{"url": HOOK}, {"url": HOOK}]})
    assert notifier.send_async(notify, FAILED)
    assert opener.entered.wait(5)
    assert notifier.send_async(notify, FAILED)
    assert not notifier.send_async(notify, FAILED)
    assert sorted(failed) == ["email", "webhook", "webhook"]
    opener.release.set()
