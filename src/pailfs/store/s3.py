"""S3Store: any S3-compatible endpoint (AWS, OSS, MinIO, SeaweedFS, Ceph RGW).

Two clients, each for what it does best:

* obstore (Rust `object_store`, releases the GIL) moves the data: GET, ranged GET,
  PUT, multipart PUT, copy, delete of ordinary keys.
* `S3Api` (httpx + SigV4) makes the calls obstore cannot: LIST with exact keys
  (obstore's Path drops a trailing '/' and rejects '.', '..', '//' and control
  characters), HEAD with user metadata, any request on a key obstore cannot
  spell, copies that replace metadata or cross buckets, multi-delete,
  multipart-upload listing/abort and bucket create/delete.

Both follow one configuration: the Endpoint (addressing style, signing
region), TLS (system CAs plus `ca_file=`), the credential source (static or
refreshing, with its session token) and store.failure's retry rule; obstore's
own retries are off so that rule is the only one. Uploads are plain signed
PUTs (object_store never uses aws-chunked encoding, which OSS rejects).

Every provider error goes through store.failure and comes out as a one-line
pailfs.errors.StoreError that names the operation, the object and the
endpoint, and never carries provider text (obstore's messages include debug
dumps of the request).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Mapping, NoReturn, TypeVar
from xml.sax.saxutils import escape as xml_escape

import httpx
import obstore
import obstore.exceptions as obx
from obstore.store import S3Store as _ObstoreS3

from pailfs.config import MB, Options, parse_options
from pailfs.credentials import Credentials, CredentialSource, CredentialsExpired, tls_context
from pailfs.errors import BadCredentials, PailfsError, StoreError
from pailfs.store.base import Listing, ObjectInfo, ObjectStore, ProgressFn, Upload
from pailfs.store.endpoint import Endpoint, endpoint_of
from pailfs.store.failure import REQUEST_ERRORS, Failure, failure_of, retrying, translate
from pailfs.store.files import ProgressReader, commit_temp, discard_temp, open_temp, write_new_file
from pailfs.store.listxml import NS as _NS, iso_date, parse_list
from pailfs.store.s3api import S3Api
from pailfs.store.s3wire import (HEADER_ATTRIBUTES, checked_metadata, find_text, http_date, obstore_attributes,
                                 obstore_can_spell, xml_text)
from pailfs.store.sigv4 import uri_encode

__all__ = ["Credentials", "S3Store"]

log = logging.getLogger(__name__)
T = TypeVar("T")

LIST_PAGE = 1000
ABORT_WITHIN = 10  # seconds to free an interrupted upload's parts before giving up (and saying how)


class S3Store(ObjectStore):
    """A bucket, or a prefix of one, on an S3-compatible endpoint."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: Endpoint | str,
                 credentials: CredentialSource | None, options: Options | None = None) -> None:
        super().__init__()
        opts = options or parse_options(env={})
        self.address = endpoint if isinstance(endpoint, Endpoint) else endpoint_of(opts, endpoint)
        self.bucket = bucket
        self.root = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = self.address.url
        self.url = f"s3://{bucket}/{self.root}"
        self.region = self.address.region
        self.virtual_hosted = self.address.virtual_hosted
        self.part_size = opts.multipart_size * MB
        self.parallel = opts.parallel_count
        self.max_multireq = opts.max_multireq
        self.retries = opts.retries
        self.timeout = opts.readwrite_timeout
        self._credentials = credentials
        self._bucket_known = False
        ca_file = opts.values.get("ca_file")
        verify = tls_context(ca_file) if self.address.scheme == "https" else None
        self._obs = self._make_obstore(opts, ca_file)
        self._api = S3Api(self.address, credentials, connect_timeout=opts.connect_timeout,
                          timeout=opts.readwrite_timeout, max_connections=max(64, opts.max_multireq),
                          retries=opts.retries, verify=verify)

    def _make_obstore(self, opts: Options, ca_file: str | None) -> _ObstoreS3:
        # with virtual-hosted requests object_store expects the bucket in the endpoint
        endpoint = self.address.bucket_url(self.bucket) if self.virtual_hosted else self.address.url
        auth: dict[str, object]
        if self._credentials is None:
            auth = {"skip_signature": True}
        else:
            auth = {"credential_provider": self._obstore_credentials, "skip_signature": False}
        client: dict[str, object] = {
            "allow_http": self.address.scheme == "http",
            "connect_timeout": timedelta(seconds=opts.connect_timeout),
            "timeout": timedelta(seconds=opts.readwrite_timeout),
            "pool_max_idle_per_host": str(max(64, opts.max_multireq)),
        }
        if ca_file:  # added to the system roots, as tls_context() does for S3Api
            tls_context(ca_file)  # a missing or unusable file is BadOption, not a traceback
            client["root_certificate"] = Path(ca_file).expanduser().read_bytes()
        return _ObstoreS3(
            self.bucket, endpoint=endpoint, region=self.region,
            virtual_hosted_style_request=self.virtual_hosted,
            # explicit values win over obstore's reading of AWS_* variables, which S3Api
            # would not follow (AWS_ENDPOINT_URL_S3 would send obstore elsewhere)
            aws_endpoint_url_s3=endpoint, unsigned_payload=False, s3_express=False,
            request_payer=False, **auth,
            client_options=client,
            # store.failure.retrying is the one retry loop
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=opts.readwrite_timeout)},
        )

    def _obstore_credentials(self) -> dict[str, object]:
        """obstore's credential provider: the source's current credentials (no I/O while
        they are valid: _obs_call refreshed them before the request)."""
        creds = self._credentials.current()  # type: ignore[union-attr]
        expires = (datetime.fromtimestamp(creds.expires_at, timezone.utc)
                   if creds.expires_at is not None else None)
        return {"access_key_id": creds.access_key, "secret_access_key": creds.secret_key,
                "token": creds.token, "expires_at": expires}

    async def _obs_call(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """One obstore call under the store's retry rule (errors raised untranslated)."""
        return await retrying(call, self.retries, self.timeout, self._credentials, what)

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

    def _credential_error(self, exc: BadCredentials | CredentialsExpired, op: str, key: str | None) -> PailfsError:
        """The credential source failed (no request was sent): its message, naming the operation."""
        self.stats.errors += 1
        return type(exc)(f"{op} {self._where(key)}: {exc}")

    async def _raise(self, exc: BaseException | httpx.Response, op: str, key: str | None) -> NoReturn:
        if isinstance(exc, (BadCredentials, CredentialsExpired)):
            raise self._credential_error(exc, op, key) from None
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
        except (BadCredentials, CredentialsExpired) as exc:
            raise self._credential_error(exc, op, err_key) from None
        except REQUEST_ERRORS as exc:
            raise self._error(failure_of(exc), op, err_key) from None
        if resp.status_code not in ok:
            if probe:
                await self._raise(resp, op, err_key)
            raise self._error(failure_of(resp), op, err_key)
        self._bucket_known = True
        return resp

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
                result = await self._obs_call(lambda: obstore.get_async(self._obs, full, options={"head": True}),
                                              f"HEAD {full}")
            except Exception as exc:  # noqa: BLE001 - every obstore error goes through the table
                await self._raise(exc, "stat", key)
            self._bucket_known = True
            self._count("head")
            meta, attributes = result.meta, result.attributes
            return ObjectInfo(key, meta["size"], meta["last_modified"].timestamp(), meta["e_tag"],
                              {k.lower(): v for k, v in attributes.items() if k not in HEADER_ATTRIBUTES},
                              attributes.get("Content-Type"))
        resp = await self._api_call("HEAD", full, "stat", key)
        self._count("head")
        h = resp.headers
        metadata = {name[len("x-amz-meta-"):]: value for name, value in h.items()
                    if name.lower().startswith("x-amz-meta-")}
        return ObjectInfo(key, int(h.get("content-length", 0)), http_date(h.get("last-modified")),
                          h.get("etag"), metadata, h.get("content-type"))

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        data = await self._get(key, start, end)
        return data if isinstance(data, bytes) else bytes(data)

    async def get_buffer(self, key: str, start: int | None = None, end: int | None = None, *,
                         if_match: str | None = None) -> memoryview:
        return memoryview(await self._get(key, start, end, if_match))

    async def _get(self, key: str, start: int | None, end: int | None,
                   if_match: str | None = None) -> "bytes | obstore.Bytes":
        """bytes, or obstore's Bytes (a buffer owned by Rust: no copy into Python)."""
        lo = start or 0
        if end is not None and end <= lo:
            return b""
        full = self._key(key)
        if not obstore_can_spell(full):
            headers = {}
            if start is not None or end is not None:
                headers["range"] = f"bytes={lo}-" + (str(end - 1) if end is not None else "")
            if if_match is not None:
                headers["if-match"] = if_match
            resp = await self._api_call("GET", full, "read", key, headers=headers, ok=(200, 206, 416))
            data = b"" if resp.status_code == 416 else resp.content
            self._count("get", down=len(data))
            return data
        async def fetch() -> "bytes | obstore.Bytes":
            if if_match is not None:
                options: dict = {"if_match": if_match, "range": (lo, end) if end is not None else {"offset": lo}}
                return await (await obstore.get_async(self._obs, full, options=options)).bytes_async()
            if end is not None:  # one await, not two: the read path's common case
                return await obstore.get_range_async(self._obs, full, start=lo, end=end)
            result = await obstore.get_async(self._obs, full, options={"range": {"offset": lo}} if start else None)
            return await result.bytes_async()

        try:
            data = await self._obs_call(fetch, f"GET {full}")
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
            await self._local(key, path, write_new_file, path, data)
            if progress:
                progress(len(data))
            return info
        part = self.part_size
        try:
            first, data = await self._obs_call(lambda: self._get_body(full, {"range": (0, part)}), f"GET {full}")
        except Exception as exc:  # noqa: BLE001 - every obstore error goes through the table
            if failure_of(exc).status != 416:  # 416: an empty object
                await self._raise(exc, "download", key)
            first, data = await self._get_whole(key, full)
        self._bucket_known = True
        self._count("get", down=len(data))
        meta = first.meta
        size, etag = meta["size"], meta["e_tag"]
        metadata = {k.lower(): v for k, v in first.attributes.items() if k not in HEADER_ATTRIBUTES}
        info = ObjectInfo(key, size, meta["last_modified"].timestamp(), etag, metadata)
        if size <= part:
            await self._local(key, path, write_new_file, path, data)
            if progress:
                progress(len(data))
            return info
        tmp, fd = await self._local(key, path, open_temp, path)
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
                        _, chunk = await self._obs_call(lambda: self._get_body(full, opts), f"GET {full}")
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
            await self._local(key, path, commit_temp, fd, tmp, path)
        except BaseException:
            await asyncio.to_thread(discard_temp, fd, tmp)
            raise
        return info

    async def _local(self, key: str, path: Path, fn, *args):  # noqa: ANN001, ANN202
        """A blocking local file call in a worker thread; OSError -> one-line StoreError."""
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise StoreError(f"download {self._where(key)}: cannot write {path}: "
                             f"{exc.strerror or type(exc).__name__}") from None

    async def _get_body(self, full: str, options: dict | None):  # noqa: ANN202 - (GetResult, Bytes)
        """One GET with its body: a body that breaks off fails (and is retried) as a whole."""
        result = await obstore.get_async(self._obs, full, options=options)
        return result, await result.bytes_async()

    async def _get_whole(self, key: str, full: str):  # noqa: ANN202 - (GetResult, Bytes)
        try:
            return await self._obs_call(lambda: self._get_body(full, None), f"GET {full}")
        except Exception as exc:  # noqa: BLE001
            await self._raise(exc, "download", key)

    # --- writes ----------------------------------------------------------
    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
                  content_type: str | None = None) -> ObjectInfo:
        meta = checked_metadata(metadata)
        full = self._key(key)
        if not obstore_can_spell(full):
            headers = self._meta_headers(meta)
            if content_type:
                headers["content-type"] = content_type
            resp = await self._api_call("PUT", full, "write", key, headers=headers, body=bytes(data))
            etag = resp.headers.get("etag")
        else:
            try:
                result = await self._obs_call(
                    lambda: obstore.put_async(self._obs, full, data, attributes=obstore_attributes(meta, content_type),
                                              chunk_size=self.part_size, max_concurrency=self.parallel),
                    f"PUT {full}")
            except Exception as exc:  # noqa: BLE001
                await self._raise(exc, "write", key)
            etag = result["e_tag"]
        self._bucket_known = True
        self._count("put", up=len(data))
        return ObjectInfo(key, len(data), time.time(), etag, meta, content_type)

    async def put_file(self, key: str, path: str | Path, metadata: Mapping[str, str] | None = None,
                       progress: ProgressFn | None = None, *, content_type: str | None = None) -> ObjectInfo:
        meta = checked_metadata(metadata)
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
            # multipart: obstore aborts the upload when a part fails, so no object appears;
            # a retry starts a new upload from the first byte
            source = ProgressReader(f, progress)
            before = {up.upload_id async for up in self.list_uploads(key) if up.key == key}

            async def upload() -> dict:
                source.rewind()
                return await obstore.put_async(self._obs, full, source,
                                               attributes=obstore_attributes(meta, content_type),
                                               use_multipart=True, chunk_size=self.part_size,
                                               max_concurrency=self.parallel)

            try:
                result = await self._obs_call(upload, f"PUT {full} (multipart)")
            except BaseException as exc:
                # interrupted (Ctrl-C, SIGTERM) or failed: obstore leaves a cancelled upload
                # behind; abort the ones of this key that began while this put ran
                await self._abort_new_uploads(key, before)
                if not isinstance(exc, Exception):
                    raise
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

    async def _abort_new_uploads(self, key: str, before: set[str]) -> None:
        """Abort the uploads of exactly `key` that are not in `before` (a put that did
        not finish began them). A second writer of the same key starting in the same
        moment would lose its upload too: it sees its completion fail, loudly."""
        try:
            async with asyncio.timeout(ABORT_WITHIN):
                async for up in self.list_uploads(key):
                    if up.key == key and up.upload_id not in before:
                        await self.abort_multipart(key, up.upload_id)
                        log.info("aborted the unfinished upload of %s", self._where(key))
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - the put's own error matters more
            log.warning("upload of %s did not finish and its parts could not be freed (%s): "
                        "`pailfs uploads s3://%s/%s --abort` frees them", self._where(key),
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.bucket, self._full(key))

    async def delete(self, key: str) -> None:
        full = self._key(key)
        if obstore_can_spell(full):
            try:
                await self._obs_call(lambda: obstore.delete_async(self._obs, full), f"DELETE {full}")
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
                await self._obs_call(lambda: obstore.copy_async(self._obs, full_src, full_dst), f"COPY {full_src}")
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
            headers.update(self._meta_headers(checked_metadata(metadata)))
            if content_type:  # REPLACE replaces the content type too
                headers["content-type"] = content_type
        try:
            resp = await self._api.request("PUT", self.bucket, full_dst, headers=headers)
        except (BadCredentials, CredentialsExpired) as exc:
            raise self._credential_error(exc, "copy", src) from None
        except REQUEST_ERRORS as exc:
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
        headers = self._meta_headers(checked_metadata(metadata))
        if content_type:
            headers["content-type"] = content_type
        resp = await self._api_call("POST", self._key(key), "upload", key, query={"uploads": ""}, headers=headers)
        self._count("create_multipart")
        upload_id = xml_text(resp.content, "UploadId")
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
        return xml_text(resp.content, "ETag")

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

    async def list_uploads(self, prefix: str = "") -> AsyncIterator[Upload]:
        root = self._full(prefix)
        query = {"uploads": "", "prefix": root}
        while True:
            resp = await self._api_call("GET", "", "list uploads under", prefix, query=query)
            self._count("list_uploads", down=len(resp.content))
            tree = ET.fromstring(resp.content)
            for up in tree.iter():
                if up.tag.rsplit("}", 1)[-1] != "Upload":
                    continue
                fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in up}
                key, upload_id = fields.get("Key", ""), fields.get("UploadId", "")
                if key.startswith(root) and upload_id:
                    yield Upload(key[len(self.root):], upload_id, iso_date(fields.get("Initiated")) or 0.0)
            if (find_text(tree, "IsTruncated") or "").lower() != "true":
                return
            query = {"uploads": "", "prefix": root, "key-marker": find_text(tree, "NextKeyMarker") or "",
                     "upload-id-marker": find_text(tree, "NextUploadIdMarker") or ""}

    async def abort_stale_uploads(self, older_than: float, prefix: str = "",
                                  select: Callable[[str], bool] | None = None) -> int:
        """Abort the multipart uploads under `prefix` begun more than `older_than` seconds
        ago (and whose key passes `select`); their parts are freed. Returns how many."""
        cutoff = time.time() - older_than
        stale = [up async for up in self.list_uploads(prefix)
                 if up.initiated and up.initiated <= cutoff and (select is None or select(up.key))]
        for up in stale:
            # the listed key as it is: the upload id names the upload, whatever its key spells
            await self._api_call("DELETE", self.root + up.key, "abort upload of", up.key,
                                 query={"uploadId": up.upload_id}, ok=(200, 204, 404))
            self._count("abort_multipart")
            log.info("aborted a stale multipart upload of %s", self._where(up.key))
        return len(stale)

    async def delete_bucket(self) -> None:
        resp = await self._api_call("DELETE", "", "delete bucket", None, ok=(200, 204, 409), probe=False)
        if resp.status_code == 409:
            raise StoreError(f"delete bucket s3://{self.bucket}: it is not empty "
                             f"(remove its objects first: pailfs rm -r s3://{self.bucket})")

    async def close(self) -> None:
        await self._api.aclose()
