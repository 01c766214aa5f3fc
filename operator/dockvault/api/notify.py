"""Webhook notifications of a policy: which job outcomes are POSTed, and where to.

A webhook URL often embeds its token, so it can come from the environment or a file instead of the resource,
and no message here ever repeats a URL or a header value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .common import OneOf, Schema

WEBHOOK_SCHEMES = ("http", "https")
MAX_TIMEOUT_SECONDS = 120
MAX_RETRIES = 10
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


class NotifySpec(Schema):
    """Where to POST the outcome of backups, restores and drills; a failed notification never fails the job."""

    webhooks: list[Webhook] = Field(min_length=1)
    on_success: bool = Field(False, description="notify when a job succeeds")
    on_failure: bool = Field(True, description="notify when a job fails")

    @field_validator("webhooks", mode="before")
    @classmethod
    def _at_least_one(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("webhooks needs at least one webhook")
        return value

    @model_validator(mode="after")
    def _sends_something(self) -> NotifySpec:
        if not (self.on_success or self.on_failure):
            raise ValueError("onSuccess and onFailure are both false, so nothing would ever be sent; "
                             "set one to true or remove notify")
        return self
