"""The read path: object bytes for inodes, from memory, the disk cache or the store.

Objects up to `small_object_size` are fetched whole into the memory cache on
their first read (one GET, however the kernel splits the reads); larger ones
go through one Prefetcher per inode (sequential readahead of aligned ranged
GETs). Both share one memory budget, `max_buffer_memory`, and both go through
the disk cache when `use_cache=` is set.

Reading ahead across files (`readahead_files`): once a process has read a few
files of a directory, the small files of that directory it has not read yet
are fetched before they are opened, in listing order from where the reader is
(see FilesAhead). Every whole-object fetch, ahead or asked for, is one future
per inode that later readers join, so no byte is fetched twice.

One copy: with `kernel_cache` the kernel keeps a file's pages across opens,
so a small object is dropped from the memory cache once a READ has reached its
end; if the kernel evicts the pages, the next READ fetches it again.

Threads: `cached()` runs in the front end's reader thread and only reads the
memory cache and completed futures; what it learns (an object read to its
end) goes to the loop through a deque. Everything else runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import stat
from typing import Callable

from pailfs.cache.data import MemoryCache, MiB, Prefetcher
from pailfs.cache.disk import DiskCache
from pailfs.config import Options
from pailfs.fs.nodes import Node, etag_text
from pailfs.store.base import ObjectStore

log = logging.getLogger(__name__)

MAX_READERS = 64  # prefetchers kept (one per inode being read), least recently used dropped
FIRST_WINDOW = 32  # chunks fetched at once when a large object is read from its start

# reading ahead across files
READS_BEFORE_AHEAD = 3  # distinct files of a directory read before anything is fetched ahead
AHEAD_RATIO = 0.9       # bytes fetched ahead and not read yet <= this x the bytes read there ...
CONSUMED_RATIO = 4      # ... or this x once the directory is being consumed:
CONSUMED_READS = 32     # this many files read, and at least 1/CONSUMED_SHARE of them
CONSUMED_SHARE = 50
AHEAD_FILES = 8192      # files fetched ahead and not read yet, across the mount
AHEAD_IN_FLIGHT = 64    # GETs ahead in flight, across the mount
SCANS = 64              # directories followed at once, least recently read dropped


class DirScan:
    """One directory being read: its small files in listing order, and for each
    whether it is untouched, fetched ahead (not read yet) or read."""

    UNTOUCHED, AHEAD, READ = 0, 1, 2
    __slots__ = ("files", "pos", "state", "reads", "read_bytes", "ahead_bytes", "cursor", "untouched", "evicted")

    def __init__(self, files: list[Node]) -> None:
        self.files = files
        self.pos = {node.ino: i for i, node in enumerate(files)}
        self.state = bytearray(len(files))
        self.reads = 0
        self.read_bytes = 0
        self.ahead_bytes = 0   # fetched (or in flight) ahead and not read yet
        self.cursor = 0        # where the next file to fetch ahead is looked for
        self.untouched = len(files)
        self.evicted: list[Node] = []  # read before and read again from the store: the kernel evicted them

    def mark_read(self, i: int) -> bool:
        """File i was read; True if it had been fetched ahead."""
        was = self.state[i]
        if was == self.READ:
            return False
        node = self.files[i]
        if was == self.AHEAD:
            self.ahead_bytes -= node.size
        else:
            self.untouched -= 1
        self.state[i] = self.READ
        self.reads += 1
        self.read_bytes += node.size
        if i >= self.cursor:  # a reader ahead of the window: the window moves to it
            self.cursor = i + 1
        return was == self.AHEAD

    def unmark(self, i: int) -> None:
        """File i's bytes fetched ahead are gone (failed, changed, dropped)."""
        if self.state[i] == self.AHEAD:
            self.state[i] = self.UNTOUCHED
            self.ahead_bytes -= self.files[i].size
            self.untouched += 1


