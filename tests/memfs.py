"""An in-memory FileSystemOps: a test double of the fs core for testing the FUSE front end.

`MemFS(read_only=True)` behaves like a data-set mount (ReadOnly on every change,
long timeouts); `MemFS(read_only=False)` is a small read-write file system with
handles. Every call is counted in `calls` (method name -> count) so tests can
assert which path the front end took. `cache` chooses what the cached_* methods
answer: "always" (from memory), "never" (None: every request goes cold) or
"lazy" (an inode is answered from memory once a coroutine has seen it, like a
real cache). `delay` makes each coroutine sleep first (a slow store).
"""

from __future__ import annotations

import dataclasses

import asyncio
import collections
import os
import stat
import threading
import time
from dataclasses import dataclass, field

from pailfs.errors import (
    AlreadyExists, DirectoryNotEmpty, InvalidArgument, IsADirectory, NoSuchAttribute, NotADirectory,
    NotFound, NotPermitted, NotSupported, ReadOnly,
)
from pailfs.fs.types import ROOT_INO, Attr, SetAttr, StatFs


@dataclass
class MemNode:
    attr: Attr
    data: bytes = b""
    children: dict[str, int] | None = None   # dirs: name -> ino
    target: str = ""                          # symlinks
    xattrs: dict[str, bytes] = field(default_factory=dict)
    parent: int = ROOT_INO


