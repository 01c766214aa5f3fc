"""Polling for a condition in tests: one helper, so every wait says what it waited for and what it saw last."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(what: str, probe: Callable[[], Any], timeout: float = 60.0, *, interval: float = 0.2,
               tolerate: tuple[type[BaseException], ...] = ()) -> Any:
    """The first truthy value of `probe()` within `timeout` seconds; exceptions in `tolerate` count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except tolerate as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
