"""Webhook notifications: the schema and its messages, which outcomes are sent, the payload, URL masking, and the
retry schedule, all with a fake opener and a fake sleep (the real HTTP exchange is in tests/integration)."""

from __future__ import annotations

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
from pydantic import ValidationError

from dockvault import __version__
from dockvault.api.common import ObjectMeta, Schema
from dockvault.api.crd import openapi_schema
from dockvault.api.loader import format_loc
from dockvault.api.notify import NotifySpec
from dockvault.credentials import MASK, mask
from dockvault.notify import DeliveryResult, Event, Notifier, mask_url, wanted

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
    ({"webhooks": []}, "webhooks: webhooks needs at least one webhook"),
    ({}, "webhooks: Field required"),
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


def test_notify_fits_a_structural_crd():
    """The integrator adds `notify: NotifySpec | None` to BackupPolicySpec; the CRD generator must accept it."""
    spec_model = type("ProbeSpec", (Schema,), {"__annotations__": {"notify": NotifySpec | None}, "notify": None})
    probe = type("Probe", (Schema,), {"__annotations__": {"metadata": ObjectMeta, "spec": spec_model}})
    webhook = openapi_schema(probe)["properties"]["spec"]["properties"]["notify"]["properties"]["webhooks"]
    assert webhook["minItems"] == 1
    fields = webhook["items"]["properties"]
    assert fields["timeoutSeconds"] == {"type": "number", "description": "per attempt; greater than 0, at most 120",
                                        "minimum": 0, "maximum": 120, "default": 10.0}
    assert (fields["retries"]["minimum"], fields["retries"]["maximum"]) == (0, 10)
    assert fields["headers"]["additionalProperties"] == {"type": "string"}
    assert set(fields["urlFrom"]["properties"]) == {"env", "file"}


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
    assert [(r.url_masked, r.ok, r.attempts, r.status) for r in results] == [
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
    assert (result.ok, result.url_masked) == (True, f"https://example.com/hook?token={MASK}")
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
