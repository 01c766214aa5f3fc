"""A repository in an S3 bucket (AWS or S3-compatible): <prefix>/<policy>/<backup-id>/<artifact>, manifest last.

Why this shape: the layout is the local repository's, key for key, so a bucket synced to disk (or a disk
synced to a bucket) is a repository too, and `manifest.json` is still what makes a backup exist. Artifacts
stream through multipart uploads with bounded memory: parts start at 8 MiB and double every 1,000 parts, so
a stream of unknown size reaches 5 TiB well within S3's 10,000 parts (8 TiB in all), while everything up to
7.8 GiB uses 8 MiB parts, held in IN_FLIGHT + 1 reused buffers; parts above SPOOL_OVER are spooled to a temp
file, not held in memory. Manifests
are immutable once written, so a listing trusts what it has already read for as long as the manifest's ETag is
the same: a process keeps its last listing, and each policy folder has an index object (.index.json.zst:
every manifest's text with its ETag), so a fresh process lists 10,000 backups with one ListObjectsV2 walk
(its ranges in parallel) and one GET, plus the manifests the index lacks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import logging
import mmap
import queue
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import zstandard
from pydantic import ValidationError

from ..api.backup import Backup
from ..api.policy import S3Storage
from ..api.restore import RestoreRequestStatus
from ..credentials import mask, read_secret
from .base import INCOMPLETE, MANIFEST, BackupIdTaken, DeleteRefused, StorageError, manifest_chunks, misplaced

log = logging.getLogger(__name__)

MIB = 1 << 20
FIRST_PART = 8 * MIB  # S3's minimum is 5 MiB for every part but the last
PARTS_PER_STEP = 1000
MAX_PARTS = 10_000
SPOOL_OVER = 32 * MIB  # larger parts wait on disk for their upload, not in memory
IN_FLIGHT = 2  # parts uploading while the next one fills (with 3, backups to S3 peaked over 150 MiB RSS)
RESTORES = ".restores"
INDEX = ".index.json.zst"  # <prefix>/<policy>/INDEX: every manifest with its ETag, for listings
INDEX_LIMIT = 256 * MIB  # an index claiming more is not read
WALKERS = 4  # ranges of a long policy folder listed in parallel
_LOCKED = {"AccessDenied", "ObjectLocked", "InvalidRequest"}


def part_size(number: int) -> int:
    """Size of part `number` (1-based): 8 MiB, doubling every 1,000 parts (the last 1,000 are 4 GiB)."""
    return FIRST_PART << min((number - 1) // PARTS_PER_STEP, MAX_PARTS // PARTS_PER_STEP - 1)


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""


def storage_error(exc: BaseException, what: str) -> StorageError:
    """A botocore failure phrased for the user: the cause and what to do, never a credential."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{what}: no S3 credentials: set storage.s3.credentials, or AWS_ACCESS_KEY_ID / "
                            "AWS_PROFILE for boto3's default chain")
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"{what}: cannot reach the S3 endpoint: {exc.kwargs.get('endpoint_url', '')}",
                            temporary=True)
    if isinstance(exc, ClientError):
        code = _code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        hints = {
            "NoSuchBucket": "the bucket does not exist; create it, or fix storage.s3.bucket",
            "InvalidAccessKeyId": "the access key is not known to the server; check storage.s3.credentials",
            "SignatureDoesNotMatch": "the secret key does not match the access key; check storage.s3.credentials",
            "AccessDenied": "access denied; the credentials lack a permission on this bucket or prefix",
        }
        message = hints.get(code) or f"S3 answered {code or status}"
        return StorageError(f"{what}: {message}", temporary=status >= 500 or code in ("SlowDown", "RequestTimeout"))
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{what}: {type(exc).__name__}: {mask(str(exc))}", temporary=True)
    return StorageError(f"{what}: {type(exc).__name__}: {mask(str(exc))}")


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise storage_error(exc, what) from None


def _timestamp(value: str) -> datetime:
    """botocore's timestamp parser, fast for ISO 8601: its own (dateutil) took 70% of the CPU of listing 20,000
    keys, one LastModified each."""
    with contextlib.suppress(TypeError, ValueError):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            return parsed
    from botocore.utils import parse_timestamp
    return parse_timestamp(value)


