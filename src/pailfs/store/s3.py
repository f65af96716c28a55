"""S3Store: any S3-compatible endpoint (AWS, OSS, MinIO, SeaweedFS, Ceph RGW).

Two clients, each for what it does best:

* obstore (Rust `object_store`, releases the GIL) moves the data: GET, ranged GET,
  PUT, multipart PUT, copy, delete of ordinary keys.
* `S3Api` (httpx + SigV4) makes the calls obstore cannot: LIST with exact keys
  (obstore's Path drops a trailing '/' and rejects '.', '..', '//' and control
  characters), HEAD with user metadata, any request on a key obstore cannot
  spell, copies that replace metadata or cross buckets, multi-delete and
  bucket create/delete.

Every provider error goes through `translate()` and its two tables, and comes
out as a one-line pailfs.errors.StoreError that names the operation, the
object and the endpoint, and never carries provider text (obstore's messages
include debug dumps of the request).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import logging
import os
import re
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import AsyncIterator, BinaryIO, Mapping, NoReturn
from urllib.parse import urlsplit
from xml.sax.saxutils import escape as xml_escape

import httpx
import obstore
import obstore.exceptions as obx
from obstore.store import S3Store as _ObstoreS3

from pailfs.config import MB, Options, parse_options
from pailfs.errors import (AccessDenied, BadOption, NoSuchBucket, NotFound, PreconditionFailed,
                           StoreError, StoreUnavailable)
from pailfs.store.base import Listing, ObjectInfo, ObjectStore, ProgressFn
from pailfs.store.listxml import NS as _NS, iso_date, parse_list
from pailfs.store.s3api import Credentials, S3Api
from pailfs.store.sigv4 import uri_encode

log = logging.getLogger(__name__)

LIST_PAGE = 1000
# obstore attributes that are headers, not user metadata
_HEADER_ATTRIBUTES = frozenset({"Content-Disposition", "Content-Encoding", "Content-Language",
                                "Content-Type", "Cache-Control", "Storage-Class"})

# --- the error tables -------------------------------------------------------
# S3 error code (from the XML body) -> domain error; consulted first.
ERROR_CODE_TO_EXCEPTION: dict[str, type[StoreError]] = {
    "NoSuchKey": NotFound,
    "NotFound": NotFound,
    "NoSuchBucket": NoSuchBucket,
    "AccessDenied": AccessDenied,
    "AllAccessDisabled": AccessDenied,
    "SignatureDoesNotMatch": AccessDenied,
    "InvalidAccessKeyId": AccessDenied,
    "InvalidSecurity": AccessDenied,
    "ExpiredToken": AccessDenied,
    "PreconditionFailed": PreconditionFailed,
    "SlowDown": StoreUnavailable,
    "ServiceUnavailable": StoreUnavailable,
    "RequestTimeout": StoreUnavailable,
}
# HTTP status -> domain error, when the body has no (known) code (HEAD has no body).
STATUS_TO_EXCEPTION: dict[int, type[StoreError]] = {
    401: AccessDenied,
    403: AccessDenied,
    404: NotFound,
    412: PreconditionFailed,
    502: StoreUnavailable,
    503: StoreUnavailable,
    504: StoreUnavailable,
}
# obstore exception class -> the HTTP status it stands for
_OBSTORE_STATUS: dict[type[BaseException], int] = {
    FileNotFoundError: 404,
    obx.NotFoundError: 404,
    obx.PermissionDeniedError: 403,
    obx.UnauthenticatedError: 401,
    obx.PreconditionError: 412,
}

_STATUS_RE = re.compile(r"status code: (\d{3})")
_CODE_RE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_TIMEOUT_RE = re.compile(r"kind: Timeout\b|TimedOut|operation timed out")


@dataclass(frozen=True)
class Failure:
    """What went wrong, reduced to what the tables need (never provider text)."""

    status: int | None = None
    code: str | None = None
    transport: str | None = None  # "timed out" / "connection failed"

    @property
    def exception_class(self) -> type[StoreError]:
        if self.code in ERROR_CODE_TO_EXCEPTION:
            return ERROR_CODE_TO_EXCEPTION[self.code]
        if self.status in STATUS_TO_EXCEPTION:
            return STATUS_TO_EXCEPTION[self.status]
        if self.transport:
            return StoreUnavailable
        return StoreError


def _caused_by(exc: BaseException, cls: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, cls):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def failure_of(exc: BaseException | httpx.Response) -> Failure:
    """Classify an obstore exception, an httpx exception or an error response."""
    if isinstance(exc, httpx.Response):
        code = _CODE_RE.search(exc.text) if exc.content else None
        return Failure(exc.status_code, code.group(1) if code else None)
    if isinstance(exc, httpx.TimeoutException):
        return Failure(transport="timed out")
    if isinstance(exc, httpx.ConnectError) and _caused_by(exc, ConnectionRefusedError):
        return Failure(transport="connection refused")
    if isinstance(exc, httpx.TransportError):
        return Failure(transport="connection failed")
    text = str(exc)
    status = next((s for cls, s in _OBSTORE_STATUS.items() if isinstance(exc, cls)), None)
    found = _STATUS_RE.search(text)
    if found:
        status = int(found.group(1))
    code = _CODE_RE.search(text)
    transport = None
    if status is None:  # read obstore's debug text for the cause; it is never shown
        if _TIMEOUT_RE.search(text):
            transport = "timed out"
        elif "ConnectionRefused" in text:
            transport = "connection refused"
        elif "kind: Connect" in text or "error sending request" in text or "dns error" in text.lower():
            transport = "connection failed"
        elif "kind: Interrupted" in text or "body error" in text:  # the connection broke mid-body
            transport = "connection broken mid-transfer"
    return Failure(status, code.group(1) if code else None, transport)


# Message per domain error; fields: op, where, bucket, endpoint, detail, hint.
_MESSAGES: dict[type[StoreError], str] = {
    NotFound: "{op} {where}: no such key",
    NoSuchBucket: "{op} {where}: no such bucket '{bucket}' at {endpoint}",
    AccessDenied: "{op} {where}: access denied by {endpoint} ({detail}); check the access key and secret{hint}",
    StoreUnavailable: "{op} {where}: cannot reach {endpoint} ({detail})",
    PreconditionFailed: "{op} {where}: the object changed during the operation",
    StoreError: "{op} {where}: {detail} from {endpoint}",
}


def translate(failure: Failure, op: str, where: str, bucket: str, endpoint: str,
              credentials: Credentials | None) -> StoreError:
    cls = failure.exception_class
    detail = failure.code or (f"HTTP {failure.status}" if failure.status else failure.transport or "error")
    if credentials is None:
        hint = " (no credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or -o passwd_file=FILE)"
    else:
        hint = f" (from {credentials.source})" if credentials.source else ""
    text = _MESSAGES[cls].format(op=op, where=where, bucket=bucket, endpoint=endpoint, detail=detail, hint=hint)
    return cls(text)


def obstore_can_spell(key: str) -> bool:
    """Whether obstore's Path keeps this key byte for byte (else S3Api carries it)."""
    if not key or key.startswith("/") or key.endswith("/") or "//" in key:
        return False
    if any(part in (".", "..") for part in key.split("/")):
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)


