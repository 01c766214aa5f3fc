"""Streaming compression with the checksum computed on the way: the bytes hashed are the bytes stored."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Protocol

import zstandard

from ..api.policy import CompressionSpec

SUFFIXES = {"zstd": ".zst", "gzip": ".gz", "none": ""}
READ_CHUNK = 1 << 20


class ChecksumMismatch(RuntimeError):
    pass


class _Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def _compressor(spec: CompressionSpec) -> _Compressor:
    if spec.algorithm == "zstd":
        # threads=-1: one worker per core, as `zstd -T0` does.
        return zstandard.ZstdCompressor(level=spec.effective_level, threads=-1).compressobj()
    if spec.algorithm == "gzip":
        return zlib.compressobj(spec.effective_level, zlib.DEFLATED, 31)
    return _Identity()


class _StreamDecompressor(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


def _decompressor(algorithm: str):
    if algorithm == "zstd":
        return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    if algorithm == "gzip":
        return zlib.decompressobj(31)
    return None


class WriteResult(Protocol):
    bytes: int
    raw_bytes: int
    sha256: str


class CompressingWriter:
    """Compress chunks into `out`, counting raw and stored bytes and hashing what is stored."""

    def __init__(self, out: BinaryIO, spec: CompressionSpec) -> None:
        self._out = out
        self._compressor = _compressor(spec)
        self._hash = hashlib.sha256()
        self.raw_bytes = 0
        self.bytes = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self._out.write(data)
            self.bytes += len(data)

    def write(self, data: bytes) -> None:
        self.raw_bytes += len(data)
        self._emit(self._compressor.compress(data))

    def close(self) -> None:
        self._emit(self._compressor.flush())

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def file_sha256(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(READ_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def decompressed(chunks: Iterable[bytes], algorithm: str) -> Iterator[bytes]:
    """Undo `algorithm` on a stream of chunks; a truncated stream is an error, not a short read."""
    decompressor = _decompressor(algorithm)
    if decompressor is None:
        yield from chunks
        return
    for chunk in chunks:
        out = decompressor.decompress(chunk)
        if out:
            yield out
    if algorithm == "gzip" and not decompressor.eof:
        raise EOFError("compressed stream ends early (truncated gzip data)")
    if algorithm == "zstd":
        # read_across_frames keeps the object open; flushing reveals a frame cut short.
        tail = decompressor.flush()
        if tail:
            yield tail


def read_chunks(stream: BinaryIO, size: int = READ_CHUNK) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk
