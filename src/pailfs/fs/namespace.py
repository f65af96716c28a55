"""The namespace: inodes over a flat key space, kept in step with the store.

Directories are implicit prefixes (and `dir/` markers); attributes of listed
objects come from the LIST result (no HEAD per entry). One LIST of a directory
answers every lookup in it while the stat cache trusts it; a walk is listed
ahead of the walker.

Who may change the bucket decides what a listing proves (docs/semantics.md):

* a read-only data-set mount trusts its listings: a name missing from one is
  ENOENT without asking the store (that is its speed);
* a read-write mount, and a read-only one with `check_missing`, asks the store
  (HEAD, then a one-key LIST) about a name its listing lacks, and caches no
  "no such file" answer;
* a read-write mount also keeps the object metadata of every inode it shows
  (mode, owner, times, extended attributes, the file type): a lookup HEADs the
  object (a directory: its `.pailfs-dirmeta` object), a directory read HEADs
  the entries it does not know yet, and a listing is reused by readdir for
  RW_LISTING_TTL only; `revalidate()` is close-to-open: open() compares ETags.

Keys that cannot be names on the mount are not shown: empty segments (`a//b`,
`/abs`), `.` and `..` (`./x`, `sub/..`), names with a NUL byte or longer than
NAME_MAX bytes, and the directory-metadata objects themselves.

Threads: every coroutine runs on the file system's loop thread; the `cached_*`
methods run in the front end's reader thread and only read node fields — they
never mutate shared structures except the `used` stamp. All structure changes
(inode table, children, stat cache) happen on the loop thread. The kernel's
lookup counts are the exception: see "refs" below.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Callable

from pailfs.cache.stat import StatCache
from pailfs.config import Options
from pailfs.errors import NotADirectory, NotFound
from pailfs.fs.nodes import (
    DIR_META, InodeTable, Node, compact_etag, meta_from_object,
    mtime_ns_from_object, node_kinds, presentation,
)
from pailfs.fs.types import ROOT_INO
from pailfs.fs.rw_metadata import RW_LISTING_TTL, RwMetadata, set_rich
from pailfs.fs.walk import WalkAhead
from pailfs.store.base import Listing, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

FOREVER = float(2**31)  # kernel timeouts for "never expires"
NO_MTIME = 0.0
NAME_MAX = 255         # bytes in one name (Linux; longer ones cannot be looked up)
PROBED_MISSING_TTL = 1.0  # seconds a store's "no such key" spares the create that follows


def showable(name: str) -> bool:
    """Whether a key segment can be a name on the mount (see the module docstring)."""
    return bool(name) and name not in (".", "..", DIR_META) and "/" not in name and "\0" not in name \
        and len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX


class Namespace:
    """The inode tree of one file system.

    `is_staged(ino)` says an inode has staged writes: its attributes are the
    mount's own, so listings do not overwrite or drop it. `content_changed(ino)`
    is called when the store holds other bytes than the ones cached for an
    inode; `dropped(ino)` when an inode is forgotten.
    """

    def __init__(self, store: ObjectStore, options: Options, *, is_staged: Callable[[int], bool],
                 content_changed: Callable[[int], None], dropped: Callable[[int], None]) -> None:
        self.store = store
        self.options = options
        self.read_only = options.read_only
        self.is_staged = is_staged
        self._content_changed = content_changed
        self._dropped = dropped
        self.look = presentation(options)
        self.stat_cache = StatCache(options.max_stat_cache_size, options.stat_cache_expire,
                                    population=lambda: self.inodes.values(), on_evict=self._evicted)
        # a read-only data set trusts its listings; anything writable asks the store
        self.trust_missing = self.read_only and not options.check_missing
        self._set_kernel_timeouts(options)
        self._file_kind, self._dir_kind = node_kinds(self.look, rich=not self.read_only)
        self.started = time.time()
        self.root = self._dir_kind(ROOT_INO, None, "", mtime=self.started)
        self.root.expires = FOREVER * 1e3
        self.inodes = InodeTable(self.root)
        self._negative: dict[tuple[int, str], float] = {}
        self._probed_missing: dict[tuple[int, str], float] = {}
        self._listing: dict[int, asyncio.Task] = {}
        # directory ino -> until when its last complete listing is trusted, even after the
        # stat cache evicted some of its entries (their attributes are no older than it)
        self._listed_fresh: dict[int, float] = {}
        self.largest_listing = 0  # entries of the largest directory listed so far
        self.walk = WalkAhead(self)
        self.rw = RwMetadata(self)
        self.meta_sem = asyncio.Semaphore(options.max_multireq)
        self._ref_lock = threading.Lock()
        self._forgotten: collections.deque[int] = collections.deque()
        self._forget_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _set_kernel_timeouts(self, options: Options) -> None:
        """Kernel entry/attr/negative timeouts follow the stat cache (docs/configuration.md)."""
        if not self.stat_cache.enabled:
            self.entry_timeout = self.attr_timeout = self.negative_timeout = 0.0
            return
        if options.kernel_cache:
            ttl = FOREVER if options.stat_cache_expire < 0 else float(options.stat_cache_expire)
        else:
            ttl = 1.0 if options.stat_cache_expire < 0 else min(1.0, float(options.stat_cache_expire))
        self.entry_timeout = self.attr_timeout = ttl
        self.negative_timeout = ttl if options.enable_noobj_cache and self.trust_missing else 0.0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ------------------------------------------------------------------ nodes
    def node(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise NotFound(f"inode {ino} is not known")
        return node

    def dir(self, ino: int) -> Node:
        node = self.node(ino)
        if not node.is_dir:
            raise NotADirectory(node.key())
        return node

    def new_node(self, parent: Node, name: str, is_dir: bool, size: int = 0, mtime: float = NO_MTIME,
                 etag: bytes | str | None = None) -> Node:
        node = (self._dir_kind if is_dir else self._file_kind)(self.inodes.next_ino(), parent, name, size, mtime, etag)
        self.inodes.add(node)
        parent.children[name] = node  # type: ignore[index]
        parent.entries = None
        return node

    def restore(self, ino: int, name: str, is_dir: bool) -> Node:
        """An inode a predecessor process handed over, at its own number (pailfs.fs.state)."""
        node = (self._dir_kind if is_dir else self._file_kind)(ino, None, name)
        self.inodes.add(node)
        return node

    def detach(self, node: Node) -> None:
        """Remove node from its parent; drop it from the table unless the kernel holds it."""
        parent = node.parent
        if parent is not None and parent.children is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
            parent.entries = None
        self.stat_cache.forget(node)
        if node.nlookup <= 0 and node.ino != ROOT_INO:
            self._drop(node)

    def replace(self, node: Node, info: ObjectInfo | None) -> Node | None:
        """The object under node's name is no longer the version node stands for: the
        name gets a new inode for `info` (None: deleted, the name goes); node stays for
        whoever holds it, detached."""
        parent = node.parent
        current = parent.children.get(node.name) if parent is not None and parent.children is not None else None
        self.detach(node)
        if current is not node or info is None:  # the name means another inode already, or nothing
            return None
        fresh = self.new_node(parent, node.name, False, info.size, node.mtime, compact_etag(info.etag))
        self.set_attrs(fresh, info)
        self.stat_cache.admit(fresh)
        return fresh

    def move(self, node: Node, new_parent: Node, new_name: str) -> None:
        """Put node under new_parent as new_name (a rename): its key, and its children's,
        follow the parent chain."""
        old_parent = node.parent
        if old_parent is not None and old_parent.children is not None \
                and old_parent.children.get(node.name) is node:
            del old_parent.children[node.name]
            old_parent.entries = None
        node.parent, node.name = new_parent, new_name
        new_parent.children[new_name] = node  # type: ignore[index]
        new_parent.entries = None
        self.forget_missing(new_parent.ino, new_name)

    def _drop(self, node: Node) -> bool:
        """Forget an inode nobody holds; False (and nothing done) if the kernel holds it."""
        with self._ref_lock:
            if node.nlookup > 0 or node.ino == ROOT_INO:
                return False
            self.inodes.remove(node)
        self._dropped(node.ino)
        self._listed_fresh.pop(node.ino, None)
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
            if node.nlookup <= 0 and not node.children and not self.is_staged(node.ino) \
                    and parent.entries is None:
                if parent.children is not None and parent.children.get(node.name) is node:
                    del parent.children[node.name]
                self._drop(node)

    def set_attrs(self, node: Node, info: ObjectInfo) -> None:
        etag = compact_etag(info.etag)
        changed = node.etag is not None and etag != node.etag
        node.size = info.size
        node.mtime_ns = mtime_ns_from_object(info)
        node.etag = etag
        if info.metadata is not None:
            node.meta = meta_from_object(info.metadata) or ()
            if node.rich:
                set_rich(node, info.metadata)
        elif changed and node.rich:
            node.meta = None  # changed by someone else: its metadata is read again
        if changed:
            self._content_changed(node.ino)

    # ------------------------------------------------------------------ refs
    # The kernel's lookup counts change on two threads: ref() runs in the reader
    # thread (replies sent inline) and on the loop (cold replies), forget() in the
    # reader thread, and the loop drops inodes. `_ref_lock` makes each count
    # change, and each drop's check that nobody holds the inode, atomic. ref()
    # receives the node itself, so an inode dropped between a cache hit and its
    # reply is put back in the table instead of being lost to the kernel.
    def ref(self, attr: Node) -> None:
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
        if not self._forget_scheduled and self._loop is not None:
            self._forget_scheduled = True
            self._loop.call_soon_threadsafe(self._drop_forgotten)

    def _drop_forgotten(self) -> None:
        self._forget_scheduled = False
        while self._forgotten:
            node = self.inodes.get(self._forgotten.popleft())
            if node is None or node.expires != 0.0 or self.is_staged(node.ino):
                continue
            parent = node.parent
            if parent is None or parent.children is None or parent.children.get(node.name) is not node:
                self._drop(node)

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
        if self.trust_missing and (pnode.listed_until > now or self._negative.get((parent, name), 0.0) > now):
            raise NotFound(name)
        return None

    def cached_getattr(self, ino: int) -> Node | None:
        node = self.inodes.get(ino)
        if node is not None and (node.expires > time.monotonic() or self.is_staged(ino)):
            return node
        return None

    def cached_readdir(self, ino: int) -> list[Node] | None:
        node = self.inodes.get(ino)
        if node is None:
            return None
        entries = node.entries
        if node.rich:  # only what readdir() built (metadata complete), for RW_LISTING_TTL
            return entries if entries is not None and node.entries_until > time.monotonic() else None
        if node.listed_until <= time.monotonic():
            return entries if entries is not None and node.entries_until > time.monotonic() else None
        if entries is None:
            entries = node.entries = list(node.children.values())  # type: ignore[union-attr]
        if node.ahead and self._loop is not None:
            # listed ahead of a walk that has now reached it: go one level further
            node.ahead = False
            try:
                self._loop.call_soon_threadsafe(self.walk.queue, entries)
            except RuntimeError:
                pass  # the loop is closed: the mount is ending
        return entries

    def forget_listing(self, ino: int) -> None:
        """Reader thread, on OPENDIR of a read-write mount: the next readdir lists the
        directory again. Two plain stores (atomic under the GIL); at worst a listing
        done on the loop at the same moment is done once more."""
        node = self.inodes.get(ino)
        if node is not None and node.rich and node.is_dir:
            node.entries_until = 0.0
            node.listed_until = 0.0

    # ------------------------------------------------------------------ lookups
    async def lookup(self, parent: int, name: str) -> Node:
        node = await self._lookup(parent, name)
        if node.meta is None and node.rich:
            node = await self.rw.load(node)
        return node

    async def lookup_or_none(self, parent: int, name: str) -> Node | None:
        try:
            return await self.lookup(parent, name)
        except NotFound:
            return None

    async def _lookup(self, parent: int, name: str) -> Node:
        pnode = self.dir(parent)
        now = time.monotonic()
        node = pnode.children.get(name)  # type: ignore[union-attr]
        if node is not None and node.expires > now:
            return node
        if name == DIR_META:
            raise NotFound(name)
        if not self.trust_missing:
            # a listing proves nothing about a name it lacks, and a read-write mount
            # HEADs every object it shows anyway: one HEAD answers
            return await self._probe(pnode, name)
        if node is None and (pnode.listed_until > now or self._negative.get((parent, name), 0.0) > now):
            raise NotFound(name)
        if self.stat_cache.enabled and pnode.listed_until <= now:
            if self._listed_fresh.get(parent, 0.0) > now:
                # listed within the TTL, then partly evicted (a stat cache smaller than the
                # data set): an entry still known is trusted again, an unknown name costs one
                # HEAD, never the whole directory again (which would evict other entries)
                if node is not None and (node.is_dir or node.etag is not None):
                    self.stat_cache.admit(node)
                    return node
                return await self._probe(pnode, name)
            # one LIST of the directory answers this and every sibling lookup
            await self.ensure_listed(pnode)
            node = pnode.children.get(name)  # type: ignore[union-attr]
            if node is not None and node.expires > time.monotonic():
                return node
            if node is None and pnode.listed_until > time.monotonic():
                self.remember_missing(parent, name)
                raise NotFound(name)
        return await self._probe(pnode, name)

    async def _probe(self, pnode: Node, name: str) -> Node:
        """Ask the store what a name is. Most names looked up are files: one HEAD of the
        key, and one LIST of key/ (an implicit directory) only if there is no such
        object. A mount that does not trust its listings also asks about names its
        listing lacks, mostly names about to be created: one LIST from the key answers
        "object, directory or nothing" (then a HEAD for an object's metadata); about a
        name in a directory it never listed, the HEAD and the LIST go at once."""
        key = pnode.child_key(name)
        head: ObjectInfo | None = None
        is_dir, marker_mtime = False, None
        known = name in pnode.children  # type: ignore[operator]
        async with self.meta_sem:
            if not self.trust_missing and pnode.listed_once and not known:
                is_object, is_dir = await self._list_name(key)
                if is_object:
                    head = await self.head_or_none(key)
            else:
                if self.trust_missing or known:
                    head = await self.head_or_none(key)
                    listing = await self._first_entry(key + "/") if head is None else None
                else:  # nothing known about it: both questions at once
                    head, listing = await asyncio.gather(self.head_or_none(key), self._first_entry(key + "/"))
                if head is None and listing is not None and (listing.objects or listing.prefixes):
                    is_dir = True
                    marker_mtime = next((o.mtime for o in listing.objects if o.key == key + "/"), None)
        plain_marker = head is not None and self.rw.is_plain_marker(head)
        if plain_marker:
            is_dir, head = True, None
        if not is_dir and head is None:
            old = pnode.children.get(name)  # type: ignore[union-attr]
            if old is not None:
                self.detach(old)
            self.remember_missing(pnode.ino, name)
            if not self.trust_missing:
                if len(self._probed_missing) > 1000:
                    self._probed_missing.clear()
                self._probed_missing[(pnode.ino, name)] = time.monotonic() + PROBED_MISSING_TTL
            raise NotFound(key)
        node = pnode.children.get(name)  # type: ignore[union-attr]
        if node is not None and node.is_dir != is_dir:
            self.detach(node)
            node = None
        if node is None:
            node = self.new_node(pnode, name, is_dir)
        if is_dir:
            if node.meta is None:  # else its metadata object says (rich nodes)
                node.mtime = marker_mtime or node.mtime or self.started
            if plain_marker:
                node.plain_marker = True
        else:
            self.set_attrs(node, head)  # type: ignore[arg-type]
        self.forget_missing(pnode.ino, name)
        self.stat_cache.admit(node)
        return node

    async def _first_entry(self, prefix: str) -> Listing | None:
        """One entry under prefix answers "is it a directory?" (a marker sorts first)."""
        async for page in self.store.list_pages(prefix, "/", page_size=1):
            return page
        return None

    async def _list_name(self, key: str) -> tuple[bool, bool]:
        """(an object `key` exists, a directory `key/` exists) from a LIST from key. The
        object sorts first; before `key/` come only names that continue with a byte
        below '/' (`key.txt`, `key-1`), so the first page nearly always tells."""
        is_object = is_dir = False
        bound = key + "/"
        async for page in self.store.list_pages(key, "/", page_size=16):
            is_object = is_object or any(o.key == key for o in page.objects)
            is_dir = is_dir or bound in page.prefixes
            seen = [o.key for o in page.objects] + page.prefixes
            if is_dir or (seen and max(seen) >= bound):
                break
        return is_object, is_dir

    async def head_or_none(self, key: str) -> ObjectInfo | None:
        try:
            return await self.store.head(key)
        except NotFound:
            return None

    def remember_missing(self, parent: int, name: str) -> None:
        if not self.trust_missing:
            return  # another client may create it at any time
        if self.negative_timeout > 0 or (self.stat_cache.enabled and self.options.enable_noobj_cache):
            ttl = self.stat_cache.ttl if self.options.kernel_cache else max(self.negative_timeout, 1.0)
            if len(self._negative) > max(1000, self.options.max_stat_cache_size):
                self._negative.clear()
            self._negative[(parent, name)] = time.monotonic() + ttl

    def forget_missing(self, parent: int, name: str) -> None:
        self._negative.pop((parent, name), None)
        self._probed_missing.pop((parent, name), None)

    def just_probed_missing(self, parent: int, name: str) -> bool:
        """The store said "no such key" for this name a moment ago: the kernel's LOOKUP
        that precedes a CREATE/MKDIR asked already (it is never used to answer a lookup)."""
        return self._probed_missing.pop((parent, name), 0.0) > time.monotonic()

    async def getattr(self, ino: int) -> Node:
        node = self.node(ino)
        if node.expires > time.monotonic() or self.is_staged(ino) or node.parent is None:
            return node
        if node.rich:
            node = await self.rw.load(node)
            if node.is_dir:
                node.mtime = node.mtime or self.started
            self.stat_cache.admit(node)
            return node
        if node.is_dir:
            node.mtime = node.mtime or self.started
            self.stat_cache.admit(node)
            return node
        if node.etag is not None and self._listed_fresh.get(node.parent.ino, 0.0) > time.monotonic():
            self.stat_cache.admit(node)  # evicted since its directory's listing, still within the TTL
            return node
        async with self.meta_sem:
            info = await self.store.head(node.key())
        self.set_attrs(node, info)
        self.stat_cache.admit(node)
        return node

    # ------------------------------------------------------------------ listings
    def listing_in_flight(self, ino: int) -> bool:
        return ino in self._listing

    async def ensure_listed(self, dnode: Node) -> list[Node]:
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
        async with self.meta_sem:
            async for page in self.store.list_pages(prefix, "/"):
                for sub in page.prefixes:
                    name = sub[len(prefix):-1]
                    if not showable(name):
                        continue
                    seen.add(name)
                    node = children.get(name)
                    if node is not None and not node.is_dir:
                        self.detach(node)
                        node = None
                    if node is None:
                        node = self.new_node(dnode, name, True, mtime=self.started)
                    listed.append(node)
                    self.stat_cache.admit(node, now)
                for info in page.objects:
                    rel = info.key[len(prefix):]
                    if not rel:
                        if dnode.meta is None:  # else its metadata object says (rich nodes)
                            dnode.mtime = info.mtime  # the directory's own marker
                        continue
                    is_dir = rel.endswith("/")
                    name = rel[:-1] if is_dir else rel
                    if not showable(name) or (not is_dir and name in seen):
                        continue  # a file shadowed by a directory of the same name
                    seen.add(name)
                    node = children.get(name)
                    if node is not None and not is_dir and node.is_dir and node.plain_marker:
                        listed.append(node)  # an s3fs-style directory object (RwMetadata.load)
                        self.stat_cache.admit(node, now)
                        continue
                    if node is not None and node.is_dir != is_dir:
                        self.detach(node)
                        node = None
                    if is_dir:
                        if node is None:
                            node = self.new_node(dnode, name, True)
                        if node.meta is None:
                            node.mtime = info.mtime
                    elif node is None:  # the common case of a first listing: one step
                        node = self.new_node(dnode, name, False, info.size,
                                             mtimes.setdefault(info.mtime, info.mtime), compact_etag(info.etag))
                    elif not self.is_staged(node.ino):
                        if node.etag != compact_etag(info.etag):
                            self.set_attrs(node, info)
                            node.mtime = mtimes.setdefault(node.mtime, node.mtime)
                    listed.append(node)
                    self.stat_cache.admit(node, now)
        for name in [n for n in children if n not in seen]:
            if not self.is_staged(children[name].ino):
                self.detach(children[name])
        dnode.entries = None
        self.largest_listing = max(self.largest_listing, len(listed))
        if self.stat_cache.enabled:
            self._listed_fresh[dnode.ino] = now + self.stat_cache.ttl
        # keep this answer (it pins its nodes) for the kernel's READDIRPLUS paging, which
        # must page through one list even when the stat cache evicts some of it meanwhile
        dnode.entries = listed
        dnode.entries_until = time.monotonic() + 10.0
        if self.stat_cache.enabled and len(children) >= len(seen):  # larger than the cache: never complete
            dnode.listed_until = now + (min(self.stat_cache.ttl, RW_LISTING_TTL) if dnode.rich else self.stat_cache.ttl)
            self.stat_cache.admit(dnode, now)
        if dnode.rich:
            dnode.listed_once = True
        return listed

    async def readdir(self, ino: int) -> list[Node]:
        dnode = self.dir(ino)
        cached = self.cached_readdir(ino)
        if cached is not None:
            return cached
        if dnode.rich:
            return await self.rw.readdir(dnode)
        entries = await self.ensure_listed(dnode)
        dnode.ahead = False
        self.walk.queue(entries)
        return entries

    async def is_empty_dir(self, prefix: str) -> bool:
        """Three entries tell: the directory's own marker (it sorts first), its metadata
        object, and anything else."""
        own = (prefix, prefix + DIR_META)
        async for page in self.store.list_pages(prefix, "/", page_size=3):
            return not (page.prefixes or any(o.key not in own for o in page.objects))
        return True

    def stats(self) -> dict:
        return {"entries": self.stat_cache.count, "capacity": self.stat_cache.capacity,
                "hits": self.stat_cache.hits, "evictions": self.stat_cache.evictions,
                "inodes": len(self.inodes)}

    def close(self) -> None:
        self.walk.close()
        for task in list(self._listing.values()):
            task.cancel()
