"""The object file system: FileSystemOps over an ObjectStore, in store terms.

Knows nothing of FUSE. A thin façade over four parts, each with one reason to
change:

* `Namespace` (namespace.py) — inodes, lookups, listings, the stat cache;
* `ObjectReader` (reads.py) — object bytes: memory, disk cache, prefetch;
* `WriteBack` (writes.py) — staged writes and their uploads;
* `Mutations` (mutations.py) — every call that changes the bucket.

The façade builds them from Options and wires the few facts they share: an
inode with staged writes is the mount's own (listings leave it alone, reads
come from the staged file); an object that changed drops its cached bytes and
the kernel's page cache. See pailfs.fs.types for the contract and threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from pailfs import errors
from pailfs.fs import state
from pailfs.config import Options
from pailfs.errors import IsADirectory
from pailfs.fs.mutations import Mutations
from pailfs.fs.namespace import Namespace
from pailfs.fs.nodes import Node, compact_etag
from pailfs.fs.reads import ObjectReader
from pailfs.fs.types import ROOT_INO, FrontEnd, SetAttr, StatFs
from pailfs.fs.writes import WriteBack
from pailfs.store.base import ObjectStore

log = logging.getLogger(__name__)

STATS_XATTR = "user.pailfs.stats"
# Reading WARM_XATTR + ".FIRST.COUNT" of a directory on a read-only kernel_cache mount
# puts the small files among its entries FIRST..FIRST+COUNT (listing order) into the
# kernel's page cache; the value says what was done (`pailfs warmup` reads it). Not
# listed by listxattr, so tools that copy xattrs never start one.
WARM_XATTR = "user.pailfs.warm"


class ObjectFileSystem:
    """FileSystemOps over an ObjectStore (see pailfs.fs.types for the contract)."""

    def __init__(self, store: ObjectStore, options: Options) -> None:
        self.store = store
        self.options = options
        self.read_only = options.read_only
        self.keep_cache = bool(options.kernel_cache)
        self.reader = ObjectReader(store, options)
        self.writes = WriteBack(store, options, forget_data=self.reader.discard, attrs_stale=self._attrs_stale)
        self.namespace = Namespace(store, options, is_staged=self.writes.busy,
                                   content_changed=self._content_changed, dropped=self.reader.discard)
        self.mutations = Mutations(store, options, self.namespace, self.writes, self.reader)
        self.entry_timeout = self.namespace.entry_timeout
        self.attr_timeout = self.namespace.attr_timeout
        self.negative_timeout = self.namespace.negative_timeout
        self.kernel_readahead = self.reader.kernel_readahead
        self._front_end: FrontEnd | None = None
        self._replaced: set[int] = set()  # inodes of objects replaced while read: ESTALE
        self._deciding: dict[int, asyncio.Future[bool]] = {}  # _object_replaced in progress
        self.started = time.time()

    def attach(self, loop: asyncio.AbstractEventLoop, front_end: FrontEnd | None = None) -> None:
        self.namespace.attach(loop)
        self._front_end = front_end

    def _content_changed(self, ino: int) -> None:
        self.reader.discard(ino)
        if self._front_end is not None:
            self._front_end.invalidate_inode(ino)

    def _attrs_stale(self, node: Node, exists: bool) -> None:
        """The mount's staged data of node was not uploaded: show what the bucket holds
        (read again at the next stat or open), or nothing if it never held the object."""
        if exists:
            self.namespace.stat_cache.forget(node)
            node.meta = None
            node.etag = None
        else:
            self.namespace.detach(node)
        self._content_changed(node.ino)

    # ------------------------------------------------------------------ hot path
    def cached_lookup(self, parent: int, name: str) -> Node | None:
        return self.namespace.cached_lookup(parent, name)

    def cached_getattr(self, ino: int) -> Node | None:
        return self.namespace.cached_getattr(ino)

    def cached_readdir(self, ino: int) -> list[Node] | None:
        return self.namespace.cached_readdir(ino)

    def opendir(self, ino: int) -> None:
        self.namespace.forget_listing(ino)

    def cached_read(self, ino: int, offset: int, size: int) -> bytes | memoryview | None:
        if self.writes.busy(ino):
            return None
        return self.reader.cached(ino, offset, size)

    def ref(self, attr: Node) -> None:
        self.namespace.ref(attr)

    def forget(self, ino: int, nlookup: int) -> None:
        self.namespace.forget(ino, nlookup)

    # ------------------------------------------------------------------ metadata
    async def lookup(self, parent: int, name: str) -> Node:
        return await self.namespace.lookup(parent, name)

    async def getattr(self, ino: int) -> Node:
        return await self.namespace.getattr(ino)

    async def readdir(self, ino: int) -> list[Node]:
        return await self.namespace.readdir(ino)

    async def statfs(self) -> StatFs:
        return StatFs()

    # ------------------------------------------------------------------ data
    async def read(self, ino: int, offset: int, size: int) -> bytes | memoryview:
        node = self.namespace.node(ino)
        if node.is_dir:
            raise IsADirectory(node.key())
        if self.writes.busy(ino):
            return await self.writes.read(node, offset, size)
        if node.etag is None:
            await self.namespace.getattr(ino)
        if ino in self._replaced:
            raise errors.PreconditionFailed(f"read {node.key()}: the object was replaced since it was opened; "
                                            "open it again")
        try:
            return await self.reader.read(node, offset, size)
        except errors.PreconditionFailed:
            if not await self._object_replaced(node):
                return await self.reader.read(node, offset, size)
            raise

    async def _object_replaced(self, node: Node) -> bool:
        """A conditional range GET of node failed: the object was replaced (or deleted)
        since the mount learned its version. If some of the old version was read, the
        inode keeps meaning that version (NFS's stale handle): its reads fail from now
        on, never mixing two versions; the name gets a new inode for the object as it
        is now and the kernel forgets its cached entry, so the next open sees that.
        Returns False when the read may simply go on: nothing was read yet (the file is
        the new object now), or the store refused the very ETag it lists (conditional
        reads are then turned off)."""
        if node.ino in self._replaced:
            return True
        deciding = self._deciding.get(node.ino)
        if deciding is not None:  # the kernel's readahead sends several READs: one decides
            return await asyncio.shield(deciding)
        deciding = self._deciding[node.ino] = asyncio.get_running_loop().create_future()
        try:
            stale = await self._decide_replaced(node)
            deciding.set_result(stale)
            return stale
        finally:
            del self._deciding[node.ino]

    async def _decide_replaced(self, node: Node) -> bool:
        try:
            async with self.namespace.meta_sem:
                info = await self.store.head(node.key())
        except errors.NotFound:
            info = None
        except errors.StoreError:
            self._replaced.add(node.ino)  # stale all the same; the name is looked up again later
            return True
        if info is not None and compact_etag(info.etag) == node.etag:
            log.warning("%s answers 412 to If-Match with the ETag it lists; large files are read without it "
                        "(a reader may then see two versions of an object replaced mid-read)", self.store.url)
            self.reader.conditional = False
            return False
        if info is not None and not self.reader.handed_out(node.ino):
            self.namespace.set_attrs(node, info)  # drops what pailfs and the kernel hold of it
            self.namespace.stat_cache.admit(node)
            return False
        self._replaced.add(node.ino)
        self.reader.discard(node.ino)
        parent, name = node.parent, node.name
        self.namespace.replace(node, info)
        if self._front_end is not None:
            self._front_end.invalidate_inode(node.ino)
            if parent is not None:
                self._front_end.invalidate_entry(parent.ino, name)
        return True

    async def read_handle(self, ino: int, fh: int, offset: int, size: int) -> bytes | memoryview:
        return await self.read(ino, offset, size)

    # ------------------------------------------------------------------ xattrs
    def stats(self) -> dict:
        return {
            "store": self.store.stats.as_dict(),
            "stat_cache": self.namespace.stats(),
            "data_cache": self.reader.stats(),
            "kernel_requests": self._front_end.request_counts() if self._front_end is not None else {},
            "read_only": self.read_only,
            "uptime_s": round(time.time() - self.started, 1),
        }

    async def getxattr(self, ino: int, name: str) -> bytes:
        if ino == ROOT_INO and name == STATS_XATTR:
            return json.dumps(self.stats()).encode()
        if name.startswith(WARM_XATTR + ".") and self.read_only and self.keep_cache and self._front_end is not None:
            return await self._warm(ino, name)
        if self.read_only:
            self.namespace.node(ino)
            raise errors.NoSuchAttribute(name)
        return await self.mutations.getxattr(ino, name)

    async def _warm(self, ino: int, name: str) -> bytes:
        try:
            first, count = (int(n) for n in name[len(WARM_XATTR) + 1:].split("."))
        except ValueError:
            raise errors.NoSuchAttribute(name) from None
        entries = await self.namespace.readdir(ino)
        assert self._front_end is not None
        files, size, missed = await self.reader.warm(entries[max(first, 0):max(first, 0) + max(count, 0)],
                                                     self._front_end.store_pages)
        return json.dumps({"files": files, "bytes": size, "missed": missed,
                           "small": self.reader.small_max}).encode()

    async def listxattr(self, ino: int) -> list[str]:
        names = [] if self.read_only else await self.mutations.listxattr(ino)
        return [STATS_XATTR, *names] if ino == ROOT_INO else names

    async def setxattr(self, ino: int, name: str, value: bytes, flags: int) -> None:
        if ino == ROOT_INO and name == STATS_XATTR:
            raise errors.NotPermitted(f"{STATS_XATTR} is computed by the mount")
        await self.mutations.setxattr(ino, name, value, flags)

    async def removexattr(self, ino: int, name: str) -> None:
        await self.mutations.removexattr(ino, name)

    # ------------------------------------------------------------------ read-write
    async def open(self, ino: int, flags: int) -> int:
        return await self.mutations.open(ino, flags)

    async def create(self, parent: int, name: str, mode: int, flags: int) -> tuple[Node, int]:
        return await self.mutations.create(parent, name, mode, flags)

    async def mknod(self, parent: int, name: str, mode: int, rdev: int) -> Node:
        return await self.mutations.mknod(parent, name, mode, rdev)

    async def link(self, ino: int, new_parent: int, new_name: str) -> Node:
        return await self.mutations.link(ino, new_parent, new_name)

    async def write(self, ino: int, fh: int, offset: int, data: bytes) -> int:
        return await self.mutations.write(ino, fh, offset, data)

    async def flush(self, ino: int, fh: int) -> None:
        await self.mutations.flush(ino, fh)

    async def fsync(self, ino: int, fh: int, datasync: bool) -> None:
        await self.mutations.flush(ino, fh)

    async def release(self, ino: int, fh: int) -> None:
        await self.mutations.release(ino, fh)

    async def setattr(self, ino: int, fh: int | None, changes: SetAttr) -> Node:
        return await self.mutations.setattr(ino, fh, changes)

    async def mkdir(self, parent: int, name: str, mode: int) -> Node:
        return await self.mutations.mkdir(parent, name, mode)

    async def unlink(self, parent: int, name: str) -> None:
        await self.mutations.unlink(parent, name)

    async def rmdir(self, parent: int, name: str) -> None:
        await self.mutations.rmdir(parent, name)

    async def rename(self, parent: int, name: str, new_parent: int, new_name: str, *,
                     noreplace: bool = False, exchange: bool = False) -> None:
        await self.mutations.rename(parent, name, new_parent, new_name, noreplace=noreplace, exchange=exchange)

    async def symlink(self, parent: int, name: str, target: str) -> Node:
        return await self.mutations.symlink(parent, name, target)

    async def readlink(self, ino: int) -> str:
        return await self.mutations.readlink(ino)

    # ------------------------------------------------------------------ handover (pailfs.fs.state)
    async def export_state(self) -> tuple[dict, list[int]]:
        return await state.export_state(self)

    def import_state(self, data: dict, fds: list[int]) -> None:
        state.import_state(self, data, fds)

    def forget_exported(self) -> None:
        state.forget_exported(self)

    async def close(self) -> None:
        self.namespace.close()
        await self.writes.close()
        self.reader.close()
