"""Every call of a read-write mount that changes the bucket: create, open for
writing, write, setattr, mkdir, unlink, rmdir, rename, symlink, mknod.

File data goes through WriteBack (staged, uploaded on flush/close); namespace
changes are made in the store first, then in the inode tree, so a failed
request leaves the tree as the bucket is. Runs on the file system's loop.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time

from pailfs import errors
from pailfs.config import Options
from pailfs.errors import (
    DirectoryNotEmpty, IsADirectory, NotADirectory, NotPermitted, NotSupported, ReadOnly,
)
from pailfs.fs.namespace import Namespace
from pailfs.fs.nodes import Node, compact_etag, object_metadata
from pailfs.fs.reads import ObjectReader
from pailfs.fs.types import SetAttr
from pailfs.fs.writes import WriteBack
from pailfs.store.base import ObjectStore

NAME_MAX = 255        # bytes in one name (Linux, and S3 servers such as SeaweedFS)
MAX_KEY_BYTES = 1024  # S3: a key is at most 1024 bytes


class Mutations:
    def __init__(self, store: ObjectStore, options: Options, namespace: Namespace, writes: WriteBack,
                 reader: ObjectReader) -> None:
        self.store = store
        self.options = options
        self.read_only = options.read_only
        self.ns = namespace
        self.writes = writes
        self.reader = reader

    # ------------------------------------------------------------------ checks
    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnly("read-only mount")

    def _deletable(self) -> None:
        self._writable()
        if self.options.nodelete:
            raise NotPermitted("deletion is disabled on this mount (nodelete)")

    @staticmethod
    def _check_new_name(pnode: Node, name: str) -> None:
        """A name this mount would create: at most NAME_MAX bytes, its key at most 1024
        bytes (the S3 limit). Refused here (ENAMETOOLONG) rather than by the store at
        upload time, when close() could only say EIO."""
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX or \
                len(pnode.child_key(name).encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
            raise errors.NameTooLong(f"name or key too long: {pnode.child_key(name)[:80]!r}")

    async def _new_name(self, parent: int, name: str) -> Node:
        """The parent directory of a name about to be created; EEXIST if it exists."""
        pnode = self.ns.dir(parent)
        self._check_new_name(pnode, name)
        if await self.ns.lookup_or_none(parent, name) is not None:
            raise errors.AlreadyExists(pnode.child_key(name))
        return pnode

    # ------------------------------------------------------------------ files
    async def open(self, ino: int, flags: int) -> int:
        node = self.ns.node(ino)
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
        pnode = self.ns.dir(parent)
        self._check_new_name(pnode, name)
        existing = await self.ns.lookup_or_none(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise errors.AlreadyExists(existing.key())
            # created by someone else since the kernel's lookup: O_CREAT alone opens it as it is
            return existing, await self.open(existing.ino, flags)
        node = self.ns.new_node(pnode, name, False, mtime=time.time())
        node.meta = (stat.S_IFREG | (mode & 0o7777), None, None)
        self.ns.forget_missing(parent, name)
        fh = await self.writes.create(node, flags)
        self.ns.stat_cache.admit(node)
        return node, fh

    async def mknod(self, parent: int, name: str, mode: int, rdev: int) -> Node:
        if not stat.S_ISREG(mode):
            self._writable()
            raise NotPermitted("only regular files can be created on an object store")
        node, fh = await self.create(parent, name, stat.S_IMODE(mode), os.O_WRONLY | os.O_EXCL)
        await self.writes.release(node, fh)
        return node

    async def link(self, ino: int, new_parent: int, new_name: str) -> Node:
        self._writable()
        raise NotSupported("hard links are not supported on an object store")

    async def write(self, ino: int, fh: int, offset: int, data: bytes) -> int:
        self._writable()
        return await self.writes.write(self.ns.node(ino), fh, offset, data)

    async def flush(self, ino: int, fh: int) -> None:
        await self.writes.flush(self.ns.node(ino), fh)

    async def release(self, ino: int, fh: int) -> None:
        node = self.ns.inodes.get(ino)
        if node is not None:
            await self.writes.release(node, fh)

    async def setattr(self, ino: int, fh: int | None, changes: SetAttr) -> Node:
        self._writable()
        node = self.ns.node(ino)
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
        self.ns.stat_cache.admit(node)
        return node

    # ------------------------------------------------------------------ directories
    async def mkdir(self, parent: int, name: str, mode: int) -> Node:
        self._writable()
        pnode = await self._new_name(parent, name)
        node = self.ns.new_node(pnode, name, True, mtime=time.time())
        if mode & 0o7777 != self.ns.look.dir_mode:
            node.meta = (stat.S_IFDIR | (mode & 0o7777), None, None)
        await self.store.put(node.key(), b"", object_metadata(node))
        self.ns.forget_missing(parent, name)
        self.ns.stat_cache.admit(node)
        if self.ns.stat_cache.enabled:
            node.listed_until = time.monotonic() + self.ns.stat_cache.ttl
        return node

    async def unlink(self, parent: int, name: str) -> None:
        self._deletable()
        node = await self.ns.lookup(parent, name)
        if node.is_dir:
            raise IsADirectory(node.key())
        await self.writes.discard(node)
        await self.store.delete(node.key())
        self.ns.detach(node)
        self.ns.remember_missing(parent, name)

    async def rmdir(self, parent: int, name: str) -> None:
        self._deletable()
        node = await self.ns.lookup(parent, name)
        if not node.is_dir:
            raise NotADirectory(node.key())
        prefix = node.key()
        if not await self.ns.is_empty_dir(prefix):
            raise DirectoryNotEmpty(prefix)
        await self.store.delete(prefix)
        self.ns.detach(node)
        self.ns.remember_missing(parent, name)

    async def rename(self, parent: int, name: str, new_parent: int, new_name: str, *,
                     noreplace: bool = False, exchange: bool = False) -> None:
        self._writable()
        if exchange:
            raise NotSupported("RENAME_EXCHANGE is not supported: object stores have no atomic swap")
        dst_dir = self.ns.dir(new_parent)
        self._check_new_name(dst_dir, new_name)
        node = await self.ns.lookup(parent, name)
        target = await self.ns.lookup_or_none(new_parent, new_name)
        if target is not None:
            if noreplace:
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
        if target is not None and not target.is_dir:
            self.ns.detach(target)
        self.ns.move(node, dst_dir, new_name)
        self.ns.remember_missing(parent, name)

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

    # ------------------------------------------------------------------ symlinks
    async def symlink(self, parent: int, name: str, target: str) -> Node:
        self._writable()
        pnode = await self._new_name(parent, name)
        node = self.ns.new_node(pnode, name, False, mtime=time.time())
        node.meta = (stat.S_IFLNK | 0o777, None, None)
        data = target.encode("utf-8", "surrogateescape")
        info = await self.store.put(node.key(), data, object_metadata(node))
        node.size, node.etag = len(data), compact_etag(info.etag)
        self.reader.remember(node.ino, data)
        self.ns.stat_cache.admit(node)
        return node

    async def readlink(self, ino: int) -> str:
        node = self.ns.node(ino)
        data = self.reader.memory.get(ino) or await self.store.get(node.key())
        return data.decode("utf-8", "surrogateescape")

    # ------------------------------------------------------------------ xattrs
    async def setxattr(self, ino: int, name: str, value: bytes, flags: int) -> None:
        self._writable()
        raise NotSupported("extended attributes are not stored")

    async def removexattr(self, ino: int, name: str) -> None:
        self._writable()
        raise NotSupported("extended attributes are not stored")