def _http_date(text: str | None) -> float:
    if not text:
        return time.time()
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return time.time()


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not value.isascii() or not value.isprintable():
            raise StoreError(f"metadata '{name}' is not allowed: names are letters, digits, '-', '_', '.'; "
                             "values are printable ASCII")
        out[name.lower()] = value
    return out


def _obstore_attributes(meta: dict[str, str], content_type: str | None) -> dict[str, str] | None:
    """obstore attributes: user metadata, and Content-Type when given."""
    attributes = dict(meta)
    if content_type:
        attributes["Content-Type"] = content_type
    return attributes or None


def _xml_text(body: bytes, tag: str) -> str | None:
    """The text of the first <tag> in an S3 XML answer (None if absent or malformed)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    found = root.find(_NS + tag)
    if found is None:
        found = root.find(tag)
    return found.text if found is not None else None


class _ProgressReader:
    """A file object that reports bytes as obstore reads them (called from obstore's threads)."""

    def __init__(self, f: BinaryIO, progress: ProgressFn) -> None:
        self._f = f
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if data:
            self._progress(len(data))
        return data

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.pailfs-{uuid.uuid4().hex[:8]}")


def _write_new_file(path: Path, data: bytes) -> None:
    """Write data to a temp file beside path, then rename it over path."""
    tmp = _temp_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _open_temp(path: Path) -> tuple[Path, int]:
    tmp = _temp_name(path)
    return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


def _commit_temp(fd: int, tmp: Path, path: Path) -> None:
    os.close(fd)
    os.replace(tmp, path)


def _discard_temp(fd: int, tmp: Path) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # already closed by _commit_temp
    tmp.unlink(missing_ok=True)


class S3Store(ObjectStore):
    """A bucket, or a prefix of one, on an S3-compatible endpoint."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str,
                 credentials: Credentials | None, options: Options | None = None) -> None:
        super().__init__()
        opts = options or parse_options(env={})
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise BadOption(f"bad endpoint '{endpoint}': expected http(s)://host[:port]")
        self.bucket = bucket
        self.root = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        self.url = f"s3://{bucket}/{self.root}"
        self.region = opts.region
        self.part_size = opts.multipart_size * MB
        self.parallel = opts.parallel_count
        self.max_multireq = opts.max_multireq
        self.virtual_hosted = bool(opts.virtual_hosted or not opts.use_path_request_style)
        self._credentials = credentials
        self._bucket_known = False
        self._obs = self._make_obstore(opts)
        self._api = S3Api(self.endpoint, credentials, opts.region, virtual_hosted=self.virtual_hosted,
                          connect_timeout=opts.connect_timeout, timeout=opts.readwrite_timeout,
                          max_connections=max(64, opts.max_multireq), retries=opts.retries)

    def _make_obstore(self, opts: Options) -> _ObstoreS3:
        parts = urlsplit(self.endpoint)
        # with virtual-hosted requests object_store expects the bucket in the endpoint
        endpoint = f"{parts.scheme}://{self.bucket}.{parts.netloc}" if self.virtual_hosted else self.endpoint
        auth: dict[str, object]
        if self._credentials is None:
            auth = {"skip_signature": True}
        else:
            auth = {"access_key_id": self._credentials.access_key,
                    "secret_access_key": self._credentials.secret_key}
        return _ObstoreS3(
            self.bucket, endpoint=endpoint, region=opts.region,
            virtual_hosted_style_request=self.virtual_hosted, **auth,
            client_options={
                "allow_http": parts.scheme == "http",
                "connect_timeout": timedelta(seconds=opts.connect_timeout),
                "timeout": timedelta(seconds=opts.readwrite_timeout),
                "pool_max_idle_per_host": str(max(64, opts.max_multireq)),
            },
            retry_config={
                "max_retries": opts.retries,
                "retry_timeout": timedelta(seconds=opts.readwrite_timeout),
                "backoff": {"init_backoff": timedelta(milliseconds=100),
                            "max_backoff": timedelta(seconds=5), "base": 2},
            },
        )

    @property
    def api(self) -> S3Api:
        """The signed REST client on this endpoint (for calls the contract does not cover)."""
        return self._api

    # --- helpers ---------------------------------------------------------
    def _full(self, key: str) -> str:
        return self.root + key

    def _key(self, key: str) -> str:
        """Full key of an object operation. '.' and '..' segments are refused: HTTP
        clients and S3 servers (SeaweedFS) rewrite them, so the object would land elsewhere."""
        if any(part in (".", "..") for part in key.split("/")) or not key:
            raise StoreError(f"key {key!r} cannot be stored: empty, or a '.' or '..' path segment")
        return self.root + key

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{self._full(key) if key is not None else self.root}"

    def _error(self, failure: Failure, op: str, key: str | None) -> StoreError:
        self.stats.errors += 1
        return translate(failure, op, self._where(key), self.bucket, self.endpoint, self._credentials)

    async def _raise(self, exc: BaseException | httpx.Response, op: str, key: str | None) -> NoReturn:
        failure = failure_of(exc)
        # a bodyless 404 (HEAD) does not say whether the key or the bucket is missing
        if failure.status == 404 and failure.code is None and not self._bucket_known:
            await self._probe_bucket(op, key)
        raise self._error(failure, op, key) from None

    async def _probe_bucket(self, op: str, key: str | None) -> None:
        """One cheap LIST: NoSuchBucket / AccessDenied / StoreUnavailable, reported as `op` on `key`."""
        await self._api_call("GET", "", op, key, query={"list-type": "2", "max-keys": "1"}, probe=False)

    async def _api_call(self, method: str, key: str, op: str, err_key: str | None, *,
                        bucket: str | None = None, query: dict[str, str] | None = None,
                        headers: dict[str, str] | None = None, body: bytes = b"",
                        ok: tuple[int, ...] = (200,), probe: bool = True) -> httpx.Response:
        """One S3Api request on a full key; errors translated. `key=""` is the bucket."""
        try:
            resp = await self._api.request(method, self.bucket if bucket is None else bucket, key,
                                           query=query, headers=headers, body=body)
        except httpx.HTTPError as exc:
            raise self._error(failure_of(exc), op, err_key) from None
        if resp.status_code not in ok:
            if probe:
                await self._raise(resp, op, err_key)
            raise self._error(failure_of(resp), op, err_key)
        self._bucket_known = True
        return resp

    def _attributes(self, metadata: Mapping[str, str] | None) -> dict[str, str] | None:
        meta = _check_metadata(metadata)
        return meta or None

    @staticmethod
    def _meta_headers(metadata: Mapping[str, str]) -> dict[str, str]:
        return {f"x-amz-meta-{k}": v for k, v in metadata.items()}

    # --- reads -----------------------------------------------------------
    async def head(self, key: str) -> ObjectInfo:
        full = self._key(key)
        if obstore_can_spell(full):
            # obstore's HEAD (Rust, off the GIL) carries the user metadata too: ~8x the
            # rate of a Python request when a directory's entries are HEADed at once
            try:
                result = await obstore.get_async(self._obs, full, options={"head": True})
            except Exception as exc:  # noqa: BLE001 - every obstore error goes through the table
                await self._raise(exc, "stat", key)
            self._bucket_known = True
            self._count("head")
            meta, attributes = result.meta, result.attributes
            return ObjectInfo(key, meta["size"], meta["last_modified"].timestamp(), meta["e_tag"],
                              {k.lower(): v for k, v in attributes.items() if k not in _HEADER_ATTRIBUTES},
                              attributes.get("Content-Type"))
        resp = await self._api_call("HEAD", full, "stat", key)
        self._count("head")
        h = resp.headers
        metadata = {name[len("x-amz-meta-"):]: value for name, value in h.items()
                    if name.lower().startswith("x-amz-meta-")}
        return ObjectInfo(key, int(h.get("content-length", 0)), _http_date(h.get("last-modified")),
                          h.get("etag"), metadata, h.get("content-type"))

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        data = await self._get(key, start, end)
        return data if isinstance(data, bytes) else bytes(data)

    async def get_buffer(self, key: str, start: int | None = None, end: int | None = None) -> memoryview:
        return memoryview(await self._get(key, start, end))

    async def _get(self, key: str, start: int | None, end: int | None) -> "bytes | obstore.Bytes":
        """bytes, or obstore's Bytes (a buffer owned by Rust: no copy into Python)."""
        lo = start or 0
        if end is not None and end <= lo:
            return b""
        full = self._key(key)
        if not obstore_can_spell(full):
            headers = {}
            if start is not None or end is not None:
                headers["range"] = f"bytes={lo}-" + (str(end - 1) if end is not None else "")
            resp = await self._api_call("GET", full, "read", key, headers=headers, ok=(200, 206, 416))
            data = b"" if resp.status_code == 416 else resp.content
            self._count("get", down=len(data))
            return data
        try:
            if end is not None:  # one await, not two: the read path's common case
                data = await obstore.get_range_async(self._obs, full, start=lo, end=end)
            else:
                options = {"range": {"offset": lo}} if start else None
                result = await obstore.get_async(self._obs, full, options=options)
                data = await result.bytes_async()
        except Exception as exc:  # noqa: BLE001 - every obstore error goes through the table
            if failure_of(exc).status == 416:  # range starts at or past the end
                self._count("get")
                return b""
            await self._raise(exc, "read", key)
        self._bucket_known = True
        self._count("get", down=len(data))
        return data

    async def list_pages(self, prefix: str = "", delimiter: str | None = None,
                         page_size: int = LIST_PAGE) -> AsyncIterator[Listing]:
        query = {"list-type": "2", "prefix": self._full(prefix), "encoding-type": "url",
                 "max-keys": str(max(1, min(page_size, LIST_PAGE)))}
        if delimiter:
            query["delimiter"] = delimiter
        strip = len(self.root)
        while True:
            resp = await self._api_call("GET", "", "list", prefix, query=query)
            self._count("list", down=len(resp.content))
            page, token = parse_list(resp.content, strip)
            yield page
            if not token:
                return
            query["continuation-token"] = token

    async def get_file(self, key: str, path: str | Path, progress: ProgressFn | None = None) -> ObjectInfo:
        """Download through a temp file in the target directory, renamed when complete.

        The first request is a ranged GET of one part; if the object is larger, the
        other parts follow in parallel (parallel_count), pinned to the first part's
        ETag. File system calls run in worker threads: done inline they serialise
        on the event loop and cap small-file downloads at about 1,000 files/s."""
        path = Path(path)
        full = self._key(key)
        if not obstore_can_spell(full):
            data = await self.get(key)
            info = await self.head(key)
            await self._local(key, path, _write_new_file, path, data)
            if progress:
                progress(len(data))
            return info
        part = self.part_size
        try:
            first = await obstore.get_async(self._obs, full, options={"range": (0, part)})
            data = await first.bytes_async()
        except Exception as exc:  # noqa: BLE001 - every obstore error goes through the table
            if failure_of(exc).status != 416:  # 416: an empty object
                await self._raise(exc, "download", key)
            first = await self._get_whole(key, full)
            data = await first.bytes_async()
        self._bucket_known = True
        self._count("get", down=len(data))
        meta = first.meta
        size, etag = meta["size"], meta["e_tag"]
        metadata = {k.lower(): v for k, v in first.attributes.items() if k not in _HEADER_ATTRIBUTES}
        info = ObjectInfo(key, size, meta["last_modified"].timestamp(), etag, metadata)
        if size <= part:
            await self._local(key, path, _write_new_file, path, data)
            if progress:
                progress(len(data))
            return info
        tmp, fd = await self._local(key, path, _open_temp, path)
        try:
            await self._local(key, path, os.pwrite, fd, data, 0)
            if progress:
                progress(len(data))
            sem = asyncio.Semaphore(self.parallel)

            async def fetch(start: int) -> None:
                async with sem:
                    opts: dict = {"range": (start, min(start + part, size))}
                    if etag:
                        opts["if_match"] = etag
                    try:
                        res = await obstore.get_async(self._obs, full, options=opts)
                        chunk = await res.bytes_async()
                    except Exception as exc:  # noqa: BLE001
                        await self._raise(exc, "download", key)
                    await self._local(key, path, os.pwrite, fd, chunk, start)
                    self._count("get", down=len(chunk))
                    if progress:
                        progress(len(chunk))

            try:
                async with asyncio.TaskGroup() as tg:
                    for start in range(part, size, part):
                        tg.create_task(fetch(start))
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None
            await self._local(key, path, _commit_temp, fd, tmp, path)
        except BaseException:
            await asyncio.to_thread(_discard_temp, fd, tmp)
            raise
        return info

    async def _local(self, key: str, path: Path, fn, *args):  # noqa: ANN001, ANN202
        """A blocking local file call in a worker thread; OSError -> one-line StoreError."""
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise StoreError(f"download {self._where(key)}: cannot write {path}: "
                             f"{exc.strerror or type(exc).__name__}") from None

    async def _get_whole(self, key: str, full: str):  # -> obstore.GetResult
        try:
            return await obstore.get_async(self._obs, full)
        except Exception as exc:  # noqa: BLE001
            await self._raise(exc, "download", key)

    # --- writes ----------------------------------------------------------
    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
                  content_type: str | None = None) -> ObjectInfo:
        meta = _check_metadata(metadata)
        full = self._key(key)
        if not obstore_can_spell(full):
            headers = self._meta_headers(meta)
            if content_type:
                headers["content-type"] = content_type
            resp = await self._api_call("PUT", full, "write", key, headers=headers, body=bytes(data))
            etag = resp.headers.get("etag")
        else:
            try:
                result = await obstore.put_async(self._obs, full, data,
                                                 attributes=_obstore_attributes(meta, content_type),
                                                 chunk_size=self.part_size, max_concurrency=self.parallel)
            except Exception as exc:  # noqa: BLE001
                await self._raise(exc, "write", key)
            etag = result["e_tag"]
        self._bucket_known = True
        self._count("put", up=len(data))
        return ObjectInfo(key, len(data), time.time(), etag, meta, content_type)

    async def put_file(self, key: str, path: str | Path, metadata: Mapping[str, str] | None = None,
                       progress: ProgressFn | None = None, *, content_type: str | None = None) -> ObjectInfo:
        meta = _check_metadata(metadata)
        full = self._key(key)
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise StoreError(f"upload {self._where(key)}: cannot read {path}: {exc.strerror}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size <= self.part_size or not obstore_can_spell(full):
                info = await self.put(key, f.read(), meta, content_type=content_type)
                if progress:
                    progress(size)
                return info
            # multipart: obstore aborts the upload when a part fails, so no object appears
            source = _ProgressReader(f, progress) if progress else f
            try:
                result = await obstore.put_async(self._obs, full, source,
                                                 attributes=_obstore_attributes(meta, content_type),
                                                 use_multipart=True, chunk_size=self.part_size,
                                                 max_concurrency=self.parallel)
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, obx.BaseError)):
                    # raised by our file object: a local read error
                    # (obstore re-raises it as a bare OSError whose text is our own)
                    reason = exc.strerror or str(exc).splitlines()[0][:200] or type(exc).__name__
                    raise StoreError(f"upload {self._where(key)}: cannot read {path}: {reason}") from None
                await self._raise(exc, "upload", key)
        parts = -(-size // self.part_size)
        self.stats.requests["put_part"] += parts
        self._count("put", up=size)
        return ObjectInfo(key, size, time.time(), result["e_tag"], meta, content_type)

    async def delete(self, key: str) -> None:
        full = self._key(key)
        if obstore_can_spell(full):
            try:
                await obstore.delete_async(self._obs, full)
            except FileNotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001
                await self._raise(exc, "delete", key)
        else:
            await self._api_call("DELETE", full, "delete", key, ok=(200, 204, 404))
        self._count("delete")

    async def delete_many(self, keys: list[str]) -> None:
        """S3 multi-object delete, 1000 keys per request."""
        for i in range(0, len(keys), LIST_PAGE):
            batch = keys[i:i + LIST_PAGE]
            body = ("<Delete><Quiet>true</Quiet>" + "".join(
                f"<Object><Key>{xml_escape(self._full(k))}</Key></Object>" for k in batch) + "</Delete>").encode()
            headers = {"content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),
                       "content-type": "application/xml"}
            resp = await self._api_call("POST", "", "delete", batch[0], query={"delete": ""},
                                        headers=headers, body=body)
            self._count("delete_many")
            errors = ET.fromstring(resp.content).iter(_NS + "Error")
            for err in errors:
                code = err.findtext(_NS + "Code")
                if code in ("NoSuchKey",):
                    continue
                bad = (err.findtext(_NS + "Key") or "")[len(self.root):]
                raise self._error(Failure(code=code), "delete", bad)

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None, *,
                   content_type: str | None = None) -> None:
        full_src, full_dst = self._key(src), self._key(dst)
        if metadata is None and obstore_can_spell(full_src) and obstore_can_spell(full_dst):
            try:
                await obstore.copy_async(self._obs, full_src, full_dst)
            except Exception as exc:  # noqa: BLE001
                await self._raise(exc, "copy", src)
            self._count("copy")
            return
        await self._copy_object(self.bucket, full_src, src, full_dst, metadata, content_type=content_type)

    async def copy_from(self, source: "S3Store", src: str, dst: str) -> None:
        """Server-side copy from another bucket (or prefix) on the same endpoint."""
        if source.endpoint != self.endpoint:
            raise StoreError(f"copy {source._where(src)} to {self._where(dst)}: server-side copy needs one endpoint")
        await self._copy_object(source.bucket, source._key(src), src, self._key(dst), None,
                                where=source._where(src))

    async def _copy_object(self, src_bucket: str, full_src: str, src: str, full_dst: str,
                           metadata: Mapping[str, str] | None, where: str | None = None,
                           content_type: str | None = None) -> None:
        headers = {"x-amz-copy-source": f"/{src_bucket}/" + uri_encode(full_src, keep_slash=True)}
        if metadata is not None:
            headers["x-amz-metadata-directive"] = "REPLACE"
            headers.update(self._meta_headers(_check_metadata(metadata)))
            if content_type:  # REPLACE replaces the content type too
                headers["content-type"] = content_type
        try:
            resp = await self._api.request("PUT", self.bucket, full_dst, headers=headers)
        except httpx.HTTPError as exc:
            raise self._error(failure_of(exc), "copy", src) from None
        # a copy may fail after "200 OK" with an <Error> body
        if resp.status_code != 200 or b"<Error>" in resp.content[:512]:
            failure = failure_of(resp)
            self.stats.errors += 1
            raise translate(failure, "copy", where or self._where(src), src_bucket if failure.code == "NoSuchBucket"
                            else self.bucket, self.endpoint, self._credentials)
        self._count("copy")

    # --- multipart uploads, part by part ---------------------------------
    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None, *,
                               content_type: str | None = None) -> str:
        headers = self._meta_headers(_check_metadata(metadata))
        if content_type:
            headers["content-type"] = content_type
        resp = await self._api_call("POST", self._key(key), "upload", key, query={"uploads": ""}, headers=headers)
        self._count("create_multipart")
        upload_id = _xml_text(resp.content, "UploadId")
        if not upload_id:
            raise self._error(Failure(code="MalformedXML"), "upload", key)
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        resp = await self._api_call("PUT", self._key(key), "upload", key,
                                    query={"partNumber": str(number), "uploadId": upload_id}, body=bytes(data))
        self._count("put_part", up=len(data))
        etag = resp.headers.get("etag")
        if not etag:
            raise self._error(Failure(code="MissingETag"), "upload", key)
        return etag

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str | None:
        body = ("<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{xml_escape(etag)}</ETag></Part>" for n, etag in parts)
            + "</CompleteMultipartUpload>").encode()
        resp = await self._api_call("POST", self._key(key), "upload", key, query={"uploadId": upload_id},
                                    headers={"content-type": "application/xml"}, body=body)
        # like a copy, a completion may fail after "200 OK" with an <Error> body
        if b"<Error>" in resp.content[:512]:
            raise self._error(failure_of(resp), "upload", key)
        self._count("complete_multipart")
        return _xml_text(resp.content, "ETag")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._api_call("DELETE", self._key(key), "abort upload", key, query={"uploadId": upload_id},
                             ok=(200, 204, 404))
        self._count("abort_multipart")

    # --- bucket level ----------------------------------------------------
    async def check(self) -> None:
        await self._probe_bucket("open", None)

    async def create_bucket(self) -> None:
        resp = await self._api_call("PUT", "", "create bucket", None, ok=(200, 409), probe=False)
        if resp.status_code == 409:
            code = failure_of(resp).code or "BucketAlreadyExists"
            raise StoreError(f"create bucket s3://{self.bucket}: it already exists ({code})")

    async def delete_bucket(self) -> None:
        resp = await self._api_call("DELETE", "", "delete bucket", None, ok=(200, 204, 409), probe=False)
        if resp.status_code == 409:
            raise StoreError(f"delete bucket s3://{self.bucket}: it is not empty "
                             f"(remove its objects first: pailfs rm -r s3://{self.bucket})")

    async def close(self) -> None:
        await self._api.aclose()


async def list_buckets(endpoint: str, credentials: Credentials | None,
                       options: Options | None = None) -> list[tuple[str, float]]:
    """(name, creation time) of every bucket the credentials can see."""
    opts = options or parse_options(env={})
    api = S3Api(endpoint, credentials, opts.region, connect_timeout=opts.connect_timeout,
                timeout=opts.readwrite_timeout, retries=opts.retries)
    try:
        try:
            resp = await api.request("GET")
        except httpx.HTTPError as exc:
            raise translate(failure_of(exc), "list buckets", "s3://", "", endpoint, credentials) from None
        if resp.status_code != 200:
            raise translate(failure_of(resp), "list buckets", "s3://", "", endpoint, credentials)
        root = ET.fromstring(resp.content)
        return [(b.findtext(_NS + "Name") or "", iso_date(b.findtext(_NS + "CreationDate")))
                for b in root.iter(_NS + "Bucket")]
    finally:
        await api.aclose()