# One botocore data loader for every session of the process (the first session's, so AWS_DATA_PATH holds): each
# session's own loader parsed S3's service model and endpoint rules again, 60-170 ms a client (a restore made 3).
_SHARED: dict[str, Any] = {}


# Clients by what makes them differ: endpoint, region, addressing and the keys as read now (a rotated key makes a
# new client). boto3's clients are thread-safe; making one costs about 10 ms of CPU, and every repository_for()
# made one: 7 in a `run --once` pass with one restore, 50-70 ms of its start.
_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()
CLIENTS_KEPT = 16


def make_client(spec: S3Storage) -> Any:
    """A boto3 client for `spec`; keys from `credentials` (read now, registered for masking) or boto3's chain. A
    client made before for the same endpoint and keys is reused."""
    keys = {}
    if spec.credentials is not None:
        where = "storage.s3.credentials"
        keys = {"aws_access_key_id": read_secret(spec.credentials.access_key_id_from, f"{where}.accessKeyIdFrom"),
                "aws_secret_access_key": read_secret(spec.credentials.secret_access_key_from,
                                                     f"{where}.secretAccessKeyFrom")}
        if spec.credentials.session_token_from is not None:
            keys["aws_session_token"] = read_secret(spec.credentials.session_token_from, f"{where}.sessionTokenFrom")
    cache_key = (spec.endpoint, spec.region, *sorted(keys.items()))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(cache_key)
        if client is None:
            client = _CLIENTS[cache_key] = _new_client(spec, keys)
            while len(_CLIENTS) > CLIENTS_KEPT:
                del _CLIENTS[next(iter(_CLIENTS))]
    return client


def _new_client(spec: S3Storage, keys: dict[str, str]) -> Any:
    import boto3
    import botocore.session
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 3},  # then the job core retries it later
        # S3-compatible servers may reject the newer default checksums; the artifact's sha256 guards the data.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if spec.endpoint else {},
        max_pool_connections=16,
        connect_timeout=10,
        read_timeout=300,
    )
    core = botocore.session.get_session()  # one per client: sessions are not thread-safe, clients are
    core.register_component("data_loader", _SHARED.setdefault("data_loader", core.get_component("data_loader")))
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
    session = boto3.session.Session(botocore_session=core)
    return session.client("s3", endpoint_url=spec.endpoint, region_name=spec.region or "us-east-1", config=config,
                          **keys)


class _Buffer:
    """A read-only file over the first `length` bytes of a reused part buffer, for upload_part's Body. `read`
    returns views, not copies: botocore hashes the body in 1 MiB reads and urllib3 sends it in small ones, and
    1 MiB copies made on the upload threads left heap slack that grew with the artifact."""

    def __init__(self, memory: mmap.mmap, length: int) -> None:
        self._view = memoryview(memory)[:length]
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._position + size)
        chunk = self._view[self._position:end]
        self._position = end
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._view.release()


class _Part:
    """One part's bytes: in a buffer from the writer's pool while small, spooled to disk when large."""

    def __init__(self, size: int, memory: mmap.mmap | None) -> None:
        self.size = size
        self.memory = memory
        self._spool: BinaryIO | None = None if memory is not None else tempfile.TemporaryFile()  # type: ignore
        self.length = 0

    def take(self, data: memoryview) -> int:
        n = min(len(data), self.size - self.length)
        if self.memory is not None:
            self.memory[self.length:self.length + n] = data[:n]
        else:
            assert self._spool is not None
            self._spool.write(data[:n])
        self.length += n
        return n

    @property
    def full(self) -> bool:
        return self.length >= self.size

    def body(self) -> BinaryIO:
        if self.memory is not None:
            return _Buffer(self.memory, self.length)  # type: ignore[return-value]
        assert self._spool is not None
        self._spool.seek(0)
        return self._spool

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


