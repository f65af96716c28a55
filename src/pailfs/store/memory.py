"""MemoryStore: a bucket in a dict, with the S3 semantics the contract suite checks.

For fast tests of the layers above the store (the file system core, the
Checkpointer) where no server is needed: keys are a flat namespace (`a` and
`a/b` may both exist, as in S3), a key ending in '/' is a directory marker,
LIST is lexicographic with '/' roll-up, ETags are quoted MD5s, and every
write replaces an object whole. `fail_next(op, error)` makes the next call of
an operation raise, for tests of failure paths. The same contract suite runs
against it as against SeaweedFS and the local store, so it cannot drift from
what a real server does.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Mapping

from pailfs.errors import NotFound, PreconditionFailed, StoreError
from pailfs.store.base import Listing, ObjectInfo, ObjectStore, ProgressFn, Upload

_PAGE = 1000


class MemoryStore(ObjectStore):
    def __init__(self, name: str = "memory") -> None:
        super().__init__()
        self.url = f"memory://{name}"
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._keys: list[str] = []  # sorted
        # upload id -> (key, metadata, content type, started, {part number: bytes})
        self._uploads: dict[str, tuple[str, Mapping[str, str] | None, str | None, float, dict[int, bytes]]] = {}
        self._failures: collections.defaultdict[str, collections.deque[BaseException]] = \
            collections.defaultdict(collections.deque)

    # --- failure injection ----------------------------------------------------
    def fail_next(self, op: str, error: BaseException, times: int = 1) -> None:
        """The next `times` calls of op ('head', 'get', 'list', 'put', 'delete', 'copy')
        raise error instead of running."""
        self._failures[op].extend([error] * times)

    def _enter(self, op: str) -> None:
        pending = self._failures.get(op)
        if pending:
            self.stats.errors += 1
            raise pending.popleft()
        self._count(op)

    # --- plumbing --------------------------------------------------------------
    def _info(self, key: str) -> ObjectInfo:
        try:
            return self._objects[key][1]
        except KeyError:
            self.stats.errors += 1
            raise NotFound(f"{self.url}/{key}: no such key") from None

    def _store(self, key: str, data: bytes, metadata: Mapping[str, str] | None, content_type: str | None,
               etag: str | None = None) -> ObjectInfo:
        if not key or key.startswith("/") or len(key.encode("utf-8", "surrogateescape")) > 1024:
            raise StoreError(f"put {self.url}/{key}: invalid key")
        info = ObjectInfo(key, len(data), time.time(), etag or f'"{hashlib.md5(data).hexdigest()}"',
                          {name.lower(): value for name, value in (metadata or {}).items()},  # HTTP headers
                          content_type or "application/octet-stream")
        if key not in self._objects:
            bisect.insort(self._keys, key)
        self._objects[key] = (bytes(data), info)
        return info

    # --- reads -------------------------------------------------------------------
    async def head(self, key: str) -> ObjectInfo:
        self._enter("head")
        return self._info(key)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        self._enter("get")
        info = self._info(key)
        data = self._objects[key][0]
        data = data[start or 0:end if end is not None else info.size]
        self.stats.bytes_down += len(data)
        return data

    async def get_buffer(self, key: str, start: int | None = None, end: int | None = None, *,
                         if_match: str | None = None) -> memoryview:
        if if_match is not None and self._info(key).etag != if_match:
            self._enter("get")
            raise PreconditionFailed(f"read {self.url}/{key}: the object changed (its ETag is no longer {if_match})")
        return memoryview(await self.get(key, start, end))

    async def list_pages(self, prefix: str = "", delimiter: str | None = None,
                         page_size: int = _PAGE) -> AsyncIterator[Listing]:
        self._enter("list")
        size = max(1, min(page_size, _PAGE))
        page = Listing()
        count = pages = 0
        last_prefix = None
        for key in self._keys[bisect.bisect_left(self._keys, prefix):]:
            if not key.startswith(prefix):
                break
            rest = key[len(prefix):]
            if delimiter and delimiter in rest and key != prefix:
                common = prefix + rest[:rest.index(delimiter) + len(delimiter)]
                if common == last_prefix:
                    continue
                last_prefix = common
                page.prefixes.append(common)
            else:
                info = self._objects[key][1]
                page.objects.append(info._replace(metadata=None, content_type=None))  # LIST carries neither
            count += 1
            if count == size:
                yield page
                page, count, pages = Listing(), 0, pages + 1
        if count or not pages:  # the last page; an empty listing is one empty page
            yield page

    # --- writes ----------------------------------------------------------------
    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
                  content_type: str | None = None) -> ObjectInfo:
        self._enter("put")
        self.stats.bytes_up += len(data)
        return self._store(key, data, metadata, content_type)

    async def put_file(self, key: str, path: str | Path, metadata: Mapping[str, str] | None = None,
                       progress: ProgressFn | None = None, *, content_type: str | None = None) -> ObjectInfo:
        data = Path(path).read_bytes()
        info = await self.put(key, data, metadata, content_type=content_type)
        if progress:
            progress(len(data))
        return info

    async def delete(self, key: str) -> None:
        self._enter("delete")
        if self._objects.pop(key, None) is not None:
            self._keys.pop(bisect.bisect_left(self._keys, key))

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None, *,
                   content_type: str | None = None) -> None:
        self._enter("copy")
        data, info = self._objects.get(src, (None, None))
        if data is None or info is None:
            self.stats.errors += 1
            raise NotFound(f"copy {self.url}/{src}: no such key")
        if metadata is None:  # a copy keeps the source's metadata and type
            self._store(dst, data, info.metadata, info.content_type, info.etag)
        else:
            self._store(dst, data, metadata, content_type)

    # --- multipart uploads ---------------------------------------------------
    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None, *,
                               content_type: str | None = None) -> str:
        self._enter("create_multipart")
        upload_id = uuid.uuid4().hex
        self._uploads[upload_id] = (key, metadata, content_type, time.time(), {})
        return upload_id

    def _upload(self, key: str, upload_id: str) -> dict[int, bytes]:
        upload = self._uploads.get(upload_id)
        if upload is None or upload[0] != key:
            raise NotFound(f"upload {self.url}/{key}: no such upload")
        return upload[4]

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        self._enter("put_part")
        parts = self._upload(key, upload_id)
        if not 1 <= number <= 10000:
            raise StoreError(f"upload {self.url}/{key}: part number {number} is out of range")
        parts[number] = bytes(data)
        self.stats.bytes_up += len(data)
        return f'"{hashlib.md5(data).hexdigest()}"'

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str | None:
        self._enter("complete_multipart")
        uploaded = self._upload(key, upload_id)
        numbers = [n for n, _ in parts]
        if not parts or numbers != sorted(set(numbers)) or any(
                n not in uploaded or etag != f'"{hashlib.md5(uploaded[n]).hexdigest()}"' for n, etag in parts):
            raise StoreError(f"upload {self.url}/{key}: the parts named are not the parts uploaded")
        if any(len(uploaded[n]) < 5 * 1024 * 1024 for n in numbers[:-1]):
            raise StoreError(f"upload {self.url}/{key}: a part but the last is smaller than 5 MiB")
        _, metadata, content_type, _, _ = self._uploads.pop(upload_id)
        digests = b"".join(hashlib.md5(uploaded[n]).digest() for n in numbers)
        etag = f'"{hashlib.md5(digests).hexdigest()}-{len(numbers)}"'
        return self._store(key, b"".join(uploaded[n] for n in numbers), metadata, content_type, etag).etag

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._enter("abort_multipart")
        self._uploads.pop(upload_id, None)

    async def list_uploads(self, prefix: str = "") -> AsyncIterator[Upload]:
        self._enter("list_uploads")
        for uid, (key, _, _, started, _) in sorted(self._uploads.items(), key=lambda item: item[1][0]):
            if key.startswith(prefix):
                yield Upload(key, uid, started)

    async def create_bucket(self) -> None:
        """A memory store is its own bucket, there from the start."""
        raise StoreError(f"create bucket {self.url}: it already exists")
