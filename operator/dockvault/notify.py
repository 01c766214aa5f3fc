"""Notifications of job outcomes, by mail and webhook: best effort, off the job's thread, and never a leaked secret.

A notification is a side channel: a receiver that is down, slow or wrong must never fail or delay a backup, so
nothing here raises to the caller. Webhook URLs often embed tokens, so every URL is registered as a secret and
only ever shown masked; the SMTP login is read (and registered) only when a mail is sent, through an encrypted
connection with a verified certificate.
"""

from __future__ import annotations

import base64
import collections
import contextvars
import email.message
import email.utils
import http.client
import json
import logging
import os
import re
import smtplib
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from . import __version__
from .api.common import format_duration
from .api.notify import Email, NotifySpec, Smtp, Webhook, webhook_url_problem
from .credentials import MASK, SecretError, mask, read_secret, register

log = logging.getLogger(__name__)

USER_AGENT = f"dockvault/{__version__}"
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
QUEUE_SIZE = 100
_TOKEN = re.compile(r"[A-Za-z0-9_.~+=%@-]{16,}")
# Header and query parameter names whose values are credentials even when they do not look like tokens.
_SENSITIVE_NAME = re.compile(r"auth|cookie|token|secret|key|sig|pass|code", re.IGNORECASE)


@dataclass(frozen=True)
class Event:
    """The outcome of one backup, restore, drill or copy of a policy, as receivers see it.

    The fields after `host` are optional and only shown in mails (the webhook payload keeps its shape)."""

    policy: str
    target: str | None
    kind: Literal["backup", "restore", "drill", "copy"]
    phase: Literal["Succeeded", "Failed"]
    backup_id: str | None
    bytes: int | None
    duration_seconds: float | None
    message: str | None
    host: str
    namespace: str | None = None  # the policy's namespace in Kubernetes mode, None in standalone mode
    raw_bytes: int | None = None  # uncompressed size of what was backed up
    compression: str | None = None  # algorithm and level, e.g. "zstd level 3"
    rpo_age_seconds: float | None = None  # age of the newest good backup; None when there is none (yet)
    rpo_target_seconds: float | None = None  # objectives.rpo
    rto_seconds: float | None = None  # last measured restore or drill
    rto_target_seconds: float | None = None  # objectives.rto

    def to_payload(self, *, now: datetime | None = None) -> dict[str, Any]:
        at = (now or datetime.now(UTC)).astimezone(UTC)
        return {
            "policy": self.policy,
            "target": self.target,
            "kind": self.kind,
            "phase": self.phase,
            "backupId": self.backup_id,
            "bytes": self.bytes,
            "durationSeconds": self.duration_seconds,
            "message": None if self.message is None else mask(self.message),
            "host": self.host,
            "dockvaultVersion": __version__,
            "timestamp": at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }


@dataclass(frozen=True)
class DeliveryResult:
    """How sending to one receiver ended: a webhook (its masked URL) or a mail (its recipients and server)."""

    receiver: str
    ok: bool
    attempts: int
    status: int | None  # the HTTP status or the SMTP reply code, when there was one
    error: str | None
    channel: Literal["webhook", "email"] = "webhook"


class NotifyError(RuntimeError):
    """A webhook's URL cannot be resolved; the message names the field and never holds the URL."""


def wanted(spec: NotifySpec | None, event: Event) -> bool:
    if spec is None:
        return False
    return spec.on_success if event.phase == "Succeeded" else spec.on_failure


def _looks_like_token(text: str) -> bool:
    if not _TOKEN.fullmatch(text):
        return False
    kinds = sum((any(c.isdigit() for c in text), any(c.islower() for c in text), any(c.isupper() for c in text)))
    # A long run of one kind of character without separators is a token too; words joined by - or _ are not.
    return kinds >= 2 or len(text) >= 32 or (len(text) >= 20 and not re.search(r"[-_.~]", text))


def _secret_parts(url: str) -> list[str]:
    """The pieces of `url` that may be credentials: userinfo, query values, token-like path segments."""
    parts = urlsplit(url)
    found = [parts.password, unquote(parts.password)] if parts.password else []
    if parts.username and _looks_like_token(parts.username):
        found.append(parts.username)
    found += [s for s in parts.path.split("/") if _looks_like_token(s)]
    for field in parts.query.split("&"):
        name, sep, value = field.partition("=")
        if not sep:
            name, value = "", name
        if value and (_looks_like_token(value) or _SENSITIVE_NAME.search(name)):
            found += [value, unquote(value)]
    if _looks_like_token(parts.fragment):
        found.append(parts.fragment)
    return found