class ObjectReader:
    def __init__(self, store: ObjectStore, options: Options) -> None:
        self.store = store
        self.options = options
        self.small_max = options.small_object_size * MiB
        self.memory = MemoryCache(options.max_buffer_memory * MiB, reclaim=self._reclaim_readahead)
        # what the kernel may request ahead must fit the read memory, since the chunk
        # of every READ in flight is fetched whatever the budget says
        self.kernel_readahead = min(options.kernel_readahead, options.max_buffer_memory // 4) * MiB
        # ranged GETs carry If-Match: the version read so far (off if the store answers
        # 412 to the ETag it lists itself)
        self.conditional = True
        self._served: set[int] = set()  # large files some read was answered for (handed_out)
        self._prefetchers: dict[int, Prefetcher] = {}
        self.disk_cache = (DiskCache(options.use_cache, options.max_cache_size * MiB)
                           if options.use_cache else None)
        # the kernel keeps pages across opens: a small object read to its end lives there
        self.one_copy = bool(options.kernel_cache)
        self._whole: dict[int, asyncio.Future[bytes]] = {}  # whole-object fetches in flight
        self._read_to_end: collections.deque[int] = collections.deque()  # from the reader thread
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # reading ahead across files
        self.files_ahead = options.readahead_files
        self._ahead_max_bytes = self.memory.max_bytes // 2
        self._scans: collections.OrderedDict[int, DirScan] = collections.OrderedDict()
        self._dir_reads: dict[int, list[Node]] = {}  # directory ino -> files read before it is followed
        self._ahead: dict[int, tuple[DirScan, int, bytes | str | None]] = {}  # fetched ahead, not read:
        # ino -> (where, the ETag it was fetched for)
        self._ahead_in_flight = 0
        self.ahead_fetched = self.ahead_hits = 0
        self.ahead_fetched_bytes = 0
        self._warm_queue: collections.deque[tuple[Node, _WarmRequest]] = collections.deque()
        self._warm_workers: set[asyncio.Task] = set()
        self._warm_running = 0
        self.warmed_files = self.warmed_bytes = 0
        # small objects read to their end (or handed over) on a kernel_cache mount: the
        # kernel holds their pages, unless memory pressure made it drop them since
        self._in_kernel: set[int] = set()

    # ------------------------------------------------------------------ hot path
    def cached(self, ino: int, offset: int, size: int) -> bytes | memoryview | None:
        data = self.memory.get(ino)
        if data is not None:
            if offset + size >= len(data) and (self.one_copy or ino in self._ahead):
                self._read_to_end.append(ino)
                if not self._wake_scheduled and self._loop is not None:
                    self._wake_scheduled = True
                    try:
                        self._loop.call_soon_threadsafe(self._drain_read_to_end)
                    except RuntimeError:
                        pass  # the loop is closed: the mount is ending
            return data[offset:offset + size]
        pf = self._prefetchers.get(ino)
        if pf is not None:
            data = pf.cached(offset, size)
            if data is not None:
                self._served.add(ino)
            return data
        return None

    # ------------------------------------------------------------------ cold path
    async def read(self, node: Node, offset: int, size: int) -> bytes | memoryview:
        # An inode evicted from the stat cache is read without a HEAD first: the kernel
        # still trusts its attributes (and asks again when its timeouts end), so the
        # bytes of the listed version are what it expects.
        if offset >= node.size:
            return b""
        if node.size <= self.small_max:
            self._loop = asyncio.get_running_loop()
            self._in_kernel.discard(node.ino)  # a READ: the kernel does not hold its pages (any more)
            data = self.memory.get(node.ino)
            if data is None:
                data = await self._fetch_whole(node)
            if self.files_ahead and node.ino not in self._ahead:
                self._note_read(node)
            if offset + size >= len(data):
                self._done_reading(node.ino)
            return data[offset:offset + size]
        data = await self._prefetcher(node).read(offset, size)
        self._served.add(node.ino)
        return data

    def handed_out(self, ino: int) -> bool:
        """Some read of this large file was answered since it last changed."""
        return ino in self._served

    def _prefetcher(self, node: Node) -> Prefetcher:
        pf = self._prefetchers.pop(node.ino, None)
        if pf is None:
            key, etag = node.key(), node.etag
            version = etag_text(etag) if self.conditional else None  # every range from this version
            pf = Prefetcher(lambda start, end: self._get_range(key, etag, start, end, version), node.size,
                            chunk_size=MiB, max_window=self.options.readahead_max * MiB,
                            parallel=self.options.parallel_count,
                            group=8,  # one ranged GET covers up to 8 chunks
                            slack=self.kernel_readahead, budget=self.memory,
                            first_window=min(FIRST_WINDOW, self.options.readahead_max))
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
        """The object's bytes, joining a fetch already in flight (ahead or asked for)."""
        orphan = (node.key(), node.etag)
        data = self.memory.get(orphan)
        if data is not None:  # fetched ahead for an inode the namespace dropped since
            self.memory.discard(orphan)
            self.memory.put(node.ino, data)
            return data
        fut = self._whole.get(node.ino)
        if fut is not None:
            try:
                return await asyncio.shield(fut)
            except Exception:  # noqa: BLE001 - a failed fetch ahead: this reader asks on its own
                if self._whole.get(node.ino) is fut:
                    del self._whole[node.ino]
        fut = self._start_whole(node, ahead=False)
        return await asyncio.shield(fut)

    def _start_whole(self, node: Node, *, ahead: bool) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._whole[node.ino] = fut
        task = loop.create_task(self._load_whole(node, fut, ahead))
        task.add_done_callback(_retrieve)
        return fut

    async def _load_whole(self, node: Node, fut: asyncio.Future[bytes], ahead: bool) -> None:
        key, etag, ino = node.key(), node.etag, node.ino
        try:
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
        except BaseException as exc:
            if self._whole.get(ino) is fut:
                del self._whole[ino]
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            elif not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: a fetch ahead may have no reader
            if ahead:
                self._ahead_done(ino, ok=False)
            raise
        current = self._whole.get(ino) is fut and node.etag == etag  # not discarded meanwhile
        if current:
            del self._whole[ino]
            if len(data) != node.size:
                node.size = len(data)
            # pinned while its read-ahead still waits for a reader (a directory no longer
            # followed lets go of its files)
            self.memory.put(ino, data, pinned=ahead and ino in self._ahead)
        if ahead:
            self.ahead_fetched += 1
            self.ahead_fetched_bytes += len(data)
            self._ahead_done(ino, ok=current)
        if not fut.done():
            fut.set_result(data)

    async def _get_range(self, key: str, etag: str | None, start: int, end: int,
                         version: str | None) -> memoryview:
        if self.disk_cache is not None:
            cached = await self.disk_cache.get_range(key, etag, start, end)
            if cached is not None:
                return memoryview(cached)
        data = await self.store.get_buffer(key, start, end, if_match=version)
        if self.disk_cache is not None:
            self.disk_cache.put_range(key, etag, start, data)
        return data

    # ------------------------------------------------------------------ read to the end
    def _drain_read_to_end(self) -> None:
        self._wake_scheduled = False
        while self._read_to_end:
            self._done_reading(self._read_to_end.popleft())

    def _done_reading(self, ino: int) -> None:
        """A READ reached the end of a small object: one fetched ahead was read
        (and moves the read-ahead on), and with kernel_cache the kernel holds it
        now, not us."""
        where = self._ahead.pop(ino, None)
        if where is not None:
            scan, i, _etag = where
            if scan.mark_read(i):
                self.ahead_hits += 1
            self.memory.unpin(ino)
            self._top_up(scan)
        if self.one_copy:
            self.memory.discard(ino)
            self._in_kernel.add(ino)

    # ------------------------------------------------------------------ reading ahead across files
    def _note_read(self, node: Node) -> None:
        """A file read by a process (not fetched ahead; any READ of it, so objects
        the kernel reads in several READs count too): evidence that its directory is
        being consumed."""
        parent = node.parent
        if parent is None or parent.children is None:
            return
        scan = self._scans.get(parent.ino)
        if scan is None:
            seen = self._dir_reads.setdefault(parent.ino, [])
            if node not in seen:
                seen.append(node)
            if len(seen) < READS_BEFORE_AHEAD:
                if len(self._dir_reads) > 4 * SCANS:  # directories read a file or two: forget them
                    self._dir_reads = {parent.ino: seen}
                return
            del self._dir_reads[parent.ino]
            scan = DirScan([n for n in parent.children.values()
                            if not n.is_dir and 0 < n.size <= self.small_max])
            self._scans[parent.ino] = scan
            if len(self._scans) > SCANS:
                self._forget_scan(self._scans.popitem(last=False)[1])
        else:
            self._scans.move_to_end(parent.ino)
            seen = [node]
            i = scan.pos.get(node.ino)
            if i is None or scan.state[i] == DirScan.READ:
                # read before and asked for again, or an inode the namespace made anew (the
                # kernel forgot the old one): the kernel evicted its pages (memory pressure,
                # drop_caches). A few of those start the directory over from its current
                # listing, so a new epoch is read ahead like the first one.
                scan.evicted.append(node)
                if len(scan.evicted) < READS_BEFORE_AHEAD or scan.ahead_bytes:
                    return
                seen = scan.evicted
                scan = DirScan([n for n in parent.children.values()
                                if not n.is_dir and 0 < n.size <= self.small_max])
                self._scans[parent.ino] = scan
        for read in seen:
            i = scan.pos.get(read.ino)
            if i is not None:
                scan.mark_read(i)
        self._top_up(scan)

    def _top_up(self, scan: DirScan) -> None:
        """Fetch ahead what the evidence allows: unread bytes ahead up to AHEAD_RATIO x
        the bytes read (CONSUMED_RATIO x once the directory is being consumed), within
        the mount's limits; from the cursor on, wrapping."""
        if scan.reads < READS_BEFORE_AHEAD:
            return
        n = len(scan.files)
        consumed = scan.reads >= max(CONSUMED_READS, n // CONSUMED_SHARE)
        # never more than a multiple of what was read: when the reads stop, so does this
        allowance = (CONSUMED_RATIO if consumed else AHEAD_RATIO) * scan.read_bytes - scan.ahead_bytes
        while scan.untouched and self._ahead_in_flight < AHEAD_IN_FLIGHT and len(self._ahead) < AHEAD_FILES:
            i = scan.cursor % n
            node = scan.files[i]
            if scan.state[i] != DirScan.UNTOUCHED:
                scan.cursor = i + 1
                continue
            if node.size > allowance or self._ahead_bytes() + node.size > self._ahead_max_bytes:
                return
            scan.cursor = i + 1
            parent = node.parent
            if (node.ino in self.memory or node.ino in self._whole or node.etag is None
                    or parent is None or parent.children is None or parent.children.get(node.name) is not node):
                # cached, being fetched, or no longer in the namespace: nothing to fetch
                scan.state[i] = DirScan.READ
                scan.untouched -= 1
                continue
            scan.state[i] = DirScan.AHEAD
            scan.untouched -= 1
            scan.ahead_bytes += node.size
            allowance -= node.size
            self._ahead[node.ino] = (scan, i, node.etag)
            self._ahead_in_flight += 1
            self._start_whole(node, ahead=True)

    def _ahead_done(self, ino: int, ok: bool) -> None:
        self._ahead_in_flight -= 1
        where = self._ahead.get(ino)
        if where is None:
            return
        scan, i, _etag = where
        if not ok:
            del self._ahead[ino]
            scan.unmark(i)
        self._top_up(scan)

    def _ahead_bytes(self) -> int:
        return sum(scan.ahead_bytes for scan in self._scans.values())

    def _forget_scan(self, scan: DirScan) -> None:
        for node in scan.files:
            where = self._ahead.get(node.ino)
            if where is not None and where[0] is scan:
                del self._ahead[node.ino]
                self.memory.unpin(node.ino)

    # ------------------------------------------------------------------ warmup
    async def warm(self, files: list[Node], store_pages: Callable[[int, bytes], None]) -> tuple[int, int, int]:
        """Fetch the small objects among files and hand each, whole, to the kernel's
        page cache: what `pailfs warmup` asks for, without an open and a READ per file.
        One the kernel holds already (read or handed over before, unchanged since) is
        not fetched again. Returns (files in the page cache, their bytes, small files
        that are not).

        Every request's files go into one queue that up to AHEAD_IN_FLIGHT workers
        drain: the GETs in flight stay at that bound across concurrent requests, with
        no waiting in line for a slot and no gap between one request and the next."""
        # regular files only: a symlink's or FIFO's inode has no pages to fill
        nodes = [n for n in files if not n.is_dir and 0 < n.size <= self.small_max and stat.S_ISREG(n.mode)]
        request = _WarmRequest(len(nodes), store_pages)
        if not nodes:
            return 0, 0, 0
        self._warm_queue.extend((node, request) for node in nodes)
        loop = asyncio.get_running_loop()
        # counted by the workers themselves: a task done is only dropped from the set
        # later, and a request arriving meanwhile would find no worker to take it
        while self._warm_running < min(AHEAD_IN_FLIGHT, len(self._warm_queue)):
            self._warm_running += 1
            task = loop.create_task(self._warm_worker())
            self._warm_workers.add(task)
            task.add_done_callback(self._warm_workers.discard)
        try:
            await request.finished
        except asyncio.CancelledError:  # the caller was interrupted: its files left in the queue are skipped
            request.cancelled = True
            raise
        return request.files, request.bytes, request.missed

    async def _warm_worker(self) -> None:
        queue = self._warm_queue
        try:
            while queue:
                node, request = queue.popleft()
                try:
                    if not request.cancelled:
                        await self._warm_one(node, request)
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]  # the mount is ending
                        raise
                    request.missed += 1  # the fetch it joined was cancelled, not this worker
                except Exception:  # noqa: BLE001 - the caller reads it through the mount and sees the error
                    request.missed += 1
                finally:  # every file is accounted for, or its caller would wait forever
                    request.left -= 1
                    if request.left == 0 and not request.finished.done():
                        request.finished.set_result(None)
        finally:
            self._warm_running -= 1  # in the same step as the empty queue was seen

    async def _warm_one(self, node: Node, request: "_WarmRequest") -> None:
        size, etag = node.size, node.etag
        if node.ino in self._in_kernel:
            request.files += 1
            request.bytes += size
            return
        if etag is None:  # never listed with its ETag: read through the mount instead
            request.missed += 1
            return
        data = self.memory.get(node.ino)
        if data is None:
            data = await self._fetch_whole(node)
        if node.etag != etag or len(data) != size:  # changed meanwhile: the kernel's size is stale
            request.missed += 1
            return
        request.store_pages(node.ino, bytes(data))
        self._done_reading(node.ino)
        self.warmed_files += 1
        self.warmed_bytes += size
        request.files += 1
        request.bytes += size

    # ------------------------------------------------------------------ invalidation
    def remember(self, ino: int, data: bytes) -> None:
        """Bytes the mount itself just wrote (a symlink's target)."""
        self.memory.put(ino, data)

    def discard(self, ino: int) -> None:
        """Forget every cached byte of an inode (changed in the store, or dropped)."""
        where = self._ahead.pop(ino, None)
        data = self.memory.get(ino) if where is not None else None
        self.memory.discard(ino)
        self._in_kernel.discard(ino)
        self._served.discard(ino)
        self._whole.pop(ino, None)  # a fetch in flight keeps its bytes to itself
        if where is not None:
            scan, i, etag = where
            scan.unmark(i)
            if data is not None:
                # fetched ahead and not read: a stat cache smaller than the data set drops
                # inodes the kernel forgot, and the next lookup makes a new one; keep the
                # bytes for it under the key and the ETag they were fetched for (an object
                # changed since has another ETag and never finds them)
                self.memory.put((scan.files[i].key(), etag), data)
        pf = self._prefetchers.pop(ino, None)
        if pf is not None:
            pf.close()

    def stats(self) -> dict:
        return {"memory_bytes": self.memory.used, "readahead_bytes": self.memory.reserved,
                "hits": self.memory.hits, "misses": self.memory.misses,
                "ahead_files_fetched": self.ahead_fetched, "ahead_bytes_fetched": self.ahead_fetched_bytes,
                "ahead_files_read": self.ahead_hits, "ahead_bytes_unread": self._ahead_bytes(),
                "ahead_in_flight": self._ahead_in_flight, "fetches_in_flight": len(self._whole),
                "warmed_files": self.warmed_files, "warmed_bytes": self.warmed_bytes,
                **(self.disk_cache.stats() if self.disk_cache is not None else {})}

    def close(self) -> None:
        for pf in self._prefetchers.values():
            pf.close()
        self._prefetchers.clear()
        self._scans.clear()
        self._ahead.clear()
        self._warm_queue.clear()
        for task in self._warm_workers:
            task.cancel()
        if self.disk_cache is not None:
            self.disk_cache.close()


class _WarmRequest:
    """One warm() call: its files not done yet, what was done, and who waits."""

    __slots__ = ("left", "store_pages", "files", "bytes", "missed", "cancelled", "finished")

    def __init__(self, left: int, store_pages: Callable[[int, bytes], None]) -> None:
        self.left = left
        self.store_pages = store_pages
        self.files = self.bytes = self.missed = 0
        self.cancelled = False
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()


def _retrieve(task: asyncio.Task) -> None:
    """A fetch's failure is its readers' to report; a fetch ahead nobody waits for
    must not log 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()
