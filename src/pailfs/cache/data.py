"""Data caches: whole small objects in memory, and a sequential prefetcher for large ones.

Both run on the file system's loop; their `cached()` methods are called from the
FUSE reader thread and only read completed futures / immutable bytes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Awaitable, Callable, Hashable

MiB = 1024 * 1024

FetchRange = Callable[[int, int], Awaitable[memoryview]]  # (start, end) -> bytes [start, end)


class MemoryCache:
    """Whole objects by key, LRU, bounded in bytes together with the readahead
    buffers of every Prefetcher (`reserve`/`release`): one bound for all read
    memory (max_buffer_memory). Readahead displaces cached small objects; a
    reader's own chunks are always granted. Objects put `pinned` (fetched ahead of
    their reader) are not evicted until `unpin` or `discard`: dropping them would
    fetch their bytes twice; their owner bounds how many it pins."""

    def __init__(self, max_bytes: int, reclaim: Callable[[int], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.used = 0          # bytes of cached objects
        self.reserved = 0      # bytes held by prefetchers
        self.pinned = 0        # bytes of pinned objects (part of used)
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._pins: set[Hashable] = set()
        self.hits = 0
        self.misses = 0
        # called with a size when readahead finds no room: frees other readers' buffers
        self.reclaim = reclaim

    def get(self, key: Hashable) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self.hits += 1
        return data

    def put(self, key: Hashable, data: bytes, *, pinned: bool = False) -> None:
        if len(data) > self.max_bytes:
            return
        self.discard(key)
        self._items[key] = data
        self.used += len(data)
        if pinned:
            self._pins.add(key)
            self.pinned += len(data)
        self._shrink(self.max_bytes)

    def unpin(self, key: Hashable) -> None:
        if key in self._pins:
            self._pins.discard(key)
            self.pinned -= len(self._items[key])

    def reserve(self, size: int, *, force: bool = False) -> bool:
        """Take size bytes for readahead, evicting cached objects if need be; False if
        even that leaves no room (unless force: what a reader waits for)."""
        if not force:
            if self.reclaim is not None and not self.fits(size):
                self.reclaim(size)
            self._shrink(self.max_bytes - size)
            if not self.fits(size):
                return False
        self.reserved += size
        return True

    def fits(self, size: int) -> bool:
        return self.used + self.reserved + size <= self.max_bytes

    def release(self, size: int) -> None:
        self.reserved -= size

    def _shrink(self, limit: int) -> None:
        while self.used > self.pinned and self.used + self.reserved > limit:
            key, victim = self._items.popitem(last=False)
            if key in self._pins:
                self._items[key] = victim  # to the young end: evict around it
                continue
            self.used -= len(victim)

    def discard(self, key: Hashable) -> None:
        self.unpin(key)
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= len(old)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items


class Prefetcher:
    """Reads one large object in chunks, with a readahead window that doubles on
    sequential reads (up to max_window bytes) and resets on a seek.

    A first read from the start of at least half a chunk (the kernel's large
    READs of a sequential reader) starts with `first_window` chunks at once.
    The kernel's own readahead sends several READs at once, a little out of
    order: a read within `slack` bytes of the furthest one so far still counts
    as sequential. Missing chunks are fetched by ranged GETs of up to `group`
    chunks, aligned to `group`; at most `parallel` GETs are in flight for this
    object. Chunks more than `slack` behind the reader are dropped, so memory
    stays within the window, and every chunk is accounted in `budget` (readahead
    stops where the shared read memory is full). Chunks and the reads served from them are views of
    the fetched buffers: the bytes are copied once, by the kernel, into the page
    cache.
    """

    def __init__(self, fetch: FetchRange, size: int, chunk_size: int = MiB, max_window: int = 64 * MiB,
                 parallel: int = 20, group: int = 8, slack: int = 4 * MiB, *, budget: MemoryCache,
                 first_window: int = 1) -> None:
        self.fetch = fetch
        self.budget = budget
        self.size = size
        self.chunk_size = chunk_size
        self.max_window_chunks = max(1, max_window // chunk_size)
        self.group = group
        self.slack = max(slack, 4 * chunk_size)
        self._sem = asyncio.Semaphore(parallel)
        self.chunks: dict[int, asyncio.Future[memoryview]] = {}
        self.window = 1
        self.first_window = max(1, min(first_window, self.max_window_chunks))
        self.next_offset = 0  # end of the furthest read so far
        self.reads = 0

    def cached(self, offset: int, size: int) -> memoryview | bytes | None:
        """The bytes if every chunk they need is already here (reader thread)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        cs = self.chunk_size
        pieces = []
        for idx in range(offset // cs, (end - 1) // cs + 1):
            fut = self.chunks.get(idx)
            if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
                return None
            pieces.append(fut.result())
        return _slice(pieces, offset - (offset // cs) * cs, end - offset)

    async def read(self, offset: int, size: int) -> memoryview | bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        if self.reads == 0 and offset == 0 and size >= cs // 2:
            # a large first read from the start is a sequential reader: start with the
            # whole first window in parallel ranges, not one that doubles a round trip at a time
            self.window = self.first_window
        elif abs(offset - self.next_offset) <= self.slack:
            self.window = min(self.window * 2, self.max_window_chunks)
        else:
            self.window = 1
        self.reads += 1
        self.next_offset = max(self.next_offset, end) if self.window > 1 else end
        last_chunk = (self.size - 1) // cs
        self._schedule(first, last, min(last + self.window, last_chunk))
        self._drop_before(first - self.slack // cs)
        needed = [self.chunks[i] for i in range(first, last + 1)]
        try:
            pieces = [await fut for fut in needed]
        except BaseException:
            for i in range(first, last + 1):  # let the next read retry
                fut = self.chunks.get(i)
                if fut is not None and fut.done() and (fut.cancelled() or fut.exception() is not None):
                    self._drop(i)
            raise
        return _slice(pieces, offset - first * cs, end - offset)

    def _schedule(self, first: int, needed: int, last: int) -> None:
        """Fetch the missing chunks of [first, last]. The reader's own chunks
        [first, needed] go in a GET of their own, so the first bytes do not wait for
        the readahead; beyond them, whole aligned groups, so out-of-order reads still
        make full-size GETs."""
        loop = asyncio.get_running_loop()
        if last > needed:
            last = min(last - last % self.group + self.group - 1, (self.size - 1) // self.chunk_size)
        run: list[int] = []
        for idx in range(first, last + 1):
            if idx in self.chunks:
                self._start(run)
                continue
            if not self.budget.reserve(self.chunk_size, force=idx <= needed):
                # read memory is full: give up what is behind the reader, else read ahead less
                self._drop_before(first)
                if not self.budget.reserve(self.chunk_size):
                    break
            self.chunks[idx] = loop.create_future()
            run.append(idx)
            if idx == needed or idx % self.group == self.group - 1:
                self._start(run)
        self._start(run)

    def _start(self, run: list[int]) -> None:
        if run:
            futures = [self.chunks[i] for i in run]
            asyncio.get_running_loop().create_task(self._fetch(run[0], run[-1], futures))
            run.clear()

    async def _fetch(self, first: int, last: int, futures: list[asyncio.Future[memoryview]]) -> None:
        cs = self.chunk_size
        try:
            async with self._sem:
                data = await self.fetch(first * cs, min((last + 1) * cs, self.size))
        except BaseException as exc:  # every waiter sees the failure
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: a dropped chunk must not warn
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        view = memoryview(data)
        for n, fut in enumerate(futures):
            if not fut.done():
                fut.set_result(view[n * cs:(n + 1) * cs])

    def idle(self) -> bool:
        """No fetch in flight: closing it loses only bytes already handed over or ahead."""
        return all(fut.done() for fut in self.chunks.values())

    def _drop_before(self, limit: int) -> None:
        """Drop the fetched chunks before chunk `limit` (one in flight is dropped by a
        later read, once its memory is really there to give back)."""
        for idx in [i for i, fut in self.chunks.items() if i < limit and fut.done()]:
            self._drop(idx)

    def _drop(self, idx: int) -> None:
        del self.chunks[idx]
        self.budget.release(self.chunk_size)

    def close(self) -> None:
        for fut in self.chunks.values():
            if not fut.done():
                fut.cancel()
        self.budget.release(self.chunk_size * len(self.chunks))
        self.chunks.clear()


def _slice(pieces: list[memoryview], start: int, length: int) -> memoryview | bytes:
    """bytes [start, start+length) of the concatenated pieces: a view when they lie
    in one piece, else one copy of just those bytes."""
    first = pieces[0]
    if start + length <= len(first):
        return first if start == 0 and length == len(first) else first[start:start + length]
    parts = [first[start:]]
    left = length - len(parts[0])
    for piece in pieces[1:]:
        parts.append(piece[:left])
        left -= len(parts[-1])
    return b"".join(parts)