def mask_url(url: str) -> str:
    """`url` fit for logs and status: password, query values, fragment and token-like path segments replaced."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host += f":{parts.port}"
    except ValueError:
        return MASK
    if parts.username is not None:
        user = MASK if _looks_like_token(parts.username) else parts.username
        host = f"{user}:{MASK}@{host}" if parts.password is not None else f"{user}@{host}"
    path = "/".join(MASK if _looks_like_token(s) else s for s in parts.path.split("/"))
    query = "&".join(f"{f.partition('=')[0]}={MASK}" if "=" in f else MASK for f in parts.query.split("&") if f)
    return urlunsplit((parts.scheme, host, path, query, MASK if parts.fragment else ""))


def register_url(url: str) -> None:
    """Make `mask()` and the log filter hide the URL and each credential-like piece of it."""
    register(url)
    for part in _secret_parts(url):
        register(part)


def resolve_url(webhook: Webhook) -> str:
    """The webhook's URL, read now so that a rotated secret is picked up; registered before anything can show it."""
    if webhook.url is not None:
        register_url(webhook.url)
        return webhook.url
    source = webhook.url_from
    assert source is not None  # the model requires url or urlFrom
    if source.env is not None:
        where = f"urlFrom.env {source.env}"
        if source.env not in os.environ:
            raise NotifyError(f"urlFrom.env: environment variable {source.env} is not set for dockvault")
        value = os.environ[source.env].strip()
    else:
        where = f"urlFrom.file {source.file}"
        try:
            value = Path(source.file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise NotifyError(f"urlFrom.file: cannot read {source.file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise NotifyError(f"urlFrom.file: {source.file} is not UTF-8 text") from None
    register(value)
    problem = webhook_url_problem(value)
    if problem:
        raise NotifyError(f"{where}: the URL {problem}")
    register_url(value)
    return value


def _describe_webhook(webhook: Webhook) -> str:
    """How to name a webhook whose URL is unknown or unusable."""
    if webhook.url is not None:
        return mask_url(webhook.url)
    source = webhook.url_from
    return f"(urlFrom.env {source.env})" if source.env is not None else f"(urlFrom.file {source.file})"


def _request(url: str, body: bytes, webhook: Webhook) -> urllib.request.Request:
    """A POST of `body`; userinfo in the URL becomes basic auth, which urllib would otherwise send as the host."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    for name, value in webhook.headers.items():
        if _SENSITIVE_NAME.search(name):
            register(value)
            register(value.rpartition(" ")[2])  # the credentials of "Bearer ..." on their own
        headers[name] = value
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


@dataclass(frozen=True)
class _Attempt:
    status: int | None
    error: str | None
    retryable: bool
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _from_status(status: int, reason: str, headers: Any) -> _Attempt:
    if 200 <= status < 300:
        return _Attempt(status, None, False)
    retry_after = None
    value = headers.get("Retry-After") if headers is not None else None
    if value is not None and value.strip().isdigit():
        retry_after = float(value.strip())
    error = f"HTTP {status} {reason}".rstrip()
    if 300 <= status < 400:
        error += " (redirects are not followed; configure the final URL)"
    return _Attempt(status, error, status >= 500 or status == 429, retry_after)


def _from_exception(exc: BaseException, timeout: float) -> _Attempt:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, OSError):
        return _Attempt(None, f"cannot send: {exc.reason}", False)  # e.g. an unknown URL type: trying again won't help
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return _Attempt(None, f"timed out after {timeout:g}s", True)
    if isinstance(reason, (OSError, http.client.HTTPException)):
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return _Attempt(None, f"connection failed: {text}", True)
    return _Attempt(None, f"{type(exc).__name__}: {exc}", False)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirected POST would turn into a GET without the payload, and could carry headers to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Notifier:
    """Sends notifications to a policy's webhooks: with `send` on the caller's thread, with `send_async` off it."""

    def __init__(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = _utc_now,
        opener: urllib.request.OpenerDirector | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self._sleep = sleep
        self._clock = clock
        self._opener = opener or urllib.request.build_opener(_RefuseRedirects())
        self._queue_size = queue_size
        self._queue: collections.deque[tuple[NotifySpec, Event, datetime]] = collections.deque()
        self._busy = False
        self._changed = threading.Condition()
        self._worker: threading.Thread | None = None

    def send(self, spec: NotifySpec | None, event: Event) -> list[DeliveryResult]:
        """POST the event to every webhook when `wanted`; one result per webhook, never an exception."""
        return self._send(spec, event, self._clock())

    def send_async(self, spec: NotifySpec | None, event: Event) -> bool:
        """Queue the event for the notification thread; False when it is not wanted or the queue is full."""
        try:
            if not wanted(spec, event):
                return False
            with self._changed:
                if len(self._queue) >= self._queue_size:
                    log.warning("notification of %s %s of policy %s dropped: %d notifications are already waiting",
                                event.kind, event.phase.lower(), event.policy, len(self._queue))
                    return False
                self._queue.append((spec, event, self._clock()))
                if self._worker is None:
                    self._worker = threading.Thread(target=self._run, name="dockvault-notify", daemon=True)
                    self._worker.start()
                self._changed.notify_all()
            return True
        except Exception as exc:  # noqa: BLE001 - a notification must never fail the job
            log.warning("notification of %s %s of policy %s not queued: %s",
                        event.kind, event.phase, event.policy, mask(str(exc)))
            return False

    def flush(self, timeout: float) -> bool:
        """Wait until every queued notification was attempted; False when `timeout` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue)
                spec, event, at = self._queue.popleft()
                self._busy = True
            try:
                self._send(spec, event, at)
            except Exception as exc:  # noqa: BLE001 - keep the thread alive for the next notification
                log.warning("notification of policy %s failed: %s", event.policy, mask(str(exc)))
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _send(self, spec: NotifySpec | None, event: Event, at: datetime) -> list[DeliveryResult]:
        if not wanted(spec, event):
            return []
        try:
            body = json.dumps(event.to_payload(now=at)).encode()
        except (TypeError, ValueError) as exc:
            log.warning("notification of policy %s not sent: %s", event.policy, mask(str(exc)))
            return []
        results = []
        for webhook in spec.webhooks:
            try:
                results.append(self._deliver(webhook, body))
            except Exception as exc:  # noqa: BLE001 - a notification must never fail the job
                shown = _describe_webhook(webhook)
                error = mask(f"{type(exc).__name__}: {exc}")
                log.warning("notification to %s failed: %s", shown, error)
                results.append(DeliveryResult(shown, False, 0, None, error))
        return results

    def _deliver(self, webhook: Webhook, body: bytes) -> DeliveryResult:
        try:
            url = resolve_url(webhook)
        except NotifyError as exc:
            shown, error = _describe_webhook(webhook), mask(str(exc))
            log.warning("notification to %s not sent: %s", shown, error)
            return DeliveryResult(shown, False, 0, None, error)
        shown = mask_url(url)
        request = _request(url, body, webhook)
        attempts = webhook.retries + 1
        for attempt in range(1, attempts + 1):
            result = self._attempt(request, webhook.timeout_seconds)
            if result.ok or not result.retryable or attempt == attempts:
                break
            delay = min(max(FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1), result.retry_after or 0), MAX_BACKOFF_SECONDS)
            log.info("notification to %s: attempt %d of %d failed (%s); retrying in %gs",
                     shown, attempt, attempts, mask(result.error), delay)
            self._sleep(delay)
        if result.ok:
            log.debug("notification to %s delivered (HTTP %s, attempt %d)", shown, result.status, attempt)
            return DeliveryResult(shown, True, attempt, result.status, None)
        error = mask(result.error)
        log.warning("notification to %s failed after %d attempt(s): %s", shown, attempt, error)
        return DeliveryResult(shown, False, attempt, result.status, error)

    def _attempt(self, request: urllib.request.Request, timeout: float) -> _Attempt:
        try:
            # The body is not read: a slow or endless reply cannot hold the thread, and it might echo secrets.
            with self._opener.open(request, timeout=timeout) as response:
                return _from_status(response.status, response.reason, response.headers)
        except urllib.error.HTTPError as exc:  # the default opener's way of returning anything but 2xx
            exc.close()
            return _from_status(exc.code, exc.reason, exc.headers)
        except Exception as exc:  # noqa: BLE001 - sorted into retryable or not, never raised
            return _from_exception(exc, timeout)
