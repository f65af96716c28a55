"""The object file system: inodes over a flat key space, in store terms.

Knows nothing of FUSE. Directories are implicit prefixes (and `dir/` markers);
attributes of listed objects come from the LIST result (no HEAD per entry).

Threads: every coroutine runs on one asyncio loop (the "loop thread"); the
`cached_*` methods run in the front end's reader thread and only read node
fields and completed futures — they never mutate shared structures except
the `used` stamp. All structure changes (inode table, children, stat cache)
happen on the loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import stat
import threading
import time
from typing import Any

from pailfs import errors
from pailfs.cache.data import MemoryCache, Prefetcher, MiB
from pailfs.cache.stat import StatCache
from pailfs.config import Options
from pailfs.errors import (
    DirectoryNotEmpty, IsADirectory, NotADirectory, NotFound, NotPermitted, NotSupported, ReadOnly,
)
from pailfs.fs.nodes import InodeTable, Node, Presentation, compact_etag, node_kinds
from pailfs.fs.types import ROOT_INO, SetAttr, StatFs
from pailfs.fs.writes import WriteBack
from pailfs.store.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)
NAME_MAX = 255        # bytes in one name (Linux, and S3 servers such as SeaweedFS)
MAX_KEY_BYTES = 1024  # S3: a key is at most 1024 bytes

FOREVER = float(2**31)  # kernel timeouts for "never expires"
STATS_XATTR = "user.pailfs.stats"
LISTINGS_AHEAD = 4     # directory listings a walk keeps in flight ahead of the walker
AHEAD_QUEUE = 4096     # subdirectories waiting to be listed ahead
NO_MTIME = 0.0


def presentation(options: Options) -> Presentation:
    uid = options.uid if options.uid is not None else os.getuid()
    gid = options.gid if options.gid is not None else os.getgid()
    if options.umask is not None:
        file_mode = dir_mode = 0o777 & ~options.umask
    else:
        file_mode, dir_mode = 0o640, 0o750  # ossfs defaults for objects without mode metadata
    root_mode = 0o777 & ~options.mp_umask if options.mp_umask is not None else dir_mode
    return Presentation(uid, gid, file_mode, dir_mode, root_mode)


def meta_from_object(metadata: Any) -> tuple[int | None, int | None, int | None] | None:
    """(mode, uid, gid) from s3fs-style x-amz-meta-mode/uid/gid; None when absent."""
    if not metadata:
        return None

    def num(name: str) -> int | None:
        try:
            return int(metadata[name]) if name in metadata else None
        except ValueError:
            return None

    values = (num("mode"), num("uid"), num("gid"))
    return values if any(v is not None for v in values) else None


def mtime_from_object(info: ObjectInfo) -> float:
    if info.metadata and "mtime" in info.metadata:
        try:
            return float(info.metadata["mtime"])
        except ValueError:
            pass
    return info.mtime


class ObjectFileSystem:
    """FileSystemOps over an ObjectStore (see pailfs.fs.types for the contract)."""

    def __init__(self, store: ObjectStore, options: Options) -> None:
        self.store = store
        self.options = options
        self.read_only = options.read_only
        self.look = presentation(options)
        self.stat_cache = StatCache(options.max_stat_cache_size, options.stat_cache_expire,
                                    population=lambda: self.inodes.values(), on_evict=self._evicted)
        cache_on = self.stat_cache.enabled
        if not cache_on:
            self.entry_timeout = self.attr_timeout = self.negative_timeout = 0.0
        elif options.kernel_cache:
            ttl = FOREVER if options.stat_cache_expire < 0 else float(options.stat_cache_expire)
            self.entry_timeout = self.attr_timeout = ttl
            self.negative_timeout = ttl if options.enable_noobj_cache else 0.0
        else:
            ttl = 1.0 if options.stat_cache_expire < 0 else min(1.0, float(options.stat_cache_expire))
            self.entry_timeout = self.attr_timeout = ttl
            self.negative_timeout = ttl if options.enable_noobj_cache else 0.0
        self.keep_cache = bool(options.kernel_cache)
        self._file_kind, self._dir_kind = node_kinds(self.look)
        self.root = self._dir_kind(ROOT_INO, None, "", mtime=time.time())
        self.root.expires = FOREVER * 1e3
        self.inodes = InodeTable(self.root)
        self._negative: dict[tuple[int, str], float] = {}
        self._listing: dict[int, asyncio.Task] = {}
        self._ahead: collections.deque[Node] = collections.deque(maxlen=AHEAD_QUEUE)
        self._ahead_running = 0
        self._largest_listing = 0
        self._meta_sem = asyncio.Semaphore(options.max_multireq)
        self.small_max = options.small_object_size * MiB
        self.memory = MemoryCache(options.max_buffer_memory * MiB)
        # what the kernel may request ahead must fit the read memory, since the chunk
        # of every READ in flight is fetched whatever the budget says
        self.kernel_readahead = min(options.kernel_readahead, options.max_buffer_memory // 4) * MiB
        self.memory.reclaim = self._reclaim_readahead
        self._prefetchers: dict[int, Prefetcher] = {}
        self.disk_cache = None  # set by the mount when use_cache= is given
        self.writes = WriteBack(self)
        self._ref_lock = threading.Lock()
        self._forgotten: collections.deque[int] = collections.deque()
        self._forget_scheduled = False
        self.started = time.time()

    # ------------------------------------------------------------------ helpers
    def _node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise NotFound(f"inode {ino} is not known")
        return node

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if not node.is_dir:
            raise NotADirectory(node.key())
        return node

    def _new_node(self, parent: Node, name: str, is_dir: bool, size: int = 0, mtime: float = NO_MTIME,
                  etag: bytes | str | None = None) -> Node:
        node = (self._dir_kind if is_dir else self._file_kind)(self.inodes.next_ino(), parent, name, size, mtime, etag)
        self.inodes.add(node)
        parent.children[name] = node  # type: ignore[index]
        parent.entries = None
        return node

    def _detach(self, node: Node) -> None:
        """Remove node from its parent; drop it from the table unless the kernel holds it."""
        parent = node.parent
        if parent is not None and parent.children is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
            parent.entries = None
        self.stat_cache.forget(node)
        if node.nlookup <= 0 and node.ino != ROOT_INO:
            self._drop(node)

    def _drop(self, node: Node) -> bool:
        """Forget an inode nobody holds; False (and nothing done) if the kernel holds it."""
        with self._ref_lock:
            if node.nlookup > 0 or node.ino == ROOT_INO:
                return False
            self.inodes.remove(node)
        self.memory.discard(node.ino)
        pf = self._prefetchers.pop(node.ino, None)
        if pf is not None:
            pf.close()
        if node.children:
            # children keep their parent pointer (their key): one the kernel still
            # holds stays usable; the others go with their directory
            for child in list(node.children.values()):
                self._drop(child)
        return True

    def _evicted(self, node: Node) -> None:
        """Stat-cache eviction: forget the attributes; drop the inode if nobody holds it
        (the kernel, an open file, or a readdir answer still being paged through)."""
        parent = node.parent
        if parent is not None:
            parent.listed_until = 0.0  # its listing is no longer complete
            if parent.entries is not None and parent.entries_until <= time.monotonic() \
                    and parent.listed_until <= 0.0:
                parent.entries = None
            if node.nlookup <= 0 and not node.children and not self.writes.busy(node.ino) \
                    and parent.entries is None:
                if parent.children is not None and parent.children.get(node.name) is node:
                    del parent.children[node.name]
                self._drop(node)

    def _set_attrs(self, node: Node, info: ObjectInfo) -> None:
        etag = compact_etag(info.etag)
        changed = node.etag is not None and etag != node.etag
        node.size = info.size
        node.mtime = mtime_from_object(info)
        node.etag = etag
        if info.metadata is not None:
            node.meta = meta_from_object(info.metadata) or ()
        if changed:
            self.memory.discard(node.ino)
            pf = self._prefetchers.pop(node.ino, None)
            if pf is not None:
                pf.close()
            self.on_changed(node.ino)

    def on_changed(self, ino: int) -> None:
        """Called when an object changed under a cached inode; the front end replaces
        this to invalidate the kernel's page cache (FUSE_NOTIFY_INVAL_INODE)."""

    # ------------------------------------------------------------------ refs
    # The kernel's lookup counts change on two threads: ref() runs in the reader
    # thread (replies sent inline) and on the loop (cold replies), forget() in the
    # reader thread, and the loop drops inodes. `_ref_lock` makes each count
    # change, and each drop's check that nobody holds the inode, atomic. ref()
    # receives the node itself, so an inode dropped between a cache hit and its
    # reply is put back in the table instead of being lost to the kernel.
    def ref(self, attr: Node) -> None:  # type: ignore[override]
        with self._ref_lock:
            attr.nlookup += 1
            if self.inodes.get(attr.ino) is not attr:
                self.inodes.add(attr)

    def forget(self, ino: int, nlookup: int) -> None:
        with self._ref_lock:
            node = self.inodes.get(ino)
            if node is None or ino == ROOT_INO:
                return
            node.nlookup -= nlookup
            if node.nlookup > 0:
                return
        # possibly unreferenced now: the loop thread decides (batched: a BATCH_FORGET
        # carries thousands, which is one wake-up of the loop, not thousands)
        self._forgotten.append(ino)
        if not self._forget_scheduled:
            self._forget_scheduled = True
            self.loop.call_soon_threadsafe(self._drop_forgotten)

    def _drop_forgotten(self) -> None:
        self._forget_scheduled = False
        while self._forgotten:
            node = self.inodes.get(self._forgotten.popleft())
            if node is None or node.expires != 0.0 or self.writes.busy(node.ino):
                continue
            parent = node.parent
            if parent is None or parent.children is None or parent.children.get(node.name) is not node:
                self._drop(node)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ------------------------------------------------------------------ hot path
    def cached_lookup(self, parent: int, name: str) -> Node | None:
        pnode = self.inodes.get(parent)
        if pnode is None or pnode.children is None:
            return None
        now = time.monotonic()
        node = pnode.children.get(name)
        if node is not None:
            if node.expires > now and (node.meta is not None or self.read_only or node.is_dir):
                node.used = self.stat_cache.tick
                self.stat_cache.hits += 1
                return node
            return None
        if pnode.listed_until > now or self._negative.get((parent, name), 0.0) > now:
            raise NotFound(name)
        return None

    def cached_getattr(self, ino: int) -> Node | None:
        node = self.inodes.get(ino)
        if node is not None and (node.expires > time.monotonic() or self.writes.busy(ino)):
            return node
        return None

    def cached_readdir(self, ino: int) -> list[Node] | None:
        node = self.inodes.get(ino)
        if node is None:
            return None
        entries = node.entries
        if node.listed_until <= time.monotonic():
            return entries if entries is not None and node.entries_until > time.monotonic() else None
        if entries is None:
            entries = node.entries = list(node.children.values())  # type: ignore[union-attr]
        if node.ahead:  # listed ahead of a walk that has now reached it: go one level further
            node.ahead = False
            try:
                self._loop.call_soon_threadsafe(self._list_ahead, entries)
            except RuntimeError:
                pass  # the loop is closed: the mount is ending
        return entries

    def cached_read(self, ino: int, offset: int, size: int) -> bytes | None:
        if self.writes.busy(ino):
            return None
        data = self.memory.get(ino)
        if data is not None:
            return data[offset:offset + size]
        pf = self._prefetchers.get(ino)
        if pf is not None:
            return pf.cached(offset, size)
        return None

    # ------------------------------------------------------------------ metadata
    async def lookup(self, parent: int, name: str) -> Node:
        node = await self._lookup(parent, name)
        if node.meta is None and not self.read_only and not node.is_dir and not self.writes.busy(node.ino):
            # rw mounts show chmod/chown/touch metadata, which only a HEAD returns
            async with self._meta_sem:
                info = await self.store.head(node.key())
            self._set_attrs(node, info)
            if node.meta is None:
                node.meta = ()
        return node

    async def _lookup(self, parent: int, name: str) -> Node:
        pnode = self._dir(parent)
        now = time.monotonic()
        node = pnode.children.get(name)  # type: ignore[union-attr]
        if node is not None and node.expires > now:
            return node
        if node is None and (pnode.listed_until > now or self._negative.get((parent, name), 0.0) > now):
            raise NotFound(name)
        if self.stat_cache.enabled and pnode.listed_until <= now:
            # one LIST of the directory answers this and every sibling lookup
            await self._ensure_listed(pnode)
            node = pnode.children.get(name)  # type: ignore[union-attr]
            if node is not None and node.expires > time.monotonic():
                return node
            if node is None and pnode.listed_until > time.monotonic():
                self._remember_missing(parent, name)
                raise NotFound(name)
        return await self._probe(pnode, name)

    async def _probe(self, pnode: Node, name: str) -> Node:
        """One HEAD of the key; if there is no such object, one LIST of key/ (an
        implicit directory). Most names are files: one request answers them."""
        key = pnode.child_key(name)
        listing = None
        async with self._meta_sem:
            head = await self._head_or_none(key)
            if head is None:
                # one entry answers "is it a directory?"; a marker 'key/' sorts first
                async for listing in self.store.list_pages(key + "/", "/", page_size=1):
                    break
        is_dir = listing is not None and bool(listing.objects or listing.prefixes)
        if not is_dir and head is None:
            old = pnode.children.get(name)  # type: ignore[union-attr]
            if old is not None:
                self._detach(old)
            self._remember_missing(pnode.ino, name)
            raise NotFound(key)
        node = pnode.children.get(name)  # type: ignore[union-attr]
        if node is not None and node.is_dir != is_dir:
            self._detach(node)
            node = None
        if node is None:
            node = self._new_node(pnode, name, is_dir)
        if is_dir:
            marker = next((o for o in listing.objects if o.key == key + "/"), None)  # type: ignore[union-attr]
            node.mtime = marker.mtime if marker else (node.mtime or self.started)
        else:
            self._set_attrs(node, head)  # type: ignore[arg-type]
        self._negative.pop((pnode.ino, name), None)
        self.stat_cache.admit(node)
        return node

    async def _head_or_none(self, key: str) -> ObjectInfo | None:
        try:
            return await self.store.head(key)
        except NotFound:
            return None

    def _remember_missing(self, parent: int, name: str) -> None:
        if self.negative_timeout > 0 or (self.stat_cache.enabled and self.options.enable_noobj_cache):
            ttl = self.stat_cache.ttl if self.options.kernel_cache else max(self.negative_timeout, 1.0)
            if len(self._negative) > max(1000, self.options.max_stat_cache_size):
                self._negative.clear()
            self._negative[(parent, name)] = time.monotonic() + ttl

    async def getattr(self, ino: int) -> Node:
        node = self._node(ino)
        if node.expires > time.monotonic() or self.writes.busy(ino) or node.parent is None:
            return node
        if node.is_dir:
            node.mtime = node.mtime or self.started
            self.stat_cache.admit(node)
            return node
        async with self._meta_sem:
            info = await self.store.head(node.key())
        self._set_attrs(node, info)
        self.stat_cache.admit(node)
        return node

    async def _ensure_listed(self, dnode: Node) -> list[Node]:
        """List a directory once, however many lookups ask for it at the same time."""
        task = self._listing.get(dnode.ino)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._list_dir(dnode))
            self._listing[dnode.ino] = task
            task.add_done_callback(lambda _t, ino=dnode.ino: self._listing.pop(ino, None))
        return await asyncio.shield(task)

    async def _list_dir(self, dnode: Node) -> list[Node]:
        prefix = dnode.key()
        seen: set[str] = set()
        listed: list[Node] = []
        mtimes: dict[float, float] = {}  # objects written in the same second share one float
        children = dnode.children
        assert children is not None
        now = time.monotonic()
        async with self._meta_sem:
            async for page in self.store.list_pages(prefix, "/"):
                for sub in page.prefixes:
                    name = sub[len(prefix):].rstrip("/")
                    if not name or "/" in name:
                        continue
                    seen.add(name)
                    node = children.get(name)
                    if node is not None and not node.is_dir:
                        self._detach(node)
                        node = None
                    if node is None:
                        node = self._new_node(dnode, name, True, mtime=self.started)
                    listed.append(node)
                    self.stat_cache.admit(node, now)
                for info in page.objects:
                    rel = info.key[len(prefix):]
                    if not rel:
                        dnode.mtime = info.mtime  # the directory's own marker
                        continue
                    is_dir = rel.endswith("/")
                    name = rel.rstrip("/")
                    if not name or "/" in name or (not is_dir and name in seen):
                        continue  # a file shadowed by a directory of the same name
                    seen.add(name)
                    node = children.get(name)
                    if node is not None and node.is_dir != is_dir:
                        self._detach(node)
                        node = None
                    if is_dir:
                        if node is None:
                            node = self._new_node(dnode, name, True)
                        node.mtime = info.mtime
                    elif node is None:  # the common case of a first listing: one step
                        node = self._new_node(dnode, name, False, info.size,
                                              mtimes.setdefault(info.mtime, info.mtime), compact_etag(info.etag))
                    elif not self.writes.busy(node.ino):
                        if node.etag != compact_etag(info.etag):
                            self._set_attrs(node, info)
                            node.mtime = mtimes.setdefault(node.mtime, node.mtime)
                    listed.append(node)
                    self.stat_cache.admit(node, now)
        for name in [n for n in children if n not in seen]:
            if not self.writes.busy(children[name].ino) and not self.writes.pending_create(children[name]):
                self._detach(children[name])
        dnode.entries = None
        self._largest_listing = max(self._largest_listing, len(listed))
        if len(children) < len(seen):
            # larger than the stat cache: keep this answer (it pins its nodes) for the
            # kernel's READDIRPLUS paging, but never use it to answer lookups
            dnode.entries = listed
            dnode.entries_until = time.monotonic() + 10.0
        elif self.stat_cache.enabled:
            dnode.listed_until = now + self.stat_cache.ttl
            self.stat_cache.admit(dnode, now)
        return listed

    async def readdir(self, ino: int) -> list[Node]:
        dnode = self._dir(ino)
        cached = self.cached_readdir(ino)
        if cached is not None:
            return cached
        entries = await self._ensure_listed(dnode)
        dnode.ahead = False
        self._list_ahead(entries)
        return entries

    def _list_ahead(self, entries: list[Node]) -> None:
        """A directory read is usually a walk: queue its subdirectories to be listed
        in the walker's order, a few at a time, while the walker is still busy with
        this one. Depth first, like os.walk and find: a new batch goes to the front.
        Only while the stat cache has room for the walker's directory and those listed
        ahead of it (judged by the largest listing yet), so they are still cached when
        the walker gets there; and one level ahead only (see cached_readdir)."""
        if not self.stat_cache.enabled:
            return
        subdirs = [node for node in entries if node.is_dir]
        if subdirs:
            self._ahead.extendleft(reversed(subdirs))
            self._pump_ahead()

    def _pump_ahead(self) -> None:
        now = time.monotonic()
        while self._ahead_running < LISTINGS_AHEAD and self._ahead:
            capacity = self.stat_cache.capacity
            if self.stat_cache.count >= capacity or self._largest_listing * (LISTINGS_AHEAD + 1) > capacity:
                self._ahead.clear()
                return
            node = self._ahead.popleft()
            if node.listed_until > now or node.ino in self._listing or self.inodes.get(node.ino) is not node:
                continue
            self._ahead_running += 1
            task = asyncio.get_running_loop().create_task(self._ensure_listed(node))
            task.add_done_callback(lambda t, node=node: self._listed_ahead(t, node))

    def _listed_ahead(self, task: asyncio.Task, node: Node) -> None:
        # a listing ahead that failed is simply not there: the walker's own will retry and report
        self._ahead_running -= 1
        if task.cancelled():
            return
        if task.exception() is not None:
            log.debug("listing ahead failed: %s", task.exception())
        else:
            node.ahead = True  # its own subdirectories are queued when the walker reads it
        self._pump_ahead()

    async def statfs(self) -> StatFs:
        return StatFs()

    # ------------------------------------------------------------------ data
    async def read(self, ino: int, offset: int, size: int) -> bytes:
        node = self._node(ino)
        if node.is_dir:
            raise IsADirectory(node.key())
        if self.writes.busy(ino):
            return await self.writes.read(node, offset, size)
        if node.etag is None:
            await self.getattr(ino)
        # An inode evicted from the stat cache is read without a HEAD first: the kernel
        # still trusts its attributes (and asks again when its timeouts end), so the
        # bytes of the listed version are what it expects.
        if offset >= node.size:
            return b""
        if node.size <= self.small_max:
            data = self.memory.get(ino)
            if data is None:
                data = await self._fetch_whole(node)
            return data[offset:offset + size]
        pf = self._prefetchers.pop(ino, None)
        if pf is not None:
            self._prefetchers[ino] = pf  # most recently used last
        else:
            key, etag = node.key(), node.etag
            pf = Prefetcher(lambda start, end: self._get_range(key, etag, start, end), node.size,
                            chunk_size=MiB, max_window=self.options.readahead_max * MiB,
                            parallel=self.options.parallel_count,
                            group=8,  # one ranged GET covers up to 8 chunks
                            slack=self.kernel_readahead, budget=self.memory)
            self._prefetchers[ino] = pf
            if len(self._prefetchers) > 64:  # bound the bookkeeping: drop the oldest reader
                old_ino = next(iter(self._prefetchers))
                self._prefetchers.pop(old_ino).close()
        return await pf.read(offset, size)

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
            data = self.disk_cache.get(key, etag)
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
            cached = self.disk_cache.get_range(key, etag, start, end)
            if cached is not None:
                return memoryview(cached)
        data = await self.store.get_buffer(key, start, end)
        if self.disk_cache is not None:
            self.disk_cache.put_range(key, etag, start, data)
        return data

    # ------------------------------------------------------------------ xattrs
    def stats(self) -> dict:
        return {
            "store": self.store.stats.as_dict(),
            "stat_cache": {"entries": self.stat_cache.count, "capacity": self.stat_cache.capacity,
                           "hits": self.stat_cache.hits, "evictions": self.stat_cache.evictions,
                           "inodes": len(self.inodes)},
            "data_cache": {"memory_bytes": self.memory.used, "readahead_bytes": self.memory.reserved,
                           "hits": self.memory.hits,
                           "misses": self.memory.misses,
                           **(self.disk_cache.stats() if self.disk_cache is not None else {})},
            "kernel_requests": self.kernel_requests(),
            "read_only": self.read_only,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def kernel_requests(self) -> dict[str, int]:
        """FUSE requests by kind; the front end replaces this with its counters."""
        return {}

    async def getxattr(self, ino: int, name: str) -> bytes:
        if ino == ROOT_INO and name == STATS_XATTR:
            return json.dumps(self.stats()).encode()
        self._node(ino)
        raise errors.NoSuchAttribute(name)

    async def listxattr(self, ino: int) -> list[str]:
        return [STATS_XATTR] if ino == ROOT_INO else []

    # ------------------------------------------------------------------ read-write
    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnly("read-only mount")

    @staticmethod
    def _check_new_name(pnode: Node, name: str) -> None:
        """A name this mount would create: at most NAME_MAX bytes, its key at most 1024
        bytes (the S3 limit). Refused here (ENAMETOOLONG) rather than by the store at
        upload time, when close() could only say EIO."""
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX or \
                len(pnode.child_key(name).encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
            raise errors.NameTooLong(f"name or key too long: {pnode.child_key(name)[:80]!r}")

    def _deletable(self) -> None:
        self._writable()
        if self.options.nodelete:
            raise NotPermitted("deletion is disabled on this mount (nodelete)")

    async def open(self, ino: int, flags: int) -> int:
        node = self._node(ino)
        if node.is_dir:
            raise IsADirectory(node.key())
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self._writable()
            if flags & os.O_TRUNC and self.options.nodelete and node.size > 0:
                raise NotPermitted("overwriting is disabled on this mount (nodelete)")
        return await self.writes.open(node, flags)

    async def create(self, parent: int, name: str, mode: int, flags: int) -> tuple[Node, int]:
        self._writable()
        pnode = self._dir(parent)
        self._check_new_name(pnode, name)
        existing = await self._lookup_or_none(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise errors.AlreadyExists(existing.key())
            return existing, await self.open(existing.ino, flags | os.O_TRUNC)
        node = self._new_node(pnode, name, False, mtime=time.time())
        node.meta = (stat.S_IFREG | (mode & 0o7777), None, None)
        self._negative.pop((parent, name), None)
        fh = await self.writes.create(node, flags)
        self.stat_cache.admit(node)
        return node, fh

    async def _lookup_or_none(self, parent: int, name: str) -> Node | None:
        try:
            return await self.lookup(parent, name)
        except NotFound:
            return None

    async def write(self, ino: int, fh: int, offset: int, data: bytes) -> int:
        self._writable()
        return await self.writes.write(self._node(ino), fh, offset, data)

    async def read_handle(self, ino: int, fh: int, offset: int, size: int) -> bytes:
        return await self.read(ino, offset, size)

    async def flush(self, ino: int, fh: int) -> None:
        await self.writes.flush(self._node(ino), fh)

    async def fsync(self, ino: int, fh: int, datasync: bool) -> None:
        await self.writes.flush(self._node(ino), fh)

    async def release(self, ino: int, fh: int) -> None:
        node = self.inodes.get(ino)
        if node is not None:
            await self.writes.release(node, fh)

    async def setattr(self, ino: int, fh: int | None, changes: SetAttr) -> Node:
        self._writable()
        node = self._node(ino)
        if changes.size is not None:
            if node.is_dir:
                raise IsADirectory(node.key())
            if self.options.nodelete and changes.size < node.size:
                raise NotPermitted("truncation is disabled on this mount (nodelete)")
            await self.writes.truncate(node, fh, changes.size)
        if changes.mode is not None or changes.uid is not None or changes.gid is not None:
            old = node.meta or (None, None, None)
            mode = (stat.S_IFMT(node.mode) | (changes.mode & 0o7777)) if changes.mode is not None else old[0]
            node.meta = (mode, changes.uid if changes.uid is not None else old[1],
                         changes.gid if changes.gid is not None else old[2])
        if changes.mtime is not None:
            node.mtime = changes.mtime
        if changes.mode is not None or changes.uid is not None or changes.gid is not None \
                or changes.mtime is not None:
            await self.writes.save_metadata(node)
        self.stat_cache.admit(node)
        return node

    def object_metadata(self, node: Node) -> dict[str, str]:
        """s3fs-compatible metadata: x-amz-meta-mode/uid/gid/mtime."""
        meta = {"mtime": str(int(node.mtime))}
        if node.meta:
            for name, value in zip(("mode", "uid", "gid"), node.meta):
                if value is not None:
                    meta[name] = str(value)
        return meta

    async def mkdir(self, parent: int, name: str, mode: int) -> Node:
        self._writable()
        pnode = self._dir(parent)
        self._check_new_name(pnode, name)
        if await self._lookup_or_none(parent, name) is not None:
            raise errors.AlreadyExists(pnode.child_key(name))
        node = self._new_node(pnode, name, True, mtime=time.time())
        if mode & 0o7777 != self.look.dir_mode:
            node.meta = (stat.S_IFDIR | (mode & 0o7777), None, None)
        await self.store.put(node.key(), b"", self.object_metadata(node))
        self._negative.pop((parent, name), None)
        self.stat_cache.admit(node)
        if self.stat_cache.enabled:
            node.listed_until = time.monotonic() + self.stat_cache.ttl
        return node

    async def unlink(self, parent: int, name: str) -> None:
        self._deletable()
        node = await self.lookup(parent, name)
        if node.is_dir:
            raise IsADirectory(node.key())
        await self.writes.discard(node)
        await self.store.delete(node.key())
        self._detach(node)
        self._remember_missing(parent, name)

    async def rmdir(self, parent: int, name: str) -> None:
        self._deletable()
        node = await self.lookup(parent, name)
        if not node.is_dir:
            raise NotADirectory(node.key())
        prefix = node.key()
        # two entries tell: the directory's own marker (it sorts first) and anything else
        async for page in self.store.list_pages(prefix, "/", page_size=2):
            if page.prefixes or any(o.key != prefix for o in page.objects):
                raise DirectoryNotEmpty(prefix)
            break
        await self.store.delete(prefix)
        self._detach(node)
        self._remember_missing(parent, name)

    async def rename(self, parent: int, name: str, new_parent: int, new_name: str, flags: int) -> None:
        self._writable()
        if flags & 2:  # RENAME_EXCHANGE: no atomic swap on object storage
            raise NotSupported("RENAME_EXCHANGE is not supported")
        self._check_new_name(self._dir(new_parent), new_name)
        node = await self.lookup(parent, name)
        dst_dir = self._dir(new_parent)
        target = await self._lookup_or_none(new_parent, new_name)
        if target is not None:
            if flags & 1:  # RENAME_NOREPLACE
                raise errors.AlreadyExists(target.key())
            if self.options.nodelete:
                raise NotPermitted("overwriting renames are disabled on this mount (nodelete)")
            if target.is_dir and not node.is_dir:
                raise IsADirectory(target.key())
            if node.is_dir and not target.is_dir:
                raise NotADirectory(target.key())
            if target.is_dir:
                await self.rmdir(new_parent, new_name)
        new_key = dst_dir.child_key(new_name)
        if node.is_dir:
            await self._rename_dir(node, new_key + "/")
        else:
            await self.writes.flush_all(node)
            await self.store.copy(node.key(), new_key)
            await self.store.delete(node.key())
        # move the inode in the tree: its key (and its children's) follow the parent chain
        old_parent = node.parent
        if old_parent is not None and old_parent.children is not None:
            old_parent.children.pop(node.name, None)
            old_parent.entries = None
        if target is not None and not target.is_dir:
            self._detach(target)
        node.parent, node.name = dst_dir, new_name
        dst_dir.children[new_name] = node  # type: ignore[index]
        dst_dir.entries = None
        self._negative.pop((new_parent, new_name), None)
        self._remember_missing(parent, name)

    async def _rename_dir(self, node: Node, new_prefix: str) -> None:
        old_prefix = node.key()
        listing = await self.store.list(old_prefix)
        keys = [o.key for o in listing.objects]
        limit = self.options.dir_rename_limit
        if len(keys) > limit:
            raise errors.TooManyObjects(
                f"renaming {old_prefix} would copy {len(keys)} objects (dir_rename_limit={limit})")
        for child in node.children.values():  # type: ignore[union-attr]
            await self.writes.flush_all(child)
        sem = asyncio.Semaphore(self.options.parallel_count)

        async def move(key: str) -> None:
            async with sem:
                new_key = new_prefix + key[len(old_prefix):]
                if key.endswith("/"):  # a marker: some stores cannot copy directory objects
                    await self.store.put(new_key, b"")
                else:
                    await self.store.copy(key, new_key)

        await asyncio.gather(*(move(k) for k in keys))
        if old_prefix not in keys:
            await self.store.put(new_prefix, b"")
        await self.store.delete_many(keys)

    async def symlink(self, parent: int, name: str, target: str) -> Node:
        self._writable()
        pnode = self._dir(parent)
        self._check_new_name(pnode, name)
        if await self._lookup_or_none(parent, name) is not None:
            raise errors.AlreadyExists(pnode.child_key(name))
        node = self._new_node(pnode, name, False, mtime=time.time())
        node.meta = (stat.S_IFLNK | 0o777, None, None)
        data = target.encode()
        info = await self.store.put(node.key(), data, self.object_metadata(node))
        node.size, node.etag = len(data), compact_etag(info.etag)
        self.memory.put(node.ino, data)
        self.stat_cache.admit(node)
        return node

    async def readlink(self, ino: int) -> str:
        node = self._node(ino)
        data = self.memory.get(ino) or await self.store.get(node.key())
        return data.decode("utf-8", "surrogateescape")

    async def setxattr(self, ino: int, name: str, value: bytes, flags: int) -> None:
        self._writable()
        raise NotSupported("extended attributes are not stored")

    async def removexattr(self, ino: int, name: str) -> None:
        self._writable()
        raise NotSupported("extended attributes are not stored")

    async def close(self) -> None:
        self._ahead.clear()
        for task in list(self._listing.values()):
            task.cancel()
        await self.writes.close()
        for pf in self._prefetchers.values():
            pf.close()
        self._prefetchers.clear()
