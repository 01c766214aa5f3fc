"""Read-ahead: one stage of a restore stream on a thread of its own, so the stages overlap.

A restore pulls an artifact through reading and hashing, decompressing, checking tar headers and writing into the
helper. In one thread those took turns, and the helper's tar sat idle while dockvault decompressed. The heavy steps
are C code that releases the GIL (socket and file reads, sha256, zstd), so a thread per stage runs them side by side
on separate cores. The queue between two stages holds at most `depth` chunks: memory stays flat.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

DEPTH = 8
_POLL = 0.1  # how often a producer waiting on a full queue checks whether the consumer has gone


class _End:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def read_ahead(chunks: Iterator[bytes], *, depth: int = DEPTH, name: str = "read-ahead") -> Iterator[bytes]:
    """Yield what `chunks` yields, produced on a thread up to `depth` chunks ahead of the consumer.

    An exception of `chunks` is raised here after the chunks before it, as it would be without the thread. When the
    consumer stops early (an error downstream, or close()), the producer stops at its next chunk and closes `chunks`
    on its own thread (the only thread that ever touches it), so the source's clean-up (closing a connection or a
    file) still runs.
    """
    items: queue.Queue[bytes | _End] = queue.Queue(depth)
    gone = threading.Event()

    def put(item: bytes | _End) -> bool:
        while not gone.is_set():
            try:
                items.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            put(_End(error))
            return
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        put(_End())

    threading.Thread(target=produce, name=name, daemon=True).start()
    try:
        while True:
            item = items.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        gone.set()
