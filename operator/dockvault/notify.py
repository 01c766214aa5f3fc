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
import dataclasses
import email.message
import email.utils
import http.client
import json
import logging
import os
import re
import smtplib
import ssl
import textwrap
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
    kind: Literal["backup", "restore", "drill", "copy", "check"]
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
            "timestamp": _iso(now or datetime.now(UTC)),
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
    """A webhook's URL or the mail's CA file cannot be used; the message names the field and never holds a URL."""


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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


# --- mail -------------------------------------------------------------------------------------------------------------

_ADVICE = {
    "backup": "Nothing of this backup was published; the older backups are intact. A scheduled backup retries "
              "a temporary failure before its next slot.",
    "restore": "The restore did not complete; the restore request's status says what failed.",
    "drill": "The restore drill failed: the backups of this policy may not restore when needed.",
    "copy": "The backup itself is safe in the primary repository; the copy catches up on its next sync.",
    "check": "The repository check found damage: the damaged backups will not restore. `dockvault check POLICY "
             "--read-data` names each damaged artifact; restores of the other backups still work.",
}


def _span(seconds: float) -> str:
    """A duration for people: 4.5s below a minute, else 1h2m3s."""
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(timedelta(seconds=round(seconds)))


def _objective(value: float | None, target: float | None, *, measured: str, missing: str) -> str | None:
    """The state of an RPO or RTO: met or BREACHED against its objective, or what is missing; None if unknown."""
    if value is None:
        return None if target is None else f"{missing} (objective {_span(target)})"
    shown = measured.format(_span(value))
    if target is None:
        return f"{shown} (no objective set)"
    return f"{'met' if value <= target else 'BREACHED'}: {shown} (objective {_span(target)})"


def _wrapped(text: str, indent: str) -> list[str]:
    """`text` indented, in lines of at most 78 characters where words allow: an ASCII mail stays 7bit, readable as it
    is on the wire."""
    width = 78 - len(indent)
    return [indent + part if part else "" for line in text.splitlines()
            for part in textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False) or [""]]


def _what_to_do(event: Event) -> list[str]:
    if event.namespace is not None:
        where = f"-n {event.namespace}"
        look = [f"kubectl describe backuppolicy {event.policy} {where}"]
        if event.kind == "restore":
            look.append(f"kubectl get restorerequests {where}")
        log_name = "the dockvault operator's log (kubectl logs of its pod)"
    else:
        look = [f"dockvault describe policy {event.policy}"]
        if event.kind == "restore":
            look.append("dockvault get restores")
        log_name = "dockvault's log"
    return [*_wrapped(_ADVICE[event.kind], "  "), "  Look at:", *(f"    {command}" for command in look),
            f"    {log_name} around the time above"]


def mail_subject(event: Event) -> str:
    return f"[dockvault] {event.kind} of {event.policy} on {event.host}: {event.phase}"


def mail_body(event: Event, at: datetime) -> str:
    """The plain-text mail for `event`: the facts, the message or error (masked), and on failure what to do."""
    failed = event.phase == "Failed"
    rows = {
        "Policy": event.policy,
        "Host": event.host,
        "Namespace": event.namespace,
        "Job": event.kind,
        "Outcome": event.phase,
        "Target": event.target,
        "Backup": event.backup_id,
        "Stored": None if event.bytes is None else f"{event.bytes:,} bytes",
        "Uncompressed": None if event.raw_bytes is None else f"{event.raw_bytes:,} bytes",
        "Compression": event.compression,
        "Duration": None if event.duration_seconds is None else _span(event.duration_seconds),
        "RPO": _objective(event.rpo_age_seconds, event.rpo_target_seconds, measured="newest good backup {} old",
                          missing="NOT MET: no successful backup yet"),
        "RTO": _objective(event.rto_seconds, event.rto_target_seconds, measured="last restore took {}",
                          missing="unknown: no restore or drill measured yet"),
        "Time": _iso(at),
        "dockvault": __version__,
    }
    lines = [f"The {event.kind} of policy {event.policy} on host {event.host} {'failed' if failed else 'succeeded'}.",
             ""]
    lines += [f"{name + ':':<14}{value}" for name, value in rows.items() if value is not None]
    if event.message:
        lines += ["", "Error:" if failed else "Message:", *_wrapped(mask(event.message), "  ")]
    if failed:
        lines += ["", "What to do:", *_what_to_do(event)]
    return "\n".join(lines) + "\n"


