"""Passwords stay out of argv, logs, metrics, status and manifests: resolved late, masked everywhere.

Every secret dockvault learns is registered here; a logging filter and `mask()` replace it wherever it
would otherwise be printed (an error from a database client may echo what it was given).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from .api.common import PasswordFrom, SecretFrom

MASK = "********"
_known: set[str] = set()
_lock = threading.Lock()


class SecretError(RuntimeError):
    pass


# Reads one key of a Secret: (name, key) -> value. Kubernetes mode installs one per job, bound to the
# namespace of the resource being served (see frontends/kube.py); standalone mode has none.
SecretReader = Callable[[str, str], str]
_secret_reader: contextvars.ContextVar[SecretReader | None] = contextvars.ContextVar("dockvault_secret_reader",
                                                                                      default=None)
NO_SECRET_READER = ("passwordFrom.secretKeyRef: Secrets can only be read in Kubernetes mode (dockvault kube); "
                    "use env or file")


@contextlib.contextmanager
def secret_reader(reader: SecretReader | None) -> Iterator[None]:
    """Use `reader` for secretKeyRef in this thread (context) until the block ends.

    Context variables do not follow work into executor threads (`loop.run_in_executor` does not copy the
    context), so install the reader in the very thread that runs the job."""
    token = _secret_reader.set(reader)
    try:
        yield
    finally:
        _secret_reader.reset(token)


def current_secret_reader() -> SecretReader | None:
    return _secret_reader.get()


def register(value: str) -> str:
    if len(value) >= 3:  # masking one or two characters would garble every message
        with _lock:
            _known.add(value)
    return value


def mask(text: str) -> str:
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        text = text.replace(value, MASK)
    return text


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def install_log_masking(logger: logging.Logger | None = None) -> None:
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())


def read_secret(source: SecretFrom, field: str) -> str:
    """The value `source` points at (env, file or secretKeyRef), registered for masking; errors name `field`
    (e.g. passwordFrom) and the variable, file or Secret, never a value."""
    if source.env is not None:
        if source.env not in os.environ:
            raise SecretError(f"{field}.env: environment variable {source.env} is not set for dockvault")
        return register(os.environ[source.env])
    if source.secret_key_ref is not None:
        ref = source.secret_key_ref
        reader = _secret_reader.get()
        if reader is None:
            raise SecretError(NO_SECRET_READER.replace("passwordFrom", field, 1))
        try:
            value = reader(ref.name, ref.key)
        except SecretError:
            raise
        except Exception as exc:  # noqa: BLE001 - a reader's failure must name the secret, never carry its value
            raise SecretError(f"{field}.secretKeyRef: cannot read key {ref.key!r} of Secret {ref.name!r}: "
                              f"{type(exc).__name__}") from None
        return register(value)
    assert source.file is not None
    try:
        return register(Path(source.file).read_text(encoding="utf-8").rstrip("\r\n"))
    except OSError as exc:
        raise SecretError(f"{field}.file: cannot read {source.file}: {exc.strerror}") from None


def resolve_password(source: PasswordFrom | None, container_env: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    """The password from `passwordFrom`, else from the first of `keys` in the container's environment."""
    if source is not None:
        return read_secret(source, "passwordFrom")
    for key in keys:
        if container_env.get(key):
            return register(container_env[key])
    return None
