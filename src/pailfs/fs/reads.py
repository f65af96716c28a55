"""The read path: object bytes for inodes, from memory, the disk cache or the store.

Objects up to `small_object_size` are fetched whole into the memory cache on
their first read (one GET, however the kernel splits the reads); larger ones
go through one Prefetcher per inode (sequential readahead of aligned ranged
GETs). Both share one memory budget, `max_buffer_memory`, and both go through
the disk cache when `use_cache=` is set.

Threads: `cached()` runs in the front end's reader thread and only reads the
memory cache and completed futures; everything else runs on the loop thread.
"""

from __future__ import annotations

import logging

from pailfs.cache.data import MemoryCache, MiB, Prefetcher
from pailfs.cache.disk import DiskCache
from pailfs.config import Options
from pailfs.fs.nodes import Node
from pailfs.store.base import ObjectStore

log = logging.getLogger(__name__)

MAX_READERS = 64  # prefetchers kept (one per inode being read), least recently used dropped


class ObjectReader:
    def __init__(self, store: ObjectStore, options: Options) -> None:
        self.store = store
        self.options = options
        self.small_max = options.small_object_size * MiB
        self.memory = MemoryCache(options.max_buffer_memory * MiB, reclaim=self._reclaim_readahead)
        # what the kernel may request ahead must fit the read memory, since the chunk
        # of every READ in flight is fetched whatever the budget says
        self.kernel_readahead = min(options.kernel_readahead, options.max_buffer_memory // 4) * MiB
        self._prefetchers: dict[int, Prefetcher] = {}
        self.disk_cache = (DiskCache(options.use_cache, options.max_cache_size * MiB)
                           if options.use_cache else None)

    # ------------------------------------------------------------------ hot path
    def cached(self, ino: int, offset: int, size: int) -> bytes | memoryview | None:
        data = self.memory.get(ino)
        if data is not None:
            return data[offset:offset + size]
        pf = self._prefetchers.get(ino)
        if pf is not None:
            return pf.cached(offset, size)
        return None

    # ------------------------------------------------------------------ cold path
    async def read(self, node: Node, offset: int, size: int) -> bytes | memoryview:
        # An inode evicted from the stat cache is read without a HEAD first: the kernel
        # still trusts its attributes (and asks again when its timeouts end), so the
        # bytes of the listed version are what it expects.
        if offset >= node.size:
            return b""
        if node.size <= self.small_max:
            data = self.memory.get(node.ino)
            if data is None:
                data = await self._fetch_whole(node)
            return data[offset:offset + size]
        return await self._prefetcher(node).read(offset, size)

    def _prefetcher(self, node: Node) -> Prefetcher:
        pf = self._prefetchers.pop(node.ino, None)
        if pf is None:
            key, etag = node.key(), node.etag
            pf = Prefetcher(lambda start, end: self._get_range(key, etag, start, end), node.size,
                            chunk_size=MiB, max_window=self.options.readahead_max * MiB,
                            parallel=self.options.parallel_count,
                            group=8,  # one ranged GET covers up to 8 chunks
                            slack=self.kernel_readahead, budget=self.memory)
            if len(self._prefetchers) >= MAX_READERS:  # bound the bookkeeping: drop the oldest reader
                self._prefetchers.pop(next(iter(self._prefetchers))).close()
        self._prefetchers[node.ino] = pf  # most recently used last
        return pf

    def _reclaim_readahead(self, size: int) -> None:
        """Read memory is short: close idle prefetchers (no fetch in flight), least
        recently used first, until size bytes fit."""
        for ino, pf in list(self._prefetchers.items()):
            if self.memory.fits(size):
                return
            if pf.idle():
                del self._prefetchers[ino]
                pf.close()

    async def _fetch_whole(self, node: Node) -> bytes:
        key, etag = node.key(), node.etag
        data = None
        if self.disk_cache is not None:
            data = await self.disk_cache.get(key, etag)
        if data is None:
            self.memory.misses += 1
            # a range one byte past the listed size: one request that still shows growth
            data = await self.store.get(key, 0, node.size + 1)
            if len(data) > node.size:
                data = await self.store.get(key)  # changed since it was listed
            if self.disk_cache is not None:
                self.disk_cache.put(key, etag, data)
        if len(data) != node.size:
            node.size = len(data)
        self.memory.put(node.ino, data)
        return data

    async def _get_range(self, key: str, etag: str | None, start: int, end: int) -> memoryview:
        if self.disk_cache is not None:
            cached = await self.disk_cache.get_range(key, etag, start, end)
            if cached is not None:
                return memoryview(cached)
        data = await self.store.get_buffer(key, start, end)
        if self.disk_cache is not None:
            self.disk_cache.put_range(key, etag, start, data)
        return data

    # ------------------------------------------------------------------ invalidation
    def remember(self, ino: int, data: bytes) -> None:
        """Bytes the mount itself just wrote (a symlink's target)."""
        self.memory.put(ino, data)

    def discard(self, ino: int) -> None:
        """Forget every cached byte of an inode (changed in the store, or dropped)."""
        self.memory.discard(ino)
        pf = self._prefetchers.pop(ino, None)
        if pf is not None:
            pf.close()

    def stats(self) -> dict:
        return {"memory_bytes": self.memory.used, "readahead_bytes": self.memory.reserved,
                "hits": self.memory.hits, "misses": self.memory.misses,
                **(self.disk_cache.stats() if self.disk_cache is not None else {})}

    def close(self) -> None:
        for pf in self._prefetchers.values():
            pf.close()
        self._prefetchers.clear()
        if self.disk_cache is not None:
            self.disk_cache.close()
