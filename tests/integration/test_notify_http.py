"""Webhook notifications against a real HTTP receiver on 127.0.0.1: payload and headers on the wire, retries,
timeouts, redirects, urlFrom, and no token in any log line or result. Only the backoff sleep is faked."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dockvault import __version__
from dockvault.api.notify import NotifySpec
from dockvault.credentials import MASK
from dockvault.notify import DeliveryResult, Event, Notifier

NOW = datetime(2026, 11, 21, 3, 0, 5, tzinfo=UTC)
EVENT = Event(policy="myapp", target="media", kind="restore", phase="Failed", backup_id="20261121T030000Z",
              bytes=None, duration_seconds=12.5, message="target media: volume mydata-restored exists", host="local")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay: float = 0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server in a thread that records every request and answers with the scripted replies, then 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: list[Reply] = []
        self.stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(Received("POST", self.path, dict(self.headers.items()), body))
                reply = receiver.replies.pop(0) if receiver.replies else Reply()
                if reply.delay and receiver.stop.wait(reply.delay):
                    return
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the client gave up waiting
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """A proxy from the environment would carry the requests off this host."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def receiver():
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.stop.set()
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def notifier(slept) -> Notifier:
    return Notifier(sleep=slept.append, clock=lambda: NOW)


def notify(*webhooks: dict[str, Any]) -> NotifySpec:
    return NotifySpec.model_validate({"webhooks": list(webhooks)})


def test_delivers_the_exact_payload_and_headers(receiver, notifier, slept):
    [result] = notifier.send(notify({"url": receiver.url(), "headers": {"X-Team": "ops"}}), EVENT)
    assert result == DeliveryResult(receiver.url(), True, 1, 200, None)
    [request] = receiver.received
    assert (request.method, request.path) == ("POST", "/hook")
    assert json.loads(request.body) == {
        "policy": "myapp", "target": "media", "kind": "restore", "phase": "Failed", "backupId": "20261121T030000Z",
        "bytes": None, "durationSeconds": 12.5, "message": "target media: volume mydata-restored exists",
        "host": "local", "dockvaultVersion": __version__, "timestamp": "2026-11-21T03:00:05Z",
    }
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"dockvault/{__version__}"
    assert headers["x-team"] == "ops"
    assert headers["host"] == f"127.0.0.1:{receiver.server.server_address[1]}"
    assert headers["content-length"] == str(len(request.body))
    assert slept == []


def test_503_twice_then_accepted(receiver, notifier, slept):
    receiver.replies = [Reply(503), Reply(503)]
    [result] = notifier.send(notify({"url": receiver.url()}), EVENT)
    assert (result.ok, result.attempts, result.status, result.error) == (True, 3, 200, None)
    assert slept == [1, 2]
    assert len(receiver.received) == 3
    assert len({r.body for r in receiver.received}) == 1, "every attempt sends the same payload"


def test_a_slow_receiver_times_out_within_a_bounded_time(receiver, notifier, slept):
    receiver.replies = [Reply(delay=10), Reply(delay=10)]
    started = time.monotonic()
    [result] = notifier.send(notify({"url": receiver.url(), "timeoutSeconds": 0.3, "retries": 1}), EVENT)
    elapsed = time.monotonic() - started
    assert (result.ok, result.attempts, result.status, result.error) == (False, 2, None, "timed out after 0.3s")
    assert slept == [1]
    assert elapsed < 2, f"two attempts of 0.3s took {elapsed:.1f}s"


def test_a_closed_port_is_retried_with_backoff(notifier, slept):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    [result] = notifier.send(notify({"url": f"http://127.0.0.1:{port}/hook"}), EVENT)
    assert (result.ok, result.attempts, result.status) == (False, 4, None)
    assert result.error == "connection failed: Connection refused"
    assert slept == [1, 2, 4]


def test_4xx_is_final(receiver, notifier, slept):
    receiver.replies = [Reply(404)]
    [result] = notifier.send(notify({"url": receiver.url()}), EVENT)
    assert (result.ok, result.attempts, result.status, result.error) == (False, 1, 404, "HTTP 404 Not Found")
    assert (len(receiver.received), slept) == (1, [])


def test_redirects_are_not_followed(receiver, notifier):
    receiver.replies = [Reply(302, headers={"Location": receiver.url("/elsewhere")})]
    [result] = notifier.send(notify({"url": receiver.url()}), EVENT)
    assert (result.ok, result.attempts, result.status) == (False, 1, 302)
    assert [r.path for r in receiver.received] == ["/hook"]


def test_url_from_env(receiver, notifier, monkeypatch):
    token = "Env0Token1234567890abcdef"
    monkeypatch.setenv("DV_TEST_WEBHOOK_URL", receiver.url(f"/hooks/{token}"))
    [result] = notifier.send(notify({"urlFrom": {"env": "DV_TEST_WEBHOOK_URL"}}), EVENT)
    assert result == DeliveryResult(receiver.url(f"/hooks/{MASK}"), True, 1, 200, None)
    assert [r.path for r in receiver.received] == [f"/hooks/{token}"]


def test_no_token_in_any_log_line_or_result(receiver, notifier, caplog):
    token = "Wq4nLx8vRt2mPz6kYb3c"
    url = receiver.url(f"/hooks/{token}?token=q-{token}").replace("://", f"://alice:pw-{token}@")
    receiver.replies = [Reply(500), Reply(500), Reply(500)]
    with caplog.at_level(logging.DEBUG, logger="dockvault"):
        [failed] = notifier.send(notify({"url": url, "retries": 2}), EVENT)
        [delivered] = notifier.send(notify({"url": url}), EVENT)
    assert (failed.ok, failed.attempts, failed.status, delivered.ok) == (False, 3, 500, True)
    assert len(receiver.received) == 4
    assert all(r.headers["Authorization"].startswith("Basic ") for r in receiver.received), "userinfo is sent as basic auth"
    assert all(r.path == f"/hooks/{token}?token=q-{token}" for r in receiver.received)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4  # two retries announced, the failure, the delivery
    assert not [line for line in lines if token in line]
    assert token not in repr([failed, delivered])
    assert failed.receiver == receiver.url(f"/hooks/{MASK}?token={MASK}").replace("://", f"://alice:{MASK}@")


def test_send_async_delivers_from_the_notification_thread(receiver, notifier):
    receiver.replies = [Reply(delay=0.5)]
    started = time.monotonic()
    assert notifier.send_async(notify({"url": receiver.url()}), EVENT)
    assert time.monotonic() - started < 0.2, "the job's thread does not wait for the receiver"
    assert notifier.flush(5)
    assert len(receiver.received) == 1
    assert json.loads(receiver.received[0].body)["timestamp"] == "2026-11-21T03:00:05Z"
