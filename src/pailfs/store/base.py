"""The object-store contract every store implements (S3, local directory, wrappers).

Keys are relative to the store's root prefix and use '/' as separator. A key
ending in '/' is a directory marker object. All methods are coroutines on the
caller's event loop; implementations raise only pailfs.errors.StoreError and
its subclasses (NotFound, NoSuchBucket, AccessDenied, StoreUnavailable).
"""

from __future__ import annotations

import abc
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Mapping, NamedTuple

from pailfs.errors import NotSupported, PreconditionFailed

# Called with the number of bytes just transferred (for progress bars).
ProgressFn = Callable[[int], None]


class ObjectInfo(NamedTuple):
    """What a HEAD or a LIST entry says about one object (a tuple: a LIST page
    makes a thousand of them, and a tuple is the cheapest immutable record)."""

    key: str
    size: int
    mtime: float  # seconds since the epoch
    etag: str | None = None
    # user metadata (x-amz-meta-*, lower-case names without the prefix);
    # None when the source does not carry it (LIST results)
    metadata: Mapping[str, str] | None = None
    content_type: str | None = None  # from HEAD (None: not known, e.g. LIST results)

    @property
    def is_dir_marker(self) -> bool:
        return self.key.endswith("/")


class Upload(NamedTuple):
    """An incomplete multipart upload: parts are stored (and billed), no object yet."""

    key: str
    upload_id: str
    initiated: float  # seconds since the epoch


@dataclass(slots=True)
class Listing:
    """One page (or all pages) of a LIST: objects, and common prefixes ending in '/'."""

    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StoreStats:
    """Request counters of one store, shown by `pailfs stats`."""

    requests: Counter = field(default_factory=Counter)
    bytes_down: int = 0
    bytes_up: int = 0
    errors: int = 0

    def as_dict(self) -> dict:
        return {"requests": dict(self.requests), "bytes_down": self.bytes_down,
                "bytes_up": self.bytes_up, "errors": self.errors}


class ObjectStore(abc.ABC):
    """A bucket (or a prefix of one) seen as a flat key space."""

    #: human-readable location without secrets, e.g. "s3://bucket/prefix"
    url: str

    def __init__(self) -> None:
        self.stats = StoreStats()

    # --- reads -----------------------------------------------------------
    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo:
        """Attributes of one object, with user metadata. NotFound if absent."""

    @abc.abstractmethod
    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or bytes [start, end) of it. A range past the end is clipped."""

    async def get_buffer(self, key: str, start: int | None = None, end: int | None = None, *,
                         if_match: str | None = None) -> memoryview:
        """get() as a read-only buffer: a store that receives into its own buffer hands
        it over instead of copying it into bytes (the read path of large files).
        With if_match (an ETag), PreconditionFailed unless the object still has it:
        the ranges of one read never come from two versions."""
        if if_match is not None and (await self.head(key)).etag != if_match:
            raise PreconditionFailed(f"read {self.url}/{key}: the object changed (its ETag is no longer {if_match})")
        return memoryview(await self.get(key, start, end))

    @abc.abstractmethod
    def list_pages(self, prefix: str = "", delimiter: str | None = None,
                   page_size: int = 1000) -> AsyncIterator[Listing]:
        """LIST under prefix, page by page (keys in lexicographic order), at most
        page_size entries a page (page_size=1: "is there anything under prefix?").

        With delimiter '/', keys below the next '/' are rolled up into prefixes
        (each ending in '/'), and a directory marker 'prefix/' itself is returned
        as an object. Without a delimiter every key under the prefix is listed.
        """

    async def list(self, prefix: str = "", delimiter: str | None = None) -> Listing:
        """All pages of list_pages, joined."""
        out = Listing()
        async for page in self.list_pages(prefix, delimiter):
            out.objects.extend(page.objects)
            out.prefixes.extend(page.prefixes)
        return out

    async def get_file(self, key: str, path: str | Path, progress: ProgressFn | None = None) -> ObjectInfo:
        """Download to a local file (parallel ranged GETs for large objects)."""
        info = await self.head(key)
        data = await self.get(key)
        Path(path).write_bytes(data)
        if progress:
            progress(len(data))
        return info

    # --- writes ----------------------------------------------------------
    @abc.abstractmethod
    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
                  content_type: str | None = None) -> ObjectInfo:
        """Create or replace an object atomically (content_type None: the store's default)."""

    @abc.abstractmethod
    async def put_file(self, key: str, path: str | Path, metadata: Mapping[str, str] | None = None,
                       progress: ProgressFn | None = None, *, content_type: str | None = None) -> ObjectInfo:
        """Upload a local file; multipart above multipart_size with parallel_count parts
        in flight. The object appears only when complete; a failure leaves no object."""

    # --- multipart uploads, part by part ---------------------------------
    # For a writer that sends parts while it is still producing them. Nothing is
    # visible under the key until complete_multipart; an upload neither completed
    # nor aborted (the writer died) holds its parts until abort_stale_uploads or the
    # bucket's lifecycle rules remove it. Parts are numbered from 1; every part but
    # the last must be at least 5 MiB (S3's rule); uploading a number again replaces it.
    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None, *,
                               content_type: str | None = None) -> str:
        """Start a multipart upload; returns its upload id."""
        raise NotSupported(f"{self.url}: this store has no multipart uploads")

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part `number`; returns its ETag (needed to complete)."""
        raise NotSupported(f"{self.url}: this store has no multipart uploads")

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str | None:
        """Join the parts [(number, etag), ...] (ascending) into the object, atomically;
        returns the object's ETag."""
        raise NotSupported(f"{self.url}: this store has no multipart uploads")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts; an unknown upload id is not an error."""
        raise NotSupported(f"{self.url}: this store has no multipart uploads")

    async def list_uploads(self, prefix: str = "") -> AsyncIterator[Upload]:
        """The incomplete multipart uploads of keys under prefix (in no promised
        order): a writer still at work, or one that died before it completed or aborted."""
        return
        yield  # an async generator that yields nothing: a store without multipart uploads

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete one object; deleting an absent key is not an error."""

    async def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            await self.delete(key)

    @abc.abstractmethod
    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None, *,
                   content_type: str | None = None) -> None:
        """Server-side copy; with metadata, the copy gets that metadata (and content_type)
        instead of the source's."""

    # --- upkeep ----------------------------------------------------------
    async def abort_stale_uploads(self, older_than: float, prefix: str = "",
                                  select: Callable[[str], bool] | None = None) -> int:
        """Abandon uploads under `prefix` that began more than `older_than` seconds ago and
        never completed (S3: multipart uploads whose key passes `select`; a local
        directory: its temp files), freeing what they hold. Returns how many.
        A store without resumable uploads has none."""
        cutoff = time.time() - older_than
        stale = [up async for up in self.list_uploads(prefix)
                 if up.initiated and up.initiated <= cutoff and (select is None or select(up.key))]
        for up in stale:
            await self.abort_multipart(up.key, up.upload_id)
        return len(stale)

    async def create_bucket(self) -> None:
        """Create the bucket (directory) this store is on; StoreError if it exists."""
        raise NotSupported(f"{self.url}: this store cannot create buckets")

    # --- lifecycle -------------------------------------------------------
    async def check(self) -> None:
        """Fail fast with NoSuchBucket / AccessDenied / StoreUnavailable (one cheap LIST)."""
        async for _ in self.list_pages("", "/"):
            break

    async def close(self) -> None:
        return None

    def _count(self, kind: str, down: int = 0, up: int = 0) -> None:
        self.stats.requests[kind] += 1
        self.stats.bytes_down += down
        self.stats.bytes_up += up
