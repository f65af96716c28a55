"""Writes of a read-write mount: staged in a local file, uploaded on flush/fsync/close.

One staging file per inode, shared by every handle open for writing on it. An
upload sends the whole staged file with store.put_file (multipart above
multipart_size; the object appears only when complete), so a failed or
interrupted upload never leaves a partial object: the old object stays as it
was. A failed upload raises StoreError (EIO from close/fsync) and keeps the
staged file, whose path is logged.

All methods run on the file system's loop thread. `Staged.lock` serialises
writes against an upload of the same file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from pailfs.config import Options
from pailfs.errors import NoSpace, NotFound, StoreError
from pailfs.fs.nodes import Node, compact_etag, object_metadata
from pailfs.store.base import ObjectStore

log = logging.getLogger(__name__)
MiB = 1024 * 1024


@dataclass
class Staged:
    node: Node
    path: str
    fd: int
    size: int
    dirty: bool = False
    uploaded_once: bool = False   # False: the object may not exist in the bucket yet
    dirty_bytes: int = 0
    failed: bool = False          # the last upload failed and nothing was written since
    handles: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WriteBack:
    """Staged writes of one file system. `forget_data(ino)` drops the bytes the read
    path cached for an inode whose object this mount has just replaced."""

    def __init__(self, store: ObjectStore, options: Options, *, forget_data: Callable[[int], None]) -> None:
        self.store = store
        self.options = options
        self._forget_data = forget_data
        opts = options
        if opts.staging_dir:
            os.makedirs(opts.staging_dir, mode=0o700, exist_ok=True)
            self.dir = tempfile.mkdtemp(prefix="pailfs-", dir=opts.staging_dir)
        else:
            self.dir = tempfile.mkdtemp(prefix="pailfs-staging-")
        self.staged: dict[int, Staged] = {}
        self.handles: dict[int, int] = {}  # fh -> ino
        self._next_fh = 1
        self.kept: list[str] = []  # staged files kept after a failed upload

    # --- queries (any thread) ----------------------------------------------
    def busy(self, ino: int) -> bool:
        return ino in self.staged

    def pending_create(self, node: Node) -> bool:
        st = self.staged.get(node.ino)
        return st is not None and not st.uploaded_once

    # --- handles ------------------------------------------------------------
    def _new_fh(self, ino: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = ino
        return fh

    async def open(self, node: Node, flags: int) -> int:
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        fh = self._new_fh(node.ino)
        if writing:
            try:
                st = await self._stage(node, truncate=bool(flags & os.O_TRUNC))
            except BaseException:
                del self.handles[fh]
                raise
            st.handles.add(fh)
            if flags & os.O_TRUNC and st.size:
                os.ftruncate(st.fd, 0)
                st.size = node.size = 0
                st.dirty = True
            elif flags & os.O_TRUNC and node.size == 0:
                st.dirty = st.dirty or not st.uploaded_once
        return fh

    async def create(self, node: Node, flags: int) -> int:
        st = self._new_staged(node, uploaded=False)
        st.dirty = True
        fh = self._new_fh(node.ino)
        st.handles.add(fh)
        return fh

    def _new_staged(self, node: Node, uploaded: bool) -> Staged:
        fd, path = tempfile.mkstemp(prefix=f"ino{node.ino}-", dir=self.dir)
        st = Staged(node, path, fd, 0, uploaded_once=uploaded)
        self.staged[node.ino] = st
        return st

    async def _stage(self, node: Node, truncate: bool) -> Staged:
        st = self.staged.get(node.ino)
        if st is not None:
            return st
        st = self._new_staged(node, uploaded=True)
        if not truncate and node.size > 0:
            try:
                await self.store.get_file(node.key(), st.path)
            except NotFound:
                pass  # deleted meanwhile: start empty
            except BaseException:
                self._unstage(st)
                raise
            os.close(st.fd)
            st.fd = os.open(st.path, os.O_RDWR)
            st.size = os.fstat(st.fd).st_size
            node.size = st.size
        return st

    def _unstage(self, st: Staged) -> None:
        self.staged.pop(st.node.ino, None)
        try:
            os.close(st.fd)
        except OSError:
            pass
        try:
            os.unlink(st.path)
        except OSError:  # gone, or a handed-over file reached through /proc/self/fd
            pass

    # --- data -----------------------------------------------------------------
    async def write(self, node: Node, fh: int, offset: int, data: bytes) -> int:
        st = self.staged.get(node.ino)
        if st is None:  # opened read-only, then written (kernel allows with O_RDWR only)
            st = await self._stage(node, truncate=False)
            st.handles.add(fh)
        self._check_space(len(data))
        async with st.lock:
            written = os.pwrite(st.fd, data, offset)
            st.size = max(st.size, offset + written)
            node.size = st.size
            st.dirty = True
            st.failed = False  # new data: the next flush tries again
            st.dirty_bytes += written
        if st.dirty_bytes >= self.options.max_dirty_data * MiB:
            await self._upload(st)  # bound the data at risk: upload early
        return written

    def _check_space(self, incoming: int) -> None:
        need = self.options.ensure_diskfree * MiB
        if need:
            vfs = os.statvfs(self.dir)
            if vfs.f_bavail * vfs.f_frsize - incoming < need:
                raise NoSpace(f"staging dir {self.dir} would go below ensure_diskfree")

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        st = self.staged[node.ino]
        async with st.lock:
            return os.pread(st.fd, size, offset)

    async def truncate(self, node: Node, fh: int | None, size: int) -> None:
        st = await self._stage(node, truncate=size == 0)
        async with st.lock:
            os.ftruncate(st.fd, size)
            st.size = node.size = size
            st.dirty = True
        if not st.handles:  # truncate(2) on a path: no close will follow
            await self._upload(st)
            self._unstage_unless_reopened(st)

    async def save_metadata(self, node: Node) -> None:
        st = self.staged.get(node.ino)
        if st is not None:
            st.dirty = True  # the next upload carries the metadata
            if not st.handles:
                await self._upload(st)
                self._unstage_unless_reopened(st)
            return
        key = node.key()
        if node.is_dir:
            await self.store.put(key, b"", object_metadata(node))
        else:
            await self.store.copy(key, key, object_metadata(node))

    # --- upload ----------------------------------------------------------------
    async def _upload(self, st: Staged) -> None:
        async with st.lock:
            if not st.dirty:
                return
            node = st.node
            key = node.key()
            os.fsync(st.fd)
            try:
                info = await self.store.put_file(key, st.path, object_metadata(node))
            except Exception as exc:
                st.failed = True
                log.error("upload of %s failed (%s); the staged data is kept at %s", key, exc, st.path)
                if st.path not in self.kept:
                    self.kept.append(st.path)
                raise StoreError(f"upload of {key} failed: {exc}") from exc
            st.dirty = st.failed = False
            st.dirty_bytes = 0
            st.uploaded_once = True
            node.etag = compact_etag(info.etag)
            node.size = st.size
            self._forget_data(node.ino)

    async def flush(self, node: Node, fh: int) -> None:
        st = self.staged.get(node.ino)
        if st is not None and st.dirty:
            await self._upload(st)

    async def flush_all(self, node: Node) -> None:
        await self.flush(node, 0)

    async def release(self, node: Node, fh: int) -> None:
        self.handles.pop(fh, None)
        st = self.staged.get(node.ino)
        if st is None:
            return
        st.handles.discard(fh)
        if st.handles:
            return
        if st.dirty:
            try:
                if st.failed:
                    # close()/fsync() already reported EIO for exactly this data: do not
                    # upload it behind the user's back later; keep it on disk instead
                    raise StoreError("upload failed before")
                await self._upload(st)
            except StoreError:
                if not st.handles:  # else reopened during the upload: the new handle owns it
                    # keep the staged file for the user; forget it in the mount
                    self.staged.pop(node.ino, None)
                    os.close(st.fd)
                return
        self._unstage_unless_reopened(st)

    def _unstage_unless_reopened(self, st: Staged) -> None:
        """Drop a staged file after an upload, unless a handle opened it while the
        upload was awaited: that writer keeps using st.fd (closing it gave EBADF)."""
        if not st.handles:
            self._unstage(st)

    async def discard(self, node: Node) -> None:
        """The file is being deleted: drop its staged data without uploading."""
        st = self.staged.get(node.ino)
        if st is not None:
            st.dirty = False
            self._unstage(st)

    async def close(self) -> None:
        """Unmount: upload whatever is still dirty, then remove the staging dir."""
        for st in list(self.staged.values()):
            if st.dirty:
                try:
                    await self._upload(st)
                except StoreError:
                    continue
            self._unstage(st)
        if not self.kept:
            shutil.rmtree(self.dir, ignore_errors=True)