def compose_mail(mail: Email, event: Event, at: datetime) -> email.message.EmailMessage:
    message = email.message.EmailMessage()
    message["Subject"] = mail_subject(event)
    message["From"] = mail.from_
    message["To"] = ", ".join(mail.to)
    message["Date"] = email.utils.format_datetime(at.astimezone(UTC))
    # The sender's domain, not socket.getfqdn(), which can wait on DNS.
    message["Message-ID"] = email.utils.make_msgid("dockvault", domain=mail.from_.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies to a robot
    message["User-Agent"] = USER_AGENT
    message.set_content(mail_body(event, at))
    return message


def _describe_mail(mail: Email) -> str:
    return f"{', '.join(mail.to)} via {mail.smtp.host}:{mail.smtp.effective_port}"


def _tls_context(smtp: Smtp) -> ssl.SSLContext | None:
    """Certificates are verified against caFile, else the system's CAs; there is no way to turn that off."""
    if smtp.security == "none":
        return None
    try:
        return ssl.create_default_context(cafile=smtp.ca_file)
    except ssl.SSLError:
        raise NotifyError(f"email.smtp.caFile: {smtp.ca_file} holds no PEM certificate") from None
    except OSError as exc:
        raise NotifyError(f"email.smtp.caFile: cannot read {smtp.ca_file}: {exc.strerror}") from None


def _login(smtp: Smtp) -> tuple[str, str] | None:
    """The login, read now so that a rotated password is picked up; both values are registered for masking."""
    if smtp.username_from is None or smtp.password_from is None:
        return None
    return (read_secret(smtp.username_from, "email.smtp.usernameFrom"),
            read_secret(smtp.password_from, "email.smtp.passwordFrom"))


def _reply(text: bytes | str) -> str:
    return " ".join((text.decode(errors="replace") if isinstance(text, bytes) else str(text)).split())


def _refused(recipients: dict[str, tuple[int, bytes]]) -> _Attempt:
    """Refused recipients: worth another attempt only when all refusals are temporary (4xx) and nobody got it."""
    codes = [code for code, _ in recipients.values()]
    shown = "; ".join(f"{to}: {code} {_reply(text)}" for to, (code, text) in recipients.items())
    return _Attempt(codes[0] if codes else None, f"refused recipients: {shown}",
                    bool(codes) and all(400 <= code < 500 for code in codes))


def _from_smtp_exception(exc: BaseException, timeout: float) -> _Attempt:
    """4xx replies, dropped connections and timeouts are worth another attempt; 5xx, TLS and login problems not."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):  # every recipient
        return _refused(exc.recipients)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return _Attempt(exc.smtp_code, f"the server refused the login: {exc.smtp_code} {_reply(exc.smtp_error)}; "
                                       "check email.smtp.usernameFrom and passwordFrom", False)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _Attempt(exc.smtp_code, f"the server replied {exc.smtp_code} {_reply(exc.smtp_error)}",
                        400 <= exc.smtp_code < 500)
    if isinstance(exc, smtplib.SMTPException) and not isinstance(exc, smtplib.SMTPServerDisconnected):
        return _Attempt(None, f"the server cannot take this mail: {exc}", False)  # e.g. no STARTTLS or AUTH offered
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _Attempt(None, f"the server's certificate cannot be verified ({exc.verify_message}); set "
                              "email.smtp.caFile to the CA that signed it", False)
    if isinstance(exc, ssl.SSLError):
        return _Attempt(None, f"TLS failed ({exc.reason or exc}); check email.smtp.security and port", False)
    return _from_exception(exc, timeout)


def _connect(smtp: Smtp, context: ssl.SSLContext | None, timeout: float) -> smtplib.SMTP:
    """A session past the server's greeting (a greeting other than 220 raises); the host name it keeps is the one
    STARTTLS verifies the certificate against."""
    if smtp.security == "tls":
        return smtplib.SMTP_SSL(smtp.host, smtp.effective_port, context=context, timeout=timeout)
    return smtplib.SMTP(smtp.host, smtp.effective_port, timeout=timeout)


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except Exception:  # noqa: BLE001 - the mail is sent or not already; a failing QUIT changes nothing
        client.close()


# --- sending ----------------------------------------------------------------------------------------------------------

FailedDelivery = Callable[[Event, str], None]


class Notifier:
    """Sends notifications of a policy by mail and to its webhooks: with `send` on the caller's thread, with
    `send_async` off it. `on_failed_delivery(event, channel)` is called once per receiver that did not get one."""

    def __init__(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = _utc_now,
        opener: urllib.request.OpenerDirector | None = None,
        queue_size: int = QUEUE_SIZE,
        on_failed_delivery: FailedDelivery | None = None,
    ) -> None:
        self._sleep = sleep
        self._clock = clock
        self._opener = opener or urllib.request.build_opener(_RefuseRedirects())
        self._queue_size = queue_size
        self._on_failed_delivery = on_failed_delivery
        self._queue: collections.deque[tuple[NotifySpec, Event, datetime, contextvars.Context]] = collections.deque()
        self._busy = False
        self._changed = threading.Condition()
        self._worker: threading.Thread | None = None

    def send(self, spec: NotifySpec | None, event: Event) -> list[DeliveryResult]:
        """Mail and POST the event when `wanted`: one result per webhook and mail, never an exception."""
        return self._send(spec, event, self._clock())

    def send_async(self, spec: NotifySpec | None, event: Event) -> bool:
        """Queue the event for the notification thread; False when it is not wanted or the queue is full.

        The caller's context goes along, so that a secretKeyRef is read with the job's Secret reader."""
        try:
            if not wanted(spec, event):
                return False
            with self._changed:
                if len(self._queue) >= self._queue_size:
                    log.warning("notification of %s %s of policy %s dropped: %d notifications are already waiting",
                                event.kind, event.phase.lower(), event.policy, len(self._queue))
                    for channel, receivers in spec.receivers.items():
                        for _ in range(receivers):
                            self._failed(event, channel)
                    return False
                self._queue.append((spec, event, self._clock(), contextvars.copy_context()))
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
                spec, event, at, context = self._queue.popleft()
                self._busy = True
            try:
                context.run(self._send, spec, event, at)
            except Exception as exc:  # noqa: BLE001 - keep the thread alive for the next notification
                log.warning("notification of policy %s failed: %s", event.policy, mask(str(exc)))
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _send(self, spec: NotifySpec | None, event: Event, at: datetime) -> list[DeliveryResult]:
        if not wanted(spec, event):
            return []
        results = [self._guarded("webhook", _describe_webhook(webhook), lambda w=webhook: self._deliver(w, event, at))
                   for webhook in spec.webhooks]
        if spec.email is not None:
            mail = spec.email
            results.append(self._guarded("email", _describe_mail(mail), lambda: self._mail(mail, event, at)))
        for result in results:
            if not result.ok:
                self._failed(event, result.channel)
        return results

    def _failed(self, event: Event, channel: str) -> None:
        if self._on_failed_delivery is None:
            return
        try:
            self._on_failed_delivery(event, channel)
        except Exception as exc:  # noqa: BLE001 - counting must not stop the other receivers
            log.warning("notification failure of policy %s not counted: %s", event.policy, mask(str(exc)))

    @staticmethod
    def _guarded(channel: Literal["webhook", "email"], shown: str,
                 deliver: Callable[[], DeliveryResult]) -> DeliveryResult:
        try:
            return deliver()
        except Exception as exc:  # noqa: BLE001 - a notification must never fail the job
            error = mask(f"{type(exc).__name__}: {exc}")
            log.warning("notification to %s failed: %s", shown, error)
            return DeliveryResult(shown, False, 0, None, error, channel)

    @staticmethod
    def _not_sent(channel: Literal["webhook", "email"], shown: str, problem: Exception) -> DeliveryResult:
        error = mask(str(problem))
        log.warning("notification to %s not sent: %s", shown, error)
        return DeliveryResult(shown, False, 0, None, error, channel)

    def _with_retries(self, channel: Literal["webhook", "email"], shown: str, attempts: int,
                      attempt_once: Callable[[], _Attempt]) -> DeliveryResult:
        """Up to `attempts` tries with exponential backoff (honouring Retry-After), while the failure is retryable."""
        for attempt in range(1, attempts + 1):
            result = attempt_once()
            if result.ok or not result.retryable or attempt == attempts:
                break
            delay = min(max(FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1), result.retry_after or 0), MAX_BACKOFF_SECONDS)
            log.info("notification to %s: attempt %d of %d failed (%s); retrying in %gs",
                     shown, attempt, attempts, mask(result.error), delay)
            self._sleep(delay)
        protocol = "HTTP" if channel == "webhook" else "SMTP"
        if result.ok:
            log.debug("notification to %s delivered (%s %s, attempt %d)", shown, protocol, result.status, attempt)
            return DeliveryResult(shown, True, attempt, result.status, None, channel)
        error = mask(result.error)
        log.warning("notification to %s failed after %d attempt(s): %s", shown, attempt, error)
        return DeliveryResult(shown, False, attempt, result.status, error, channel)

    # --- webhooks
    def _deliver(self, webhook: Webhook, event: Event, at: datetime) -> DeliveryResult:
        try:
            url = resolve_url(webhook)
        except NotifyError as exc:
            return self._not_sent("webhook", _describe_webhook(webhook), exc)
        request = _request(url, json.dumps(event.to_payload(now=at)).encode(), webhook)
        return self._with_retries("webhook", mask_url(url), webhook.retries + 1,
                                  lambda: self._attempt(request, webhook.timeout_seconds))

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

    # --- mail
    def _mail(self, mail: Email, event: Event, at: datetime) -> DeliveryResult:
        shown = _describe_mail(mail)
        try:
            context = _tls_context(mail.smtp)
            login = _login(mail.smtp)
        except (NotifyError, SecretError) as exc:
            return self._not_sent("email", shown, exc)
        message = compose_mail(mail, event, at)
        return self._with_retries("email", shown, mail.retries + 1,
                                  lambda: self._smtp_attempt(mail, message, login, context))

    @staticmethod
    def _smtp_attempt(mail: Email, message: email.message.EmailMessage, login: tuple[str, str] | None,
                      context: ssl.SSLContext | None) -> _Attempt:
        """One SMTP session: connect, STARTTLS (never a fallback to plain text), login, send; never raises."""
        smtp = mail.smtp
        try:
            client = _connect(smtp, context, mail.timeout_seconds)
            try:
                if smtp.security == "starttls":
                    client.starttls(context=context)
                if login is not None:
                    client.login(*login)
                refused = client.send_message(message, mail.from_, list(mail.to))
            finally:
                _quit(client)
        except Exception as exc:  # noqa: BLE001 - sorted into retryable or not, never raised
            return _from_smtp_exception(exc, mail.timeout_seconds)
        if refused:  # the others got it: another attempt would send it to them twice
            return dataclasses.replace(_refused(refused), retryable=False)
        return _Attempt(250, None, False)
