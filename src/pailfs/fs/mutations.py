"""Every call of a read-write mount that changes the bucket: create, open for
writing, write, setattr, mkdir, unlink, rmdir, rename, symlink, mknod, the
extended attributes.

File data goes through WriteBack (staged, uploaded on flush/close); namespace
changes are made in the store first, then in the inode tree, so a failed
request leaves the tree as the bucket is, and a metadata change that could not
be stored is undone in memory too (never EIO with a changed result).

Times follow POSIX: a new inode gets atime = mtime = ctime = now; a write or a
truncation moves mtime and ctime; chmod, chown, utimens, rename and xattr
changes move ctime; adding or removing an entry moves its directory's mtime
and ctime (in memory: a directory's stored metadata changes only by chmod,
chown, utimens and xattrs). All are stored as s3fs-style x-amz-meta-mtime,
-ctime and -atime with nine decimals; a directory's in its DIR_META object.

Runs on the file system's loop.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time

from pailfs import errors
from pailfs.config import Options
from pailfs.errors import (
    DirectoryNotEmpty, IsADirectory, NoSpace, NoSuchAttribute, NotADirectory, NotPermitted, NotSupported,
    ReadOnly,
)
from pailfs.fs.namespace import Namespace
from pailfs.fs.rw_metadata import RW_LISTING_TTL
from pailfs.fs.nodes import (
    DIR_CONTENT_TYPE, DIR_CONTENT_TYPES, DIR_META, NS, XATTR_META_MAX, Node, compact_etag, content_type_of,
    encode_xattrs, object_metadata,
)
from pailfs.fs.reads import ObjectReader
from pailfs.fs.types import SetAttr
from pailfs.fs.writes import WriteBack
from pailfs.store.base import ObjectStore

NAME_MAX = 255        # bytes in one name (Linux, and S3 servers such as SeaweedFS)
MAX_KEY_BYTES = 1024  # S3: a key is at most 1024 bytes
XATTR_CREATE = 1      # setxattr(2) flags
XATTR_REPLACE = 2
XATTR_NAMESPACE = "user."  # the only extended attributes stored (the kernel keeps others to itself)


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
        if name == DIR_META:
            raise NotPermitted(f"{DIR_META} is reserved for directory metadata")

    async def _existing(self, parent: int, name: str) -> Node | None:
        """What a name about to be created names now (the store is asked, unless it just
        answered the kernel's LOOKUP of it)."""
        if self.ns.just_probed_missing(parent, name):
            return None
        return await self.ns.lookup_or_none(parent, name)

    async def _new_name(self, parent: int, name: str) -> Node:
        """The parent directory of a name about to be created; EEXIST if it exists."""
        pnode = self.ns.dir(parent)
        self._check_new_name(pnode, name)
        if await self._existing(parent, name) is not None:
            raise errors.AlreadyExists(pnode.child_key(name))
        return pnode

    def _new_node(self, pnode: Node, name: str, is_dir: bool, mode: int) -> Node:
        """A node this mount creates: its times now, its mode its own."""
        now = time.time_ns()
        node = self.ns.new_node(pnode, name, is_dir)
        node.mtime_ns = node.ctime_ns = node.atime_ns = now
        node.meta = (mode, None, None)
        self.ns.forget_missing(pnode.ino, name)
        return node

    @staticmethod
    def _dir_changed(pnode: Node, now: int | None = None) -> None:
        """An entry was added or removed: the directory's mtime and ctime move (in memory)."""
        if pnode.rich:
            pnode.touch(time.time_ns() if now is None else now)

    async def _with_metadata(self, node: Node) -> Node:
        """A node whose stored metadata is known, so that writing it back keeps it."""
        if node.meta is None and node.rich:
            node = await self.ns.rw.load(node)
        return node

    async def _save(self, node: Node, snapshot: tuple) -> None:
        """Store a metadata change; if that fails, undo it in memory too."""
        try:
            await self.writes.save_metadata(node)
        except BaseException:
            node.meta, node.mtime_ns, node.ctime_ns, node.atime_ns, node.xattrs = snapshot
            raise

    @staticmethod
    def _snapshot(node: Node) -> tuple:
        return node.meta, node.mtime_ns, node.ctime_ns, node.atime_ns, node.xattrs

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
        if node.rich and not flags & os.O_TRUNC:
            # close-to-open: what another client changed since is seen now (one HEAD)
            node = await self.ns.rw.revalidate(node)
            if node.is_dir:
                raise IsADirectory(node.key())
        return await self.writes.open(node, flags)

    async def create(self, parent: int, name: str, mode: int, flags: int) -> tuple[Node, int]:
        self._writable()
        pnode = self.ns.dir(parent)
        self._check_new_name(pnode, name)
        existing = await self._existing(parent, name)
        if existing is not None:  # created meanwhile by another client
            if flags & os.O_EXCL:
                raise errors.AlreadyExists(existing.key())
            return existing, await self.open(existing.ino, flags)
        node = self._new_node(pnode, name, False, stat.S_IFREG | (mode & 0o7777))
        fh = await self.writes.create(node, flags)
        self.ns.stat_cache.admit(node)
        self._dir_changed(pnode, node.mtime_ns)
        return node, fh

    async def mknod(self, parent: int, name: str, mode: int, rdev: int) -> Node:
        self._writable()
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            node, fh = await self.create(parent, name, stat.S_IMODE(mode), os.O_WRONLY | os.O_EXCL)
            await self.writes.release(node, fh)
            return node
        if kind not in (stat.S_IFIFO, stat.S_IFSOCK):
            raise NotPermitted("device files cannot be stored in an object store (FIFOs and sockets can)")
        # a FIFO or a socket: an empty object whose mode metadata says what it is (s3fs-fuse's way)
        pnode = await self._new_name(parent, name)
        node = self._new_node(pnode, name, False, kind | stat.S_IMODE(mode))
        try:
            info = await self.store.put(node.key(), b"", object_metadata(node),
                                        content_type="application/octet-stream")
        except BaseException:
            self.ns.detach(node)
            raise
        node.size, node.etag = 0, compact_etag(info.etag)
        self.ns.stat_cache.admit(node)
        self._dir_changed(pnode, node.mtime_ns)
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
        node = await self._with_metadata(self.ns.node(ino))
        now = time.time_ns()
        if changes.size is not None:
            if node.is_dir:
                raise IsADirectory(node.key())
            if self.options.nodelete and changes.size < node.size:
                raise NotPermitted("truncation is disabled on this mount (nodelete)")
            await self.writes.truncate(node, fh, changes.size)  # moves mtime and ctime
        snapshot = self._snapshot(node)
        owner_or_mode = changes.mode is not None or changes.uid is not None or changes.gid is not None
        if owner_or_mode:
            old = node.meta or (None, None, None)
            mode = (stat.S_IFMT(node.mode) | (changes.mode & 0o7777)) if changes.mode is not None else old[0]
            node.meta = (mode, changes.uid if changes.uid is not None else old[1],
                         changes.gid if changes.gid is not None else old[2])
        atime = changes.atime_ns if changes.atime_ns is not None else (
            None if changes.atime is None else round(changes.atime * NS))
        mtime = changes.mtime_ns if changes.mtime_ns is not None else (
            None if changes.mtime is None else round(changes.mtime * NS))
        if node.rich:
            if atime is not None:
                node.atime_ns = atime
            if mtime is not None:
                node.mtime_ns = mtime
            if owner_or_mode or atime is not None or mtime is not None:
                node.ctime_ns = now
        elif mtime is not None:
            node.mtime_ns = mtime
        if owner_or_mode or atime is not None or mtime is not None:
            await self._save(node, snapshot)
        self.ns.stat_cache.admit(node)
        return node

    # ------------------------------------------------------------------ directories
    async def mkdir(self, parent: int, name: str, mode: int) -> Node:
        self._writable()
        pnode = await self._new_name(parent, name)
        node = self._new_node(pnode, name, True, stat.S_IFDIR | (mode & 0o7777))
        key = node.key()
        try:
            # the marker (metadata too, for stores and tools that keep it on markers), then
            # the metadata object, which every store keeps (SeaweedFS drops marker metadata)
            await self.store.put(key, b"", object_metadata(node), content_type=DIR_CONTENT_TYPE)
            await self.store.put(key + DIR_META, b"", object_metadata(node))
        except BaseException:
            self.ns.detach(node)
            raise
        self.ns.stat_cache.admit(node)
        node.listed_once = True  # known to be empty
        if self.ns.stat_cache.enabled:
            node.listed_until = time.monotonic() + min(self.ns.stat_cache.ttl, RW_LISTING_TTL)
        self._dir_changed(pnode, node.mtime_ns)
        return node

    async def unlink(self, parent: int, name: str) -> None:
        self._deletable()
        node = await self.ns.lookup(parent, name)
        if node.is_dir:
            raise IsADirectory(node.key())
        await self.writes.discard(node)  # before the delete: open handles never upload it again
        await self.store.delete(node.key())
        now = time.time_ns()
        if node.rich:
            node.touch(now, modified=False)
        self.ns.detach(node)
        self.ns.remember_missing(parent, name)
        self._dir_changed(self.ns.dir(parent), now)

    async def rmdir(self, parent: int, name: str) -> None:
        self._deletable()
        node = await self.ns.lookup(parent, name)
        if not node.is_dir:
            raise NotADirectory(node.key())
        prefix = node.key()
        if not await self.ns.is_empty_dir(prefix):
            raise DirectoryNotEmpty(prefix)
        # children before the parent: a store (SeaweedFS) keeps a directory that still
        # had entries when its marker went
        await self.store.delete_many([prefix + DIR_META, prefix])
        await self._delete_plain_marker(prefix[:-1], node)
        self.ns.detach(node)
        self.ns.remember_missing(parent, name)
        self._dir_changed(self.ns.dir(parent))

    async def _delete_plain_marker(self, key: str, node: Node) -> None:
        """An s3fs-style directory object `name` (no trailing '/') goes with its directory."""
        if not node.plain_marker:
            try:
                info = await self.store.head(key)
            except errors.NotFound:
                return
            if info.size or (info.content_type or "").split(";")[0].strip() not in DIR_CONTENT_TYPES:
                return  # a file that a directory of the same name shadows: not ours to delete
        await self.store.delete(key)

    async def rename(self, parent: int, name: str, new_parent: int, new_name: str, *,
                     noreplace: bool = False, exchange: bool = False) -> None:
        self._writable()
        if exchange:
            raise NotSupported("RENAME_EXCHANGE is not supported: object stores have no atomic swap")
        src_dir = self.ns.dir(parent)
        dst_dir = self.ns.dir(new_parent)
        self._check_new_name(dst_dir, new_name)
        node = await self.ns.lookup(parent, name)
        target = await self.ns.lookup_or_none(new_parent, new_name)
        if target is node:
            return
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
        if node.is_dir and dst_dir.key().startswith(node.key()):
            raise errors.InvalidArgument(f"cannot move {node.key()} into itself")
        now = time.time_ns()
        new_key = dst_dir.child_key(new_name)
        if node.is_dir:
            await self._rename_dir(node, new_key + "/", now)
        else:
            await self.writes.flush_all(node)
            if target is not None:
                await self.writes.discard(target)  # its open handles must never upload over new_key
            node = await self._with_metadata(node)
            snapshot = self._snapshot(node)
            if node.rich:
                node.touch(now, modified=False)
            try:
                await self.store.copy(node.key(), new_key, object_metadata(node),
                                      content_type=content_type_of(new_name))
            except BaseException:
                node.meta, node.mtime_ns, node.ctime_ns, node.atime_ns, node.xattrs = snapshot
                raise
            await self.store.delete(node.key())
        if target is not None and not target.is_dir:
            self.ns.detach(target)
            self.reader.discard(target.ino)
        self.ns.move(node, dst_dir, new_name)
        self._forget_read_state(node)  # readers of the old key: their next read uses the new one
        self.ns.remember_missing(parent, name)
        self._dir_changed(src_dir, now)
        self._dir_changed(dst_dir, now)

    def _forget_read_state(self, node: Node) -> None:
        stack = [node]
        while stack:
            current = stack.pop()
            self.reader.discard(current.ino)
            if current.children:
                stack.extend(current.children.values())

    async def _rename_dir(self, node: Node, new_prefix: str, now: int) -> None:
        old_prefix = node.key()
        for st in list(self.writes.staged.values()):  # their keys change with the move
            if st.node.key().startswith(old_prefix):
                await self.writes.flush_all(st.node)
        listing = await self.store.list(old_prefix)
        keys = [o.key for o in listing.objects]
        limit = self.options.dir_rename_limit
        if len(keys) > limit:
            raise errors.TooManyObjects(
                f"renaming {old_prefix} would copy {len(keys)} objects (dir_rename_limit={limit})")
        node = await self._with_metadata(node)
        snapshot = self._snapshot(node)
        if node.rich:
            node.touch(now, modified=False)
        sem = asyncio.Semaphore(self.options.parallel_count)

        async def copy(key: str) -> None:
            async with sem:
                await self.store.copy(key, new_prefix + key[len(old_prefix):])

        try:
            # markers first, parents before children: a store that makes directories
            # (SeaweedFS) shows a marker written after the directory exists as no object
            # (some stores cannot copy directory objects either: they are written anew)
            for marker in sorted({old_prefix, *(k for k in keys if k.endswith("/"))}):
                await self.store.put(new_prefix + marker[len(old_prefix):], b"", content_type=DIR_CONTENT_TYPE)
            await asyncio.gather(*(copy(k) for k in keys if not k.endswith("/") and k != old_prefix + DIR_META))
            await self.store.put(new_prefix + DIR_META, b"", object_metadata(node))  # with the new ctime
        except BaseException:
            node.meta, node.mtime_ns, node.ctime_ns, node.atime_ns, node.xattrs = snapshot
            raise
        # children before parents (reverse order puts every key after its prefix's
        # descendants): no store re-creates a directory whose marker went first
        await self.store.delete_many(sorted(keys, reverse=True))
        if node.plain_marker:
            await self.store.delete(old_prefix[:-1])
            node.plain_marker = False

    # ------------------------------------------------------------------ symlinks
    async def symlink(self, parent: int, name: str, target: str) -> Node:
        self._writable()
        pnode = await self._new_name(parent, name)
        node = self._new_node(pnode, name, False, stat.S_IFLNK | 0o777)
        data = target.encode("utf-8", "surrogateescape")
        try:
            info = await self.store.put(node.key(), data, object_metadata(node), content_type=content_type_of(name))
        except BaseException:
            self.ns.detach(node)
            raise
        node.size, node.etag = len(data), compact_etag(info.etag)
        self.reader.remember(node.ino, data)
        self.ns.stat_cache.admit(node)
        self._dir_changed(pnode, node.mtime_ns)
        return node

    async def readlink(self, ino: int) -> str:
        node = self.ns.node(ino)
        data = self.reader.memory.get(ino) or await self.store.get(node.key())
        return data.decode("utf-8", "surrogateescape")

    # ------------------------------------------------------------------ xattrs
    # Stored as s3fs-fuse stores them: one x-amz-meta-xattr, a URL-encoded JSON object
    # of name -> base64 value; user.* names only; at most XATTR_META_MAX bytes encoded.
    async def getxattr(self, ino: int, name: str) -> bytes:
        node = await self._with_metadata(self.ns.node(ino))
        if node.xattrs and name in node.xattrs:
            return node.xattrs[name]
        raise NoSuchAttribute(name)

    async def listxattr(self, ino: int) -> list[str]:
        node = await self._with_metadata(self.ns.node(ino))
        return sorted(node.xattrs or ())

    async def setxattr(self, ino: int, name: str, value: bytes, flags: int) -> None:
        self._writable()
        if not name.startswith(XATTR_NAMESPACE):
            raise NotSupported(f"only {XATTR_NAMESPACE}* extended attributes are stored")
        node = await self._with_metadata(self.ns.node(ino))
        xattrs = dict(node.xattrs or {})
        if flags & XATTR_CREATE and name in xattrs:
            raise errors.AlreadyExists(f"{node.key()}: extended attribute {name} exists")
        if flags & XATTR_REPLACE and name not in xattrs:
            raise NoSuchAttribute(name)
        xattrs[name] = bytes(value)
        if len(encode_xattrs(xattrs)) > XATTR_META_MAX:
            raise NoSpace(f"{node.key()}: extended attributes take more than {XATTR_META_MAX} bytes "
                          "of object metadata (2 KB in all for S3)")
        await self._set_xattrs(node, xattrs)

    async def removexattr(self, ino: int, name: str) -> None:
        self._writable()
        node = await self._with_metadata(self.ns.node(ino))
        if not node.xattrs or name not in node.xattrs:
            raise NoSuchAttribute(name)
        await self._set_xattrs(node, {k: v for k, v in node.xattrs.items() if k != name})

    async def _set_xattrs(self, node: Node, xattrs: dict[str, bytes]) -> None:
        snapshot = self._snapshot(node)
        node.xattrs = xattrs or None
        node.touch(time.time_ns(), modified=False)
        await self._save(node, snapshot)