class MemFS:
    def __init__(self, read_only: bool = True, *, cache: str = "always", delay: float = 0.0,
                 entry_timeout: float | None = None, attr_timeout: float | None = None,
                 negative_timeout: float = 0.0, keep_cache: bool | None = None) -> None:
        self.read_only = read_only
        self.entry_timeout = entry_timeout if entry_timeout is not None else (3600.0 if read_only else 1.0)
        self.attr_timeout = attr_timeout if attr_timeout is not None else (3600.0 if read_only else 1.0)
        self.negative_timeout = negative_timeout
        self.keep_cache = keep_cache if keep_cache is not None else read_only
        self.cache = cache
        self.delay = delay
        self.fail: dict[str, BaseException] = {}  # name -> exception lookup raises
        self.calls: collections.Counter[str] = collections.Counter()
        self.refs: collections.Counter[int] = collections.Counter()
        self.uid, self.gid = os.getuid(), os.getgid()
        self.nodes: dict[int, MemNode] = {}
        self._warm: set[int] = set()
        self._next_ino = ROOT_INO
        self._handles: dict[int, tuple[int, bytearray, bool]] = {}  # fh -> (ino, buffer, dirty)
        self._next_fh = 1
        self._lock = threading.Lock()
        self._new(stat.S_IFDIR | 0o755, parent=ROOT_INO, children={})
        self._entries: dict[int, list[Attr]] = {}

    def attach(self, loop, front_end=None) -> None:
        self.loop, self.front_end = loop, front_end

    # ------------------------------------------------------------------ building
    def _new(self, mode: int, parent: int, data: bytes = b"", children: dict | None = None,
             target: str = "", mtime: float | None = None) -> MemNode:
        ino = self._next_ino
        self._next_ino += 1
        size = len(target.encode()) if stat.S_ISLNK(mode) else len(data)
        attr = Attr(ino, size, mode, self.uid, self.gid, time.time() if mtime is None else mtime,
                    nlink=2 if stat.S_ISDIR(mode) else 1)
        node = MemNode(attr, data, children, target, parent=parent)
        self.nodes[ino] = node
        return node

    def _dir_of(self, path: str, create: bool = True) -> int:
        ino = ROOT_INO
        for part in [p for p in path.split("/") if p]:
            children = self.nodes[ino].children
            assert children is not None
            if part not in children:
                if not create:
                    raise NotFound(path)
                children[part] = self._new(stat.S_IFDIR | 0o755, ino, children={}).attr.ino
                self._entries.pop(ino, None)
            ino = children[part]
        return ino

    def add_file(self, path: str, data: bytes, mode: int = 0o644, mtime: float | None = None,
                 xattrs: dict[str, bytes] | None = None) -> int:
        parent, _, name = path.rpartition("/")
        pino = self._dir_of(parent)
        node = self._new(stat.S_IFREG | mode, pino, data=data, mtime=mtime)
        node.xattrs.update(xattrs or {})
        self.nodes[pino].children[name] = node.attr.ino  # type: ignore[index]
        self._entries.pop(pino, None)
        return node.attr.ino

    def add_dir(self, path: str) -> int:
        return self._dir_of(path)

    def cold_calls(self) -> int:
        return sum(n for name, n in self.calls.items() if not name.startswith("cached_")
                   and name not in ("ref", "forget"))

    # ------------------------------------------------------------------ helpers
    def _node(self, ino: int) -> MemNode:
        node = self.nodes.get(ino)
        if node is None:
            raise NotFound(f"inode {ino}")
        return node

    def _dir(self, ino: int) -> MemNode:
        node = self._node(ino)
        if node.children is None:
            raise NotADirectory(str(ino))
        return node

    def _hit(self, ino: int) -> bool:
        return self.cache == "always" or (self.cache == "lazy" and ino in self._warm)

    async def _cold(self, name: str) -> None:
        self.calls[name] += 1
        if self.delay:
            await asyncio.sleep(self.delay)

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnly("read-only")

    def _changed(self, dir_ino: int) -> None:
        self._entries.pop(dir_ino, None)
        self.nodes[dir_ino].attr.mtime = time.time()

    # ------------------------------------------------------------------ hot path
    def cached_lookup(self, parent: int, name: str) -> Attr | None:
        self.calls["cached_lookup"] += 1
        if not self._hit(parent) or name in self.fail:
            return None
        pnode = self.nodes.get(parent)
        if pnode is None or pnode.children is None:
            return None
        ino = pnode.children.get(name)
        if ino is None:
            raise NotFound(name)
        if not self._hit(ino):
            return None
        return self.nodes[ino].attr

    def cached_getattr(self, ino: int) -> Attr | None:
        self.calls["cached_getattr"] += 1
        if not self._hit(ino):
            return None
        node = self.nodes.get(ino)
        return node.attr if node is not None else None

    def opendir(self, ino: int) -> None:
        return None

    def cached_readdir(self, ino: int) -> list[Attr] | None:
        self.calls["cached_readdir"] += 1
        if not self._hit(ino):
            return None
        return self._listing(ino)

    def cached_read(self, ino: int, offset: int, size: int) -> bytes | None:
        self.calls["cached_read"] += 1
        if not self._hit(ino):
            return None
        node = self.nodes.get(ino)
        return None if node is None else node.data[offset:offset + size]

    def _listing(self, ino: int) -> list[Attr]:
        entries = self._entries.get(ino)
        if entries is None:
            children = self._dir(ino).children or {}
            entries = [dataclasses.replace(self.nodes[c].attr, name=name) for name, c in sorted(children.items())]
            self._entries[ino] = entries
        return entries

    # ------------------------------------------------------------------ cold path
    async def lookup(self, parent: int, name: str) -> Attr:
        await self._cold("lookup")
        if name in self.fail:
            raise self.fail[name]
        ino = (self._dir(parent).children or {}).get(name)
        if ino is None:
            raise NotFound(name)
        self._warm.update((parent, ino))
        return self.nodes[ino].attr

    async def getattr(self, ino: int) -> Attr:
        await self._cold("getattr")
        self._warm.add(ino)
        return self._node(ino).attr

    async def readdir(self, ino: int) -> list[Attr]:
        await self._cold("readdir")
        entries = self._listing(ino)
        self._warm.add(ino)
        self._warm.update(a.ino for a in entries)
        return entries

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        await self._cold("read")
        node = self._node(ino)
        if node.children is not None:
            raise IsADirectory(str(ino))
        self._warm.add(ino)
        return node.data[offset:offset + size]

    async def statfs(self) -> StatFs:
        await self._cold("statfs")
        return StatFs(blocks=1000, bfree=500, bavail=400, files=100, ffree=50)

    async def getxattr(self, ino: int, name: str) -> bytes:
        await self._cold("getxattr")
        value = self._node(ino).xattrs.get(name)
        if value is None:
            raise NoSuchAttribute(name)
        return value

    async def listxattr(self, ino: int) -> list[str]:
        await self._cold("listxattr")
        return sorted(self._node(ino).xattrs)

    # ------------------------------------------------------------------ references
    def ref(self, attr) -> None:
        self.calls["ref"] += 1
        with self._lock:
            self.refs[attr.ino] += 1

    def forget(self, ino: int, nlookup: int) -> None:
        self.calls["forget"] += 1
        with self._lock:
            self.refs[ino] -= nlookup
            if self.refs[ino] == 0:
                del self.refs[ino]

    # ------------------------------------------------------------------ read-write
    async def open(self, ino: int, flags: int) -> int:
        await self._cold("open")
        node = self._node(ino)
        if node.children is not None:
            raise IsADirectory(str(ino))
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self._writable()
        data = bytearray() if flags & os.O_TRUNC else bytearray(node.data)
        return self._handle(ino, data, dirty=bool(flags & os.O_TRUNC))

    def _handle(self, ino: int, data: bytearray, dirty: bool = False) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (ino, data, dirty)
        return fh

    async def create(self, parent: int, name: str, mode: int, flags: int) -> tuple[Attr, int]:
        await self._cold("create")
        self._writable()
        pnode = self._dir(parent)
        assert pnode.children is not None
        if name in pnode.children:
            if flags & os.O_EXCL:
                raise AlreadyExists(name)
            ino = pnode.children[name]
            return self.nodes[ino].attr, await self.open(ino, flags | os.O_TRUNC)
        node = self._new(stat.S_IFREG | mode, parent)
        pnode.children[name] = node.attr.ino
        self._changed(parent)
        return node.attr, self._handle(node.attr.ino, bytearray(), dirty=True)

    async def mknod(self, parent: int, name: str, mode: int, rdev: int) -> Attr:
        await self._cold("mknod")
        self._writable()
        if not stat.S_ISREG(mode):
            raise NotPermitted("only regular files")
        attr, fh = await self.create(parent, name, stat.S_IMODE(mode), os.O_WRONLY | os.O_EXCL)
        await self.release(attr.ino, fh)
        return attr

    async def link(self, ino: int, new_parent: int, new_name: str) -> Attr:
        await self._cold("link")
        self._writable()
        raise NotSupported("no hard links")

    async def write(self, ino: int, fh: int, offset: int, data: bytes) -> int:
        await self._cold("write")
        self._writable()
        hino, buf, _ = self._handles[fh]
        if len(buf) < offset:
            buf.extend(b"\0" * (offset - len(buf)))
        buf[offset:offset + len(data)] = data
        self._handles[fh] = (hino, buf, True)
        self.nodes[hino].attr.size = max(self.nodes[hino].attr.size, len(buf))
        return len(data)

    async def read_handle(self, ino: int, fh: int, offset: int, size: int) -> bytes:
        await self._cold("read_handle")
        _, buf, _ = self._handles[fh]
        return bytes(buf[offset:offset + size])

    def _commit(self, fh: int) -> None:
        ino, buf, dirty = self._handles[fh]
        if dirty:
            node = self.nodes[ino]
            node.data = bytes(buf)
            node.attr.size = len(buf)
            node.attr.mtime = time.time()
            self._handles[fh] = (ino, buf, False)

    async def flush(self, ino: int, fh: int) -> None:
        await self._cold("flush")
        self._commit(fh)

    async def fsync(self, ino: int, fh: int, datasync: bool) -> None:
        await self._cold("fsync")
        self._commit(fh)

    async def release(self, ino: int, fh: int) -> None:
        await self._cold("release")
        if fh in self._handles:
            self._commit(fh)
            del self._handles[fh]

    async def setattr(self, ino: int, fh: int | None, changes: SetAttr) -> Attr:
        await self._cold("setattr")
        self._writable()
        node = self._node(ino)
        attr = node.attr
        if changes.size is not None:
            if node.children is not None:
                raise IsADirectory(str(ino))
            node.data = node.data[:changes.size].ljust(changes.size, b"\0")
            attr.size = changes.size
            for hfh, (hino, buf, _) in list(self._handles.items()):
                if hino == ino:
                    del buf[changes.size:]
                    buf.extend(b"\0" * (changes.size - len(buf)))
        if changes.mode is not None:
            attr.mode = stat.S_IFMT(attr.mode) | changes.mode
        if changes.uid is not None:
            attr.uid = changes.uid
        if changes.gid is not None:
            attr.gid = changes.gid
        if changes.mtime is not None:
            attr.mtime = changes.mtime
        if changes.atime is not None:
            attr.atime = changes.atime
        return attr

    async def mkdir(self, parent: int, name: str, mode: int) -> Attr:
        await self._cold("mkdir")
        self._writable()
        pnode = self._dir(parent)
        assert pnode.children is not None
        if name in pnode.children:
            raise AlreadyExists(name)
        node = self._new(stat.S_IFDIR | mode, parent, children={})
        pnode.children[name] = node.attr.ino
        self._changed(parent)
        return node.attr

    async def unlink(self, parent: int, name: str) -> None:
        await self._cold("unlink")
        self._writable()
        pnode = self._dir(parent)
        assert pnode.children is not None
        ino = pnode.children.get(name)
        if ino is None:
            raise NotFound(name)
        if self.nodes[ino].children is not None:
            raise IsADirectory(name)
        del pnode.children[name]
        self._changed(parent)

    async def rmdir(self, parent: int, name: str) -> None:
        await self._cold("rmdir")
        self._writable()
        pnode = self._dir(parent)
        assert pnode.children is not None
        ino = pnode.children.get(name)
        if ino is None:
            raise NotFound(name)
        node = self.nodes[ino]
        if node.children is None:
            raise NotADirectory(name)
        if node.children:
            raise DirectoryNotEmpty(name)
        del pnode.children[name]
        self._changed(parent)

    async def rename(self, parent: int, name: str, new_parent: int, new_name: str, *,
                     noreplace: bool = False, exchange: bool = False) -> None:
        await self._cold("rename")
        self._writable()
        if exchange:
            raise NotSupported("RENAME_EXCHANGE")
        src, dst = self._dir(parent), self._dir(new_parent)
        assert src.children is not None and dst.children is not None
        ino = src.children.get(name)
        if ino is None:
            raise NotFound(name)
        if new_name in dst.children:
            if noreplace:
                raise AlreadyExists(new_name)
            old = self.nodes[dst.children[new_name]]
            if old.children:
                raise DirectoryNotEmpty(new_name)
        del src.children[name]
        dst.children[new_name] = ino
        self.nodes[ino].parent = new_parent
        self._changed(parent)
        self._changed(new_parent)

    async def symlink(self, parent: int, name: str, target: str) -> Attr:
        await self._cold("symlink")
        self._writable()
        pnode = self._dir(parent)
        assert pnode.children is not None
        if name in pnode.children:
            raise AlreadyExists(name)
        node = self._new(stat.S_IFLNK | 0o777, parent, target=target)
        pnode.children[name] = node.attr.ino
        self._changed(parent)
        return node.attr

    async def readlink(self, ino: int) -> str:
        await self._cold("readlink")
        node = self._node(ino)
        if not stat.S_ISLNK(node.attr.mode):
            raise InvalidArgument("not a symlink")
        return node.target

    async def setxattr(self, ino: int, name: str, value: bytes, flags: int) -> None:
        await self._cold("setxattr")
        self._writable()
        if not name.startswith("user."):
            raise NotPermitted(name)
        self._node(ino).xattrs[name] = value

    async def removexattr(self, ino: int, name: str) -> None:
        await self._cold("removexattr")
        self._writable()
        if self._node(ino).xattrs.pop(name, None) is None:
            raise NoSuchAttribute(name)
