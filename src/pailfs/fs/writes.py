"""Writes of a read-write mount: staged in a local file, uploaded on flush/fsync/close.

One staging file per inode, shared by every handle open for writing on it, in
this mount's own staging directory (pailfs.fs.staging). What the bucket holds
changes only when an upload completes, never in between:

* a file uploaded at close goes up with store.put_file (multipart above
  multipart_size; the object appears only when complete);
* a file whose dirty data passes `max_dirty_data` while it is written streams:
  a multipart upload starts, and every full part is sent in the background as
  soon as it is written (PARTS_IN_FLIGHT at a time; a part written again is
  sent again). The upload is completed at flush/fsync/close, aborted on
  failure; until then readers and the bucket see the old object. A daemon
  killed mid-write leaves the old object and an incomplete multipart upload,
  which `abort_stale_uploads` or the bucket's lifecycle rules remove.

Failures:

* a failed write (ENOSPC from the staging disk or `ensure_diskfree`, EFBIG, a
  local I/O error, a part upload that failed) poisons the file: every later
  write, flush, fsync and close of its write handles reports that error, and
  nothing is uploaded (a stream is aborted). Staged data is kept (and its path
  logged) after a store failure, dropped after a local one;
* a failed upload at flush/fsync/close raises StoreError (EIO) and keeps the
  staged file; pailfs does not upload that data later on its own;
* either way, once the last handle is closed the inode shows what the bucket
  holds again (`attrs_stale`), or is gone if the file was never uploaded.

A file unlinked (or renamed over) while open is an orphan: its handles keep
reading and writing the staged file, and nothing of it is ever uploaded.

All methods run on the file system's loop thread. `Staged.lock` serialises
writes against a whole-file upload of the same file (put_file reads the file
while it sends it); streamed parts are read into memory first, so writes go on
meanwhile and a part they touch is sent again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from pailfs.config import Options
from pailfs.errors import FileTooLarge, NoSpace, NotFound, PailfsError, StoreError
from pailfs.fs import staging
from pailfs.fs.nodes import DIR_META, Node, compact_etag, content_type_of, object_metadata
from pailfs.store.base import ObjectStore

log = logging.getLogger(__name__)
MiB = 1024 * 1024
MIN_PART = 5 * MiB      # S3: every part but the last is at least 5 MiB
MAX_PARTS = 10_000      # S3: parts in one upload
MAX_COPY = 5 * 1024 * MiB  # S3: largest object one CopyObject may write
PARTS_IN_FLIGHT = 4     # parts of one streamed file being sent at once (each held in memory)
PARTS_AT_CLOSE = 8      # ... once close() waits for the rest


@dataclass
class Stream:
    """The multipart upload of a file being written (see the module docstring)."""

    upload_id: str
    key: str
    part_size: int
    metadata: dict[str, str]
    content_type: str
    done: dict[int, str] = field(default_factory=dict)     # part -> ETag of the bytes staged now
    pending: set[int] = field(default_factory=set)         # parts to send (once full)
    version: dict[int, int] = field(default_factory=dict)  # part -> writes into it so far
    running: dict[int, asyncio.Task] = field(default_factory=dict)
    error: BaseException | None = None

    def parts(self, start: int, end: int) -> range:
        """Numbers (from 1) of the parts holding bytes [start, end)."""
        return range(start // self.part_size + 1, (max(end, start + 1) - 1) // self.part_size + 2)

    def changed(self, start: int, end: int) -> None:
        for n in self.parts(start, end):
            self.done.pop(n, None)
            self.version[n] = self.version.get(n, 0) + 1
            self.pending.add(n)


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
    error: BaseException | None = None  # poisoned by a failed write: reported, never uploaded
    orphan: bool = False          # unlinked or renamed over while open: never uploaded
    handles: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stream: Stream | None = None


class WriteBack:
    """Staged writes of one file system. `forget_data(ino)` drops the bytes the read
    path cached for an inode whose object this mount has just replaced;
    `attrs_stale(node, exists)` is called when an inode's attributes are the
    mount's no longer (its data was not uploaded): they are read from the store
    again, or the inode goes if its object never existed."""

    def __init__(self, store: ObjectStore, options: Options, *, forget_data: Callable[[int], None],
                 attrs_stale: Callable[[Node, bool], None] | None = None) -> None:
        self.store = store
        self.options = options
        self._forget_data = forget_data
        self._attrs_stale = attrs_stale or (lambda node, exists: None)
        self.dir: str | None = None
        if not options.read_only:
            base = staging.staging_base(options.staging_dir)
            staging.clean_dead_mounts(base)
            self.dir = staging.new_mount_dir(base)
        self.part_size = max(options.multipart_size * MiB, MIN_PART)
        self.staged: dict[int, Staged] = {}
        self.handles: dict[int, int] = {}  # fh -> ino
        self._next_fh = 1
        self.kept: list[str] = []  # staged files kept after a failed upload

    # --- queries (any thread) ----------------------------------------------
    def busy(self, ino: int) -> bool:
        """The inode's attributes and bytes are this mount's staged ones (a poisoned file's
        are not: it shows what the bucket holds)."""
        st = self.staged.get(ino)
        return st is not None and st.error is None

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
                if st.error is not None:
                    raise st.error
            except BaseException:
                del self.handles[fh]
                raise
            st.handles.add(fh)
            if flags & os.O_TRUNC:  # truncates, and moves mtime/ctime, even when nothing is written
                async with st.lock:
                    self._resize(st, 0)
        return fh

    async def create(self, node: Node, flags: int) -> int:
        st = self._new_staged(node, uploaded=False)
        st.dirty = True
        fh = self._new_fh(node.ino)
        st.handles.add(fh)
        return fh

    def _new_staged(self, node: Node, uploaded: bool) -> Staged:
        assert self.dir is not None, "a read-only mount stages nothing"
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
                info = await self.store.get_file(node.key(), st.path)
            except NotFound:
                info = None  # deleted meanwhile: start empty
            except BaseException:
                self._unstage(st)
                raise
            os.close(st.fd)
            st.fd = os.open(st.path, os.O_RDWR)
            st.size = os.fstat(st.fd).st_size
            node.size = st.size
            if info is not None:
                node.etag = compact_etag(info.etag)
        return st

    def _forget(self, st: Staged) -> None:
        """The mount lets go of a staged file (its upload, its descriptor)."""
        if self.staged.get(st.node.ino) is st:
            del self.staged[st.node.ino]
        self._abort_stream(st)
        try:
            os.close(st.fd)
        except OSError:
            pass

    def _unstage(self, st: Staged) -> None:
        self._forget(st)
        try:
            os.unlink(st.path)
        except OSError:  # gone, or a handed-over file reached through /proc/self/fd
            pass

    def _keep(self, st: Staged) -> None:
        """Forget a staged file in the mount but leave it on disk (its path is logged)."""
        self._forget(st)
        if st.path not in self.kept:
            self.kept.append(st.path)

    # --- data -----------------------------------------------------------------
    async def write(self, node: Node, fh: int, offset: int, data: bytes) -> int:
        st = self.staged.get(node.ino)
        if st is None:  # opened read-only, then written (kernel allows with O_RDWR only)
            st = await self._stage(node, truncate=False)
            st.handles.add(fh)
        self._check_usable(st)
        end = offset + len(data)
        try:
            if end > MAX_PARTS * self.part_size:
                raise FileTooLarge(f"{node.key()}: larger than {MAX_PARTS} parts of multipart_size "
                                   f"({MAX_PARTS * self.part_size // MiB} MiB)")
            self._check_space(len(data))
            async with st.lock:
                self._check_usable(st)
                view = memoryview(data)
                written = 0
                while written < len(data):
                    n = os.pwrite(st.fd, view[written:], offset + written)
                    if n == 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    written += n
        except (OSError, PailfsError) as exc:
            raise self._poison(st, exc) from None
        old_size = st.size
        st.size = max(st.size, end)
        node.size = st.size
        st.dirty = True
        st.failed = False  # new data: the next flush tries again
        st.dirty_bytes += written
        node.touch(time.time_ns())
        stream = st.stream
        if stream is not None:
            stream.changed(min(offset, old_size), end)
        if not st.orphan and (stream is not None or st.dirty_bytes >= self.options.max_dirty_data * MiB):
            await self._stream(st)
        return written

    def check_stream(self, st: Staged) -> None:
        """A stream whose part failed poisons its file."""
        if st.error is None and st.stream is not None and st.stream.error is not None:
            self._poison(st, st.stream.error)

    def _check_usable(self, st: Staged) -> None:
        """A poisoned file reports its error; a stream whose part failed poisons it."""
        self.check_stream(st)
        if st.error is not None:
            raise st.error

    def _poison(self, st: Staged, exc: BaseException) -> BaseException:
        """After a failed write nothing of this file is uploaded; returns what to raise."""
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            exc = NoSpace(f"no space left in the staging directory {self.dir}: {st.node.key()} is not uploaded")
        elif isinstance(exc, OSError):
            exc = StoreError(f"staging {st.node.key()} failed ({exc.strerror}): it is not uploaded")
        elif isinstance(exc, StoreError) and not isinstance(exc, NotFound):
            exc = StoreError(f"upload of {st.node.key()} failed ({exc}): it is not uploaded")
        if st.error is None:
            st.error = exc
            st.dirty = False
            self._abort_stream(st)
            log.error("writes to %s failed: %s", st.node.key(), exc)
            self._attrs_stale(st.node, st.uploaded_once)
        return st.error

    def _check_space(self, incoming: int) -> None:
        need = self.options.ensure_diskfree * MiB
        if need and self.dir is not None:
            vfs = os.statvfs(self.dir)
            if vfs.f_bavail * vfs.f_frsize - incoming < need:
                raise NoSpace(f"staging dir {self.dir} would go below ensure_diskfree")

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        st = self.staged[node.ino]
        async with st.lock:
            return os.pread(st.fd, size, offset)

    def _resize(self, st: Staged, size: int) -> None:
        """Truncate or extend the staged file (caller holds st.lock)."""
        os.ftruncate(st.fd, size)
        if st.stream is not None:
            st.stream.changed(min(size, st.size), max(size, st.size))
        st.size = st.node.size = size
        st.dirty = True
        st.node.touch(time.time_ns())

    async def truncate(self, node: Node, fh: int | None, size: int) -> None:
        st = await self._stage(node, truncate=size == 0)
        self._check_usable(st)
        async with st.lock:
            self._resize(st, size)
        if not st.handles:  # truncate(2) on a path: no close will follow
            await self._upload_and_unstage(st)

    async def save_metadata(self, node: Node) -> None:
        """Persist mode/owner/times/xattrs: with the data if an upload is due anyway, else
        by a copy of the object onto itself (a directory: its DIR_META object). The
        mount root's are kept in memory only."""
        st = self.staged.get(node.ino)
        if st is not None and not st.orphan and (st.dirty or not st.uploaded_once):
            st.dirty = True  # the next upload carries the metadata
            if not st.handles:
                await self._upload_and_unstage(st)
            return
        if st is not None and st.orphan or node.parent is None:
            return
        key = node.key()
        if node.is_dir:
            await self.store.put(key + DIR_META, b"", object_metadata(node))
        else:
            await self.store.copy(key, key, object_metadata(node), content_type=content_type_of(node.name))

    # --- streaming -------------------------------------------------------------
    async def _stream(self, st: Staged) -> None:
        """Start the file's multipart upload if need be, and send what is ready."""
        if st.stream is None:
            async with st.lock:
                if st.stream is None and st.error is None and not st.orphan:
                    node = st.node
                    metadata, content_type = object_metadata(node), content_type_of(node.name)
                    try:
                        upload_id = await self.store.create_multipart(node.key(), metadata,
                                                                      content_type=content_type)
                    except StoreError as exc:
                        raise self._poison(st, exc) from None
                    stream = Stream(upload_id, node.key(), self.part_size, metadata, content_type)
                    stream.pending.update(stream.parts(0, st.size))
                    st.stream = stream
                    log.debug("%s: streaming into multipart upload %s", node.key(), upload_id)
        self._send_ready(st)

    def _send_ready(self, st: Staged) -> None:
        stream = st.stream
        if stream is None or stream.error is not None or st.error is not None:
            return
        full = st.size // stream.part_size  # parts 1..full are complete
        for n in sorted(p for p in stream.pending if p <= full):
            if len(stream.running) >= PARTS_IN_FLIGHT:
                return
            if n in stream.running:
                continue
            stream.pending.discard(n)
            stream.running[n] = asyncio.get_running_loop().create_task(self._send_part(st, stream, n))

    async def _send_part(self, st: Staged, stream: Stream, n: int) -> None:
        version = stream.version.get(n, 0)
        try:
            data = await self._read_part(st, stream, n)
            etag = await self.store.upload_part(stream.key, stream.upload_id, n, data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported by the next write or flush
            if stream.error is None:
                stream.error = exc
            return
        finally:
            stream.running.pop(n, None)
        if stream.version.get(n, 0) == version:
            stream.done[n] = etag
        else:
            stream.pending.add(n)  # written again while it was sent
        if st.stream is stream:
            self._send_ready(st)

    async def _read_part(self, st: Staged, stream: Stream, n: int) -> bytes:
        start = (n - 1) * stream.part_size
        return await asyncio.to_thread(os.pread, st.fd, max(0, min(stream.part_size, st.size - start)), start)

    async def _finish_stream(self, st: Staged) -> str | None:
        """Send what is left and complete the upload (caller holds st.lock). Returns the
        new object's ETag."""
        stream = st.stream
        assert stream is not None
        while stream.running:
            await asyncio.gather(*list(stream.running.values()), return_exceptions=True)
        if stream.error is not None:
            raise stream.error
        total = -(-st.size // stream.part_size)
        missing = [n for n in range(1, total + 1) if n not in stream.done]
        # the writer waits now: send the rest as wide as a whole-file upload would (bounded)
        sem = asyncio.Semaphore(max(PARTS_IN_FLIGHT, min(self.options.parallel_count, PARTS_AT_CLOSE)))

        async def send(n: int) -> None:
            async with sem:
                data = await self._read_part(st, stream, n)
                stream.done[n] = await self.store.upload_part(stream.key, stream.upload_id, n, data)

        await asyncio.gather(*(send(n) for n in missing))
        etag = await self.store.complete_multipart(stream.key, stream.upload_id,
                                                   [(n, stream.done[n]) for n in range(1, total + 1)])
        st.stream = None
        node = st.node
        metadata, content_type = object_metadata(node), content_type_of(node.name)
        if (metadata, content_type) != (stream.metadata, stream.content_type):
            # the times moved since the upload began (they are fixed when it starts)
            if st.size <= MAX_COPY:
                await self.store.copy(stream.key, stream.key, metadata, content_type=content_type)
                etag = None  # a copy may change the ETag: read it again
            else:
                log.warning("%s: larger than one copy may write; its stored mtime is the one from "
                            "when its upload began", stream.key)
        return etag

    def _abort_stream(self, st: Staged) -> None:
        """Drop the file's multipart upload, if any (in the background; if the store
        cannot be reached it is left for abort_stale_uploads)."""
        stream, st.stream = st.stream, None
        if stream is None:
            return
        for task in stream.running.values():
            task.cancel()

        async def abort() -> None:
            try:
                await self.store.abort_multipart(stream.key, stream.upload_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not abort the multipart upload %s of %s (%s); it is left for "
                            "abort_stale_uploads or the bucket's lifecycle rules", stream.upload_id, stream.key, exc)

        try:
            asyncio.get_running_loop().create_task(abort())
        except RuntimeError:
            pass  # no loop (closing): left for abort_stale_uploads

    # --- upload ----------------------------------------------------------------
    async def _upload(self, st: Staged) -> None:
        async with st.lock:
            if st.error is not None:
                raise st.error
            if not st.dirty or st.orphan:
                return
            node = st.node
            key = node.key()
            if st.stream is not None and st.size == 0:
                self._abort_stream(st)  # S3 has no empty multipart upload: a plain PUT
            try:
                if st.stream is not None:
                    etag = await self._finish_stream(st)
                else:
                    await asyncio.to_thread(os.fsync, st.fd)
                    info = await self.store.put_file(key, st.path, object_metadata(node),
                                                     content_type=content_type_of(node.name))
                    etag = info.etag
            except Exception as exc:
                st.failed = True
                self._abort_stream(st)
                log.error("upload of %s failed (%s); the staged data is kept at %s", key, exc, st.path)
                raise StoreError(f"upload of {key} failed: {exc}") from exc
            st.dirty = st.failed = False
            st.dirty_bytes = 0
            st.uploaded_once = True
            node.etag = compact_etag(etag) if etag else None
            node.size = st.size
            self._forget_data(node.ino)

    async def _upload_and_unstage(self, st: Staged) -> None:
        """Upload a staged file no handle holds, then drop it; on failure keep it on disk."""
        try:
            await self._upload(st)
        except StoreError:
            if not st.handles:
                self._keep(st)
                self._attrs_stale(st.node, st.uploaded_once)
            raise
        self._unstage_unless_reopened(st)

    async def flush(self, node: Node, fh: int) -> None:
        st = self.staged.get(node.ino)
        if st is None:
            return
        if fh in st.handles or fh == 0:
            self._check_usable(st)
        if st.dirty:
            await self._upload(st)

    async def flush_all(self, node: Node) -> None:
        await self.flush(node, 0)

    async def release(self, node: Node, fh: int) -> None:
        self.handles.pop(fh, None)
        st = self.staged.get(node.ino)
        if st is None or fh not in st.handles:
            return
        st.handles.discard(fh)
        if st.handles:
            return
        if st.orphan:
            self._unstage(st)
            return
        if st.error is not None:
            # poisoned: nothing is uploaded; what was staged is kept only after a store failure
            if isinstance(st.error, StoreError):
                log.error("the staged data of %s is kept at %s", node.key(), st.path)
                self._keep(st)
            else:
                self._unstage(st)
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
                    self._keep(st)
                    self._attrs_stale(node, st.uploaded_once)
                return
        self._unstage_unless_reopened(st)

    def _unstage_unless_reopened(self, st: Staged) -> None:
        """Drop a staged file after an upload, unless a handle opened it while the
        upload was awaited: that writer keeps using st.fd (closing it gave EBADF)."""
        if not st.handles:
            self._unstage(st)

    async def discard(self, node: Node) -> None:
        """The file is being deleted (or replaced by a rename): nothing of its staged
        data is uploaded; handles still open keep using it until they close."""
        st = self.staged.get(node.ino)
        if st is not None:
            st.dirty = False
            st.orphan = True
            self._abort_stream(st)
            async with st.lock:
                pass  # an upload already under way ends before the caller deletes the object
            if not st.handles:
                self._unstage(st)

    async def close(self) -> None:
        """Unmount: upload whatever is still dirty, then remove this mount's staging dir
        (unless a staged file had to be kept)."""
        for st in list(self.staged.values()):
            if isinstance(st.error, StoreError):
                self._keep(st)
                continue
            if st.dirty and st.error is None and not st.orphan:
                try:
                    await self._upload(st)
                except StoreError:
                    self._keep(st)
                    continue
            self._unstage(st)
        if self.dir is not None and not staging.remove_mount_dir(self.dir):
            log.warning("staged data is kept in %s", self.dir)