class MultipartWriter:
    """A write-only file whose bytes become one S3 object when `finish` is called; `discard` leaves nothing."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._upload_id: str | None = None
        # Part buffers are anonymous mappings, made once and reused (IN_FLIGHT uploading, one filling): parts
        # grown by appends and freed on other threads left heap slack that grew with the number of parts, and
        # a mapping's pages count only once written (a small artifact costs its size, not a part's).
        self._buffers: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._allocated = 0
        self._number = 1
        self._part = self._new_part()
        self._done: list[dict[str, Any]] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._flying: list[concurrent.futures.Future] = []
        self.bytes = 0

    def _new_part(self) -> _Part:
        size = part_size(self._number)
        if size > SPOOL_OVER:
            return _Part(size, None)
        while True:
            try:
                memory = self._buffers.get(block=self._allocated > IN_FLIGHT)
            except queue.Empty:
                memory = mmap.mmap(-1, size)
                self._allocated += 1
            if len(memory) == size:
                return _Part(size, memory)
            self._allocated -= 1  # a buffer of the smaller parts before: dropped

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            taken = self._part.take(view)
            view = view[taken:]
            if self._part.full:
                self._send()
        self.bytes += len(data)
        return len(data)

    def _send(self) -> None:
        if self._upload_id is None:
            with _s3_errors(f"s3://{self._bucket}/{self._key}"):
                self._upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)["UploadId"]
            self._pool = concurrent.futures.ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="s3-part")
        while len(self._flying) >= IN_FLIGHT:  # bounded memory: wait for the oldest part
            self._done.append(self._flying.pop(0).result())
        part, number = self._part, self._number
        self._number += 1
        if self._number > MAX_PARTS + 1:
            raise StorageError(f"s3://{self._bucket}/{self._key}: the artifact exceeds S3's 10,000 parts")
        self._part = self._new_part()
        assert self._pool is not None
        self._flying.append(self._pool.submit(self._upload, part, number))

    def _upload(self, part: _Part, number: int) -> dict[str, Any]:
        body = part.body()
        try:
            with _s3_errors(f"s3://{self._bucket}/{self._key} part {number}"):
                answer = self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                                  PartNumber=number, Body=body, ContentLength=part.length)
            return {"PartNumber": number, "ETag": answer["ETag"]}
        finally:
            body.close()
            part.close()
            if part.memory is not None:
                self._buffers.put(part.memory)

    def finish(self) -> None:
        what = f"s3://{self._bucket}/{self._key}"
        if self._upload_id is None:  # small: one PUT
            body = self._part.body()
            try:
                with _s3_errors(what):
                    self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body,
                                            ContentLength=self._part.length)
            finally:
                body.close()
                self._part.close()
            return
        if self._part.length:
            self._send()
        for future in self._flying:
            self._done.append(future.result())
        self._flying.clear()
        with _s3_errors(what):
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                MultipartUpload={"Parts": sorted(self._done, key=lambda p: p["PartNumber"])})
        self._shutdown()

    def discard(self) -> None:
        for future in self._flying:
            future.cancel()
        self._shutdown()
        self._part.close()
        if self._upload_id is not None:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class S3BackupWriter:
    def __init__(self, repository: S3Repository, policy: str, backup_id: str) -> None:
        self._repo = repository
        self._folder = repository.key(policy, backup_id)
        self.backup_id = backup_id

    @contextlib.contextmanager
    def artifact(self, name: str) -> Iterator[BinaryIO]:
        if "/" in name or name in (MANIFEST, "", ".", ".."):
            raise ValueError(f"invalid artifact name {name!r}")
        out = MultipartWriter(self._repo.client, self._repo.bucket, f"{self._folder}/{name}")
        try:
            yield out  # type: ignore[misc]
            out.finish()
        except BaseException:
            out.discard()
            raise

    def commit(self, record: Backup) -> None:
        body = b"".join(manifest_chunks(record))
        with _s3_errors(f"s3://{self._repo.bucket}/{self._folder}/{MANIFEST}"):
            self._repo.client.put_object(Bucket=self._repo.bucket, Key=f"{self._folder}/{MANIFEST}", Body=body,
                                         ContentType="application/json")
        try:
            with _s3_errors(f"s3://{self._repo.bucket}/{self._folder}/{INCOMPLETE}"):
                self._repo.client.delete_object(Bucket=self._repo.bucket, Key=f"{self._folder}/{INCOMPLETE}")
        except StorageError as exc:  # the backup is complete; the next start-up removes the mark
            log.warning("cannot remove %s/%s: %s", self._folder, INCOMPLETE, exc)

    def abort(self) -> None:
        try:
            self._repo.delete_prefix(self._folder + "/")
        except StorageError as exc:  # the next start-up's clean_temporaries removes it
            log.warning("cannot remove the partial backup %s: %s", self._folder, exc)


@dataclass
class _Listing:
    """What a process last listed in one policy folder: every manifest's ETag and record (None when unreadable),
    and the ETag of the index object known to hold exactly these manifests (None when it does not)."""

    index_etag: str | None
    manifests: dict[str, tuple[str, Backup | None]]


# Manifests never change once written: (endpoint, bucket, policy folder) -> what was last listed there.
_listings: dict[tuple[str, str, str], _Listing] = {}
_listings_lock = threading.Lock()


def _md5_of(text: str) -> str:
    """The ETag S3 gives an object of these bytes in one PUT, unencrypted or SSE-S3 (not SSE-KMS, not multipart);
    an index entry whose ETag is not this says so, and is trusted on its ETag alone."""
    return '"' + hashlib.md5(text.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest() + '"'


def _parse_manifest(text: str, where: str | None = None, backup_id: str | None = None) -> Backup | None:
    """The record in a manifest's text; None when it is not one, or not that of `backup_id` (logged when `where`
    names the manifest)."""
    try:
        record = Backup.model_validate_json(text)
    except ValueError as exc:  # pydantic's ValidationError too
        if where is not None:
            log.error("%s: unreadable manifest, ignored: %s", where, " ".join(str(exc).split())[:300])
        return None
    if backup_id is not None and (problem := misplaced(record, backup_id)):
        if where is not None:
            log.error("%s: %s; ignored", where, problem)
        return None
    return record


class S3Repository:
    def __init__(self, spec: S3Storage, client: Any = None) -> None:
        self.spec = spec
        self.bucket = spec.bucket
        self.prefix = spec.prefix
        self.location = f"s3://{spec.bucket}/{spec.prefix}".rstrip("/") + (f" at {spec.endpoint}" if spec.endpoint
                                                                            else "")
        self._client = client
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = make_client(self.spec)
            return self._client

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _list(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        """Every page of ListObjectsV2 under `prefix`."""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
        with _s3_errors(f"listing s3://{self.bucket}/{prefix}"):
            yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)

    def begin(self, policy: str, backup_id: str) -> S3BackupWriter:
        folder = self.key(policy, backup_id) + "/"
        for page in self._list(folder):
            if page.get("KeyCount", len(page.get("Contents", []))):
                raise BackupIdTaken(f"backup {policy}/{backup_id} already exists in {self.location}")
        with _s3_errors(f"s3://{self.bucket}/{folder}{INCOMPLETE}"):
            self.client.put_object(Bucket=self.bucket, Key=f"{folder}{INCOMPLETE}", Body=b"")
        return S3BackupWriter(self, policy, backup_id)

    def exists(self, policy: str, backup_id: str) -> bool:
        return any(page.get("Contents") for page in self._list(self.key(policy, backup_id) + "/"))

    def policies(self) -> list[str]:
        found = set()
        for page in self._list(self.key() + "/" if self.prefix else "", delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                if name and not name.startswith("."):
                    found.add(name)
        return sorted(found)

    def backups(self, policy: str) -> list[Backup]:
        return self.listing(policy)[0]

    def _walk(self, folder: str, around: Iterable[str] = ()
              ) -> tuple[dict[str, str], str | None, dict[str, dict[str, int]]]:
        """One ListObjectsV2 walk of a policy folder: backup id -> its manifest's ETag, the index's ETag, and
        backup id -> {file: size} of every folder but those still being written. Backup ids known to be there
        (`around`) split a long walk into ranges listed in parallel: S3 serves a listing one page of 1,000 keys
        after another (60 ms each on SeaweedFS, 1.2 s of a 10,000-backup listing)."""
        self.client  # noqa: B018 - made on this thread: the pool's threads lack its context (a job's Secret reader)
        ids = sorted(around)
        cuts = [n * len(ids) // WALKERS for n in range(1, WALKERS)] if len(ids) >= 2000 else []
        # A range starts after the backup before its first: SeaweedFS skips a "folder" named by StartAfter, AWS
        # lists it (twice then, which is harmless).
        ranges = list(zip([None, *(folder + ids[c - 1] for c in cuts)], [*(folder + ids[c] for c in cuts), None]))
        with concurrent.futures.ThreadPoolExecutor(len(ranges)) as pool:
            walked = {item["Key"]: item for items in pool.map(lambda r: self._list_range(folder, *r), ranges)
                      for item in items}
        listed: dict[str, str] = {}
        index_etag = None
        found: dict[str, dict[str, int]] = {}
        for item in walked.values():
            parts = item["Key"][len(folder):].split("/")
            if len(parts) == 2 and parts[0] and not parts[0].startswith("."):
                found.setdefault(parts[0], {})[parts[1]] = item["Size"]
                if parts[1] == MANIFEST:
                    listed[parts[0]] = item["ETag"]
            elif parts == [INDEX]:
                index_etag = item["ETag"]
        stored = {backup: sizes for backup, sizes in found.items() if INCOMPLETE not in sizes or MANIFEST in sizes}
        return listed, index_etag, stored

    def _list_range(self, folder: str, start: str | None, stop: str | None) -> list[dict[str, Any]]:
        """The objects of `folder` with keys after `start` and before `stop`."""
        kwargs = {"Bucket": self.bucket, "Prefix": folder, **({"StartAfter": start} if start else {})}
        found = []
        with _s3_errors(f"listing s3://{self.bucket}/{folder}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                for item in page.get("Contents", []):
                    if stop is not None and item["Key"] >= stop:
                        return found
                    found.append(item)
        return found

    def listing(self, policy: str) -> tuple[list[Backup], dict[str, dict[str, int]]]:
        """`backups` and `stored_files` from one walk. The records come from this process's last listing, then
        from the policy's index object (one GET), and only the rest from their manifests; the index is written
        back when it was missing, stale or unreadable."""
        folder = self.key(policy) + "/"
        where = (self.spec.endpoint or "", self.bucket, folder)
        with _listings_lock:
            last = _listings.get(where)
        index = self._read_index(folder) if last is None else None  # first: its backup ids split the walk
        listed, index_etag, stored = self._walk(folder, last.manifests if last is not None else index or ())
        known = {i: entry for i, etag in listed.items()
                 if last is not None and (entry := last.manifests.get(i)) is not None and entry[0] == etag}
        if last is None or last.index_etag != index_etag or not len(known) == len(listed) == len(last.manifests):
            known, index_etag = self._from_index(folder, listed, known, index_etag, index)
        with _listings_lock:
            _listings[where] = _Listing(index_etag, known)
        return [backup for i in sorted(listed) if (backup := known[i][1]) is not None], stored

    def _from_index(self, folder: str, listed: dict[str, str], known: dict[str, tuple[str, Backup | None]],
                    index_etag: str | None, index: dict[str, tuple[str, str]] | None,
                    ) -> tuple[dict[str, tuple[str, Backup | None]], str | None]:
        """Every listed manifest's record, from `known`, the index (read now unless given) or a GET; and the ETag
        of an index holding exactly the listed manifests (None when there is none: writing it failed, or nothing
        is listed)."""
        if index is None:
            index = self._read_index(folder) if index_etag is not None else {}
        texts = {i: text for i, (etag, text) in index.items() if listed.get(i) == etag}
        stale = index_etag is None or len(texts) < len(index) or len(texts) < len(listed)
        doubtful = set()  # entries that are not a manifest of their backup: a corrupt index, or a corrupt manifest
        for i, text in texts.items():
            if i not in known:
                backup = _parse_manifest(text)
                if backup is not None and backup.id == i:
                    known[i] = (listed[i], backup)
                else:
                    doubtful.add(i)
        fetch = [i for i in listed if i not in known or i in doubtful or (stale and i not in texts)]
        if fetch:
            with concurrent.futures.ThreadPoolExecutor(min(16, len(fetch))) as pool:
                for i, text in zip(fetch, pool.map(lambda i: self._manifest_text(f"{folder}{i}/{MANIFEST}"), fetch)):
                    stale = stale or texts.get(i) != text
                    texts[i] = text
                    if i not in known or i in doubtful:
                        known[i] = (listed[i], _parse_manifest(text, f"s3://{self.bucket}/{folder}{i}/{MANIFEST}", i))
        if stale:
            index_etag = self._write_index(folder, {i: (listed[i], texts[i]) for i in listed}, index_etag)
        return {i: known[i] for i in listed}, index_etag

    def _manifest_text(self, key: str) -> str:
        """The manifest at `key` as text. A failure to read it raises: a listing must never drop a backup because
        S3 hiccupped."""
        with _s3_errors(f"s3://{self.bucket}/{key}"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body.decode("utf-8", "surrogateescape")  # an unreadable manifest is indexed as it is

    def _read_index(self, folder: str) -> dict[str, tuple[str, str]]:
        """The index of `folder`: backup id -> (manifest ETag, manifest text); empty when it is missing or corrupt,
        which only costs GETs of the manifests."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = folder + INDEX
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as exc:  # removed since the listing, or S3 hiccupped
            log.debug("s3://%s/%s: index not read: %s", self.bucket, key, mask(str(exc)))
            return {}
        try:
            size = zstandard.frame_content_size(body)
            if not 0 <= size <= INDEX_LIMIT:
                raise ValueError(f"a frame of {size} bytes")
            document = json.loads(zstandard.ZstdDecompressor().decompress(body))
            entries = {i: (entry["etag"], entry["manifest"]) for i, entry in document["manifests"].items()
                       if entry.get("md5", True) is False or _md5_of(entry["manifest"]) == entry["etag"]}
            if not all(isinstance(v, str) for pair in entries.values() for v in pair):
                raise ValueError("an entry that is not text")
            return entries
        except Exception as exc:  # noqa: BLE001 - never trusted, never fatal
            log.warning("s3://%s/%s: ignored the unreadable index (it is rebuilt): %s", self.bucket, key,
                        mask(" ".join(str(exc).split())[:200]) or type(exc).__name__)
            return {}

    def _write_index(self, folder: str, entries: dict[str, tuple[str, str]], index_etag: str | None) -> str | None:
        """Best effort: a failed or racing write costs the next cold listing some GETs, never a wrong record,
        because every entry is checked against its manifest's ETag."""
        key = folder + INDEX
        try:
            if not entries:
                if index_etag is not None:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                return None
            document = {"manifests": {i: {"etag": etag, "manifest": text,
                                          **({} if _md5_of(text) == etag else {"md5": False})}
                                      for i, (etag, text) in entries.items()}}
            body = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(json.dumps(document).encode())
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                          ContentType="application/zstd")["ETag"]
        except Exception as exc:  # noqa: BLE001
            log.debug("s3://%s/%s: index not written: %s", self.bucket, key, mask(str(exc)))
            return None

    def stored_files(self, policy: str) -> dict[str, dict[str, int]]:
        return self._walk(self.key(policy) + "/")[2]

    def manifest_problem(self, policy: str, backup_id: str) -> str | None:
        from botocore.exceptions import ClientError
        key = self.key(policy, backup_id, MANIFEST)
        with _s3_errors(f"s3://{self.bucket}/{key}"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return "no manifest (an interrupted backup, or its manifest was lost)"
                raise
        try:
            record = Backup.model_validate_json(body)
        except (ValueError, ValidationError) as exc:
            return f"unreadable manifest: {' '.join(str(exc).split())[:300]}"
        return misplaced(record, backup_id)

    def open_artifact(self, policy: str, backup_id: str, name: str) -> BinaryIO:
        key = self.key(policy, backup_id, name)
        with _s3_errors(f"s3://{self.bucket}/{key}"):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

    def delete(self, policy: str, backup_id: str) -> None:
        """The manifest first (the folder marked unfinished), so a deletion cut short never leaves a backup that
        looks complete, and the next start-up finishes it."""
        folder = self.key(policy, backup_id)
        with _s3_errors(f"s3://{self.bucket}/{folder}/{INCOMPLETE}"):
            self.client.put_object(Bucket=self.bucket, Key=f"{folder}/{INCOMPLETE}", Body=b"")
        self._delete_keys([f"{folder}/{MANIFEST}"], f"backup {policy}/{backup_id}")
        self.delete_prefix(folder + "/")

    def delete_prefix(self, prefix: str) -> list[str]:
        keys = [item["Key"] for page in self._list(prefix) for item in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            self._delete_keys(keys[start:start + 1000], prefix.rstrip("/"))
        return keys

    def _delete_keys(self, keys: list[str], what: str) -> None:
        if not keys:
            return
        with _s3_errors(f"deleting {what}"):
            answer = self.client.delete_objects(Bucket=self.bucket,
                                                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        errors = answer.get("Errors") or []
        if errors:
            codes = sorted({e.get("Code", "") for e in errors})
            message = f"{what}: S3 refused to delete {len(errors)} object(s) ({', '.join(codes)})"
            if set(codes) <= _LOCKED:
                raise DeleteRefused(message + ": Object Lock retention or a bucket policy keeps them")
            raise StorageError(message, temporary=any(c in ("InternalError", "SlowDown") for c in codes))

    def _restore_key(self, name: str, spec_hash: str) -> str:
        return self.key(RESTORES, f"{name}.{spec_hash}.json")

    def save_restore(self, name: str, spec_hash: str, status: RestoreRequestStatus) -> None:
        with _s3_errors(f"s3://{self.bucket}/{self._restore_key(name, spec_hash)}"):
            self.client.put_object(Bucket=self.bucket, Key=self._restore_key(name, spec_hash),
                                   Body=status.model_dump_json(by_alias=True, exclude_none=True).encode())

    def restore_outcome(self, name: str, spec_hash: str) -> RestoreRequestStatus | None:
        from botocore.exceptions import ClientError

        key = self._restore_key(name, spec_hash)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise storage_error(exc, f"s3://{self.bucket}/{key}") from None
        return RestoreRequestStatus.model_validate_json(body)

    def clean_temporaries(self, policy: str) -> list[str]:
        """Abort multipart uploads and remove unfinished backups of `policy` (marked INCOMPLETE, no manifest: a
        killed run's); call only while holding the policy's job lock. A folder that lost its manifest is kept."""
        removed = []
        prefix = self.key(policy) + "/"
        with _s3_errors(f"listing multipart uploads under s3://{self.bucket}/{prefix}"):
            pages = list(self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                    Prefix=prefix))
        for page in pages:
            for upload in page.get("Uploads", []):
                with _s3_errors(f"aborting the upload of s3://{self.bucket}/{upload['Key']}"):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                removed.append(f"s3://{self.bucket}/{upload['Key']} (multipart upload)")
        folders: dict[str, set[str]] = {}
        for page in self._list(prefix):
            for item in page.get("Contents", []):
                parts = item["Key"][len(prefix):].split("/")
                if len(parts) == 2 and parts[1] in (MANIFEST, INCOMPLETE):
                    folders.setdefault(parts[0], set()).add(parts[1])
        for folder, marks in sorted(folders.items()):
            if marks == {INCOMPLETE}:  # a run that never finished (a folder that lost its manifest is kept)
                self.delete_prefix(f"{prefix}{folder}/")
                removed.append(f"s3://{self.bucket}/{prefix}{folder}/")
            elif INCOMPLETE in marks:  # a complete backup whose mark outlived its commit
                try:
                    with _s3_errors(f"s3://{self.bucket}/{prefix}{folder}/{INCOMPLETE}"):
                        self.client.delete_object(Bucket=self.bucket, Key=f"{prefix}{folder}/{INCOMPLETE}")
                except StorageError as exc:
                    log.warning("cannot remove the mark %s/%s: %s", folder, INCOMPLETE, exc)
        return removed


def open_repository(spec: S3Storage) -> S3Repository:
    return S3Repository(spec)
