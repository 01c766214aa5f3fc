"""Notifications of a policy: which job outcomes are sent, by mail and to webhooks, and where to.

A webhook URL often embeds its token, so it can come from the environment or a file instead of the resource,
and no message here ever repeats a URL or a header value. The SMTP login comes from env, a file or a Secret
only, and a password never crosses the network unencrypted.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .common import OneOf, PasswordFrom, Schema, SecretFrom

# The `channel` label of dockvault_notifications_failed_total: the names of the notify fields, singular.
CHANNELS = ("webhook", "email")
WEBHOOK_SCHEMES = ("http", "https")
MAX_TIMEOUT_SECONDS = 120
MAX_RETRIES = 10
SMTP_PORTS = {"none": 25, "starttls": 587, "tls": 465}
# ASCII addresses only (no SMTPUTF8); one address per item, without a display name.
EMAIL_ADDRESS = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?"
SMTP_HOST = r"[A-Za-z0-9]([A-Za-z0-9.:_-]*[A-Za-z0-9])?"
# dockvault sets these itself: the body is always its JSON payload.
RESERVED_HEADERS = ("content-type", "content-length", "host", "user-agent")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token


def webhook_url_problem(url: str) -> str | None:
    """What is wrong with `url` as a webhook address, worded without repeating it; None when it is fine."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        return "is not a valid URL (check the host and port)"
    if parts.scheme.lower() not in WEBHOOK_SCHEMES:
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        return f"must start with http:// or https:// (it has {got})"
    if not parts.hostname:
        return "has no host; write it as https://HOST/PATH"
    return None


def _check_url(value: str) -> str:
    problem = webhook_url_problem(value)
    if problem:
        raise ValueError(f"url {problem}")
    return value


def _bounded(base: type, field: str, low: float, high: float, *, low_included: bool):
    """`base` checked as `low <(=) x <= high`, with a message that names `field`."""
    def check(value: float) -> float:
        if not ((low <= value) if low_included else (low < value)) or not value <= high:
            if low_included:
                raise ValueError(f"{field} must be between {low:g} and {high:g}")
            raise ValueError(f"{field} must be greater than {low:g} and at most {high:g}")
        return value

    # A CRD minimum is inclusive (exclusiveMinimum is not structural here); the model refuses the bound itself.
    json_type = "integer" if base is int else "number"
    return Annotated[base, AfterValidator(check), WithJsonSchema({"type": json_type, "minimum": low, "maximum": high})]


TimeoutSeconds = _bounded(float, "timeoutSeconds", 0, MAX_TIMEOUT_SECONDS, low_included=False)
Retries = _bounded(int, "retries", 0, MAX_RETRIES, low_included=True)
Port = _bounded(int, "port", 1, 65535, low_included=True)


def _check_address(value: str) -> str:
    if not re.fullmatch(EMAIL_ADDRESS, value):
        raise ValueError(f"{value!r} is not an email address; write it as NAME@DOMAIN, without a display name")
    return value


def _check_host(value: str) -> str:
    if not re.fullmatch(SMTP_HOST, value):
        raise ValueError(f"host {value!r} must be a host name or IP address (e.g. smtp.example.com), not a URL; "
                         "port and security are separate fields")
    return value


EmailAddress = Annotated[str, AfterValidator(_check_address),
                         WithJsonSchema({"type": "string", "pattern": f"^{EMAIL_ADDRESS}$"})]
SmtpHost = Annotated[str, AfterValidator(_check_host), WithJsonSchema({"type": "string", "pattern": f"^{SMTP_HOST}$"})]
WebhookUrl = Annotated[
    str, AfterValidator(_check_url), WithJsonSchema({"type": "string", "pattern": "^[hH][tT][tT][pP][sS]?://"})
]


class UrlFrom(OneOf):
    """Where a webhook URL comes from when it should not be written into the resource."""

    one_of = ("env", "file")
    one_of_what = "urlFrom"

    env: str | None = Field(None, min_length=1, description="environment variable of the dockvault process")
    file: str | None = Field(None, min_length=1, description="file readable by dockvault (e.g. a mounted secret)")


class Webhook(OneOf):
    """One receiver of a policy's notifications; attempts = 1 + retries, each bounded by timeoutSeconds."""

    one_of = ("url", "url_from")
    one_of_what = "a webhook"
    one_of_hint = "urlFrom keeps a URL's token out of the resource"

    url: WebhookUrl | None = Field(None, repr=False, description="http:// or https:// address to POST to")
    url_from: UrlFrom | None = Field(None, description="read the URL from the environment or a file instead")
    timeout_seconds: TimeoutSeconds = Field(10.0, description="per attempt; greater than 0, at most 120")
    retries: Retries = Field(3, description="further attempts after connection errors, timeouts, 5xx and 429")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"headers: {name!r} is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"headers: {name} is set by dockvault and cannot be changed")
            if not value.isascii() or any(not c.isprintable() and c != "\t" for c in value):
                raise ValueError(f"headers: the value of {name} must be printable ASCII without line breaks")
        return headers


class Smtp(Schema):
    """The mail server dockvault hands its mail to, and how it logs in; certificates are always verified."""

    host: SmtpHost = Field(description="host name or IP address of the SMTP server")
    port: Port | None = Field(None, description="default: 25 with security none, 587 with starttls, 465 with tls")
    security: Literal["none", "starttls", "tls"] = Field(
        "starttls", description="none: plain SMTP; starttls: upgrade to TLS first (refused if the server cannot); "
                                "tls: TLS from the first byte (SMTPS)")
    username_from: SecretFrom | None = Field(None, description="login name: env | file | secretKeyRef")
    password_from: PasswordFrom | None = Field(None, description="password: env | file | secretKeyRef")
    ca_file: str | None = Field(None, min_length=1, description="PEM file of the CA(s) that sign the server's "
                                                                "certificate, instead of the system's")

    @model_validator(mode="after")
    def _safe_login(self) -> Smtp:
        if (self.username_from is None) != (self.password_from is None):
            raise ValueError("usernameFrom and passwordFrom go together: set both to log in, or neither")
        if self.security == "none" and self.password_from is not None:
            raise ValueError("usernameFrom and passwordFrom need security starttls or tls: with none the password "
                             "would cross the network unencrypted")
        if self.security == "none" and self.ca_file is not None:
            raise ValueError("caFile needs security starttls or tls: with none there is no certificate to check")
        return self

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else SMTP_PORTS[self.security]


class Email(Schema):
    """One mail per job outcome to every address in `to`; attempts = 1 + retries, each bounded by timeoutSeconds."""

    to: list[EmailAddress] = Field(min_length=1, description="recipients; all of them get the same mail")
    from_: EmailAddress = Field(alias="from", description="sender address")
    smtp: Smtp
    timeout_seconds: TimeoutSeconds = Field(30.0, description="per attempt; greater than 0, at most 120")
    retries: Retries = Field(3, description="further attempts after connection errors, timeouts and 4xx replies")

    @field_validator("to", mode="before")
    @classmethod
    def _someone(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("to needs at least one address")
        return value


class NotifySpec(Schema):
    """Where the outcomes of backups, restores, drills and copies are sent: mail and webhooks, at least one of
    them. A notification that fails never fails or delays the job."""

    on_success: bool = Field(False, description="notify when a job succeeds")
    on_failure: bool = Field(True, description="notify when a job fails")
    email: Email | None = Field(None, description="mail through an SMTP server")
    webhooks: list[Webhook] = Field(default_factory=list, description="JSON POSTed to each URL")

    @model_validator(mode="after")
    def _sends_something(self) -> NotifySpec:
        if self.email is None and not self.webhooks:
            raise ValueError("notify needs at least one channel: email or webhooks")
        if not (self.on_success or self.on_failure):
            raise ValueError("onSuccess and onFailure are both false, so nothing would ever be sent; "
                             "set one to true or remove notify")
        return self

    @property
    def receivers(self) -> dict[str, int]:
        """How many receivers each channel has (a mail counts once, whatever its recipients)."""
        return {"webhook": len(self.webhooks), "email": int(self.email is not None)}
