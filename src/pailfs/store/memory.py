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
from pathlib import Path
from typing import AsyncIterator, Mapping

from pailfs.errors import NotFound, StoreError
from pailfs.store.base import Listing, ObjectInfo, ObjectStore, ProgressFn

_PAGE = 1000


class MemoryStore(ObjectStore):
    def __init__(self, name: str = "memory") -> None:
        super().__init__()
        self.url = f"memory://{name}"
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._keys: list[str] = []  # sorted
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

    def _store(self, key: str, data: bytes, metadata: Mapping[str, str] | None) -> ObjectInfo:
        if not key or key.startswith("/") or len(key.encode("utf-8", "surrogateescape")) > 1024:
            raise StoreError(f"put {self.url}/{key}: invalid key")
        info = ObjectInfo(key, len(data), time.time(), f'"{hashlib.md5(data).hexdigest()}"',
                          {name.lower(): value for name, value in (metadata or {}).items()})  # HTTP headers
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
                page.objects.append(info._replace(metadata=None))  # LIST carries no user metadata
            count += 1
            if count == size:
                yield page
                page, count, pages = Listing(), 0, pages + 1
        if count or not pages:  # the last page; an empty listing is one empty page
            yield page

    async def get_file(self, key: str, path: str | Path, progress: ProgressFn | None = None) -> ObjectInfo:
        info = await self.head(key)
        data = await self.get(key)
        Path(path).write_bytes(data)
        if progress:
            progress(len(data))
        return info

    # --- writes ----------------------------------------------------------------
    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        self._enter("put")
        self.stats.bytes_up += len(data)
        return self._store(key, data, metadata)

    async def put_file(self, key: str, path: str | Path, metadata: Mapping[str, str] | None = None,
                       progress: ProgressFn | None = None) -> ObjectInfo:
        data = Path(path).read_bytes()
        info = await self.put(key, data, metadata)
        if progress:
            progress(len(data))
        return info

    async def delete(self, key: str) -> None:
        self._enter("delete")
        if self._objects.pop(key, None) is not None:
            self._keys.pop(bisect.bisect_left(self._keys, key))

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> None:
        self._enter("copy")
        data, info = self._objects.get(src, (None, None))
        if data is None:
            self.stats.errors += 1
            raise NotFound(f"copy {self.url}/{src}: no such key")
        self._store(dst, data, info.metadata if metadata is None else metadata)  # type: ignore[union-attr]

    async def create_bucket(self) -> None:
        """A memory store is its own bucket, there from the start."""
        raise StoreError(f"create bucket {self.url}: it already exists")
