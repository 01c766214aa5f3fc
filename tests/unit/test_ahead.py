"""Read-ahead (storage/ahead.py): the same chunks and the same errors as without the thread, bounded, and a
consumer that stops early stops the producer and closes its source."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockvault.storage.ahead import read_ahead


@given(st.lists(st.binary(max_size=64), max_size=50), st.integers(min_value=1, max_value=4))
def test_yields_every_chunk_in_order(chunks, depth):
    assert list(read_ahead(iter(chunks), depth=depth)) == chunks


def test_an_error_of_the_source_comes_after_the_chunks_before_it():
    def source():
        yield b"a"
        yield b"b"
        raise ValueError("sha256 does not match")

    got = []
    with pytest.raises(ValueError, match="sha256 does not match"):
        for chunk in read_ahead(source()):
            got.append(chunk)
    assert got == [b"a", b"b"]


def test_the_producer_stays_at_most_depth_chunks_ahead():
    produced = []

    def source():
        for n in range(100):
            produced.append(n)
            yield bytes([n])

    stream = read_ahead(source(), depth=3)
    assert next(stream) == b"\x00"
    time.sleep(0.5)  # time for an unbounded producer to run through all 100
    # one taken, three queued, one waiting to be queued
    assert len(produced) <= 1 + 3 + 1
    assert [c[0] for c in stream] == list(range(1, 100))


def test_a_consumer_that_stops_early_closes_the_source_on_the_producer_thread():
    closed = threading.Event()
    threads = []

    def source():
        try:
            n = 0
            while True:
                n += 1
                yield b"x" * n
        finally:
            threads.append(threading.current_thread().name)
            closed.set()

    stream = read_ahead(source(), depth=2, name="test-ahead")
    assert next(stream) == b"x"
    stream.close()
    assert closed.wait(5), "the source was never closed"
    assert threads == ["test-ahead"]


def test_a_consumer_that_fails_stops_the_producer():
    closed = threading.Event()

    def source():
        try:
            while True:
                yield b"x"
        finally:
            closed.set()

    with pytest.raises(RuntimeError, match="downstream"):
        for _ in read_ahead(source(), depth=2):
            raise RuntimeError("downstream")
    assert closed.wait(5)
