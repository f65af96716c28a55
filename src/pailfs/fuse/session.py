"""One FUSE connection: read requests from /dev/fuse, answer them.

Hot path (inline, in the reader thread that read the request): IOCTL (ENOTTY,
checked before anything else: Python's open() calls isatty on every file),
LOOKUP / GETATTR / READDIRPLUS / READ answered from the fs's `cached_*`
methods, FORGET / BATCH_FORGET / INTERRUPT (no reply), and the constant
answers (ENOSYS for OPEN/OPENDIR/FLUSH on read-only mounts, so the kernel
opens and closes files without asking us; ACCESS, locks...; ENODATA for
security.* and system.* xattrs). Everything else, and every cache miss, is a
*cold* request: its coroutine is handed to the fs's asyncio loop and the loop
thread writes the reply when the coroutine finishes.

Read-only mounts are mounted MS_RDONLY and never ask for AUTO_INVAL_DATA.
Measured on kernel 6.18: the "one GETATTR per file in the epoch after the
first read" comes from the kernel marking atime stale after every READ it
sends us (fuse_invalidate_atime), which the next fstat (Python's open())
must refresh; the kernel skips that on an SB_RDONLY super block. Neither
AUTO_INVAL_DATA nor MS_NOATIME changes it.

Concurrency invariants
----------------------
* Threads: one reader thread (a second one did not help the 8-thread cold
  workload: the loop does the I/O), the fs's loop thread, and a notifier
  thread started on the first invalidation. The reader polls the (then
  non-blocking) device for `poll_us` after an inline answer before sleeping
  in poll().
* Cold requests reach the loop by `loop.call_soon_threadsafe(loop.create_task, ...)`
  (half the cost of run_coroutine_threadsafe: no concurrent Future to chain).
* Every reply is one `os.write` (or `os.writev`) of a complete message; the
  kernel takes each write atomically, so readers and the loop reply without
  a lock, in any order.
* `fs.cached_*`, `fs.ref` and `fs.forget` are called from reader threads,
  concurrently with coroutines on the loop: the fs makes them safe for that.
  `fs.ref` is also called on the loop thread (entries of cold replies).
* `fs.ref(attr)` is called *before* the entry reply is written (the kernel may
  FORGET an entry the moment it has it); if the write fails (the request was
  interrupted) the reference is returned with `fs.forget(ino, 1)`. The same
  holds for an OPEN/CREATE handle: a reply that cannot be written releases it.
* `_inflight` (unique -> (task, cancellable)) is written and popped only on the
  loop thread; reader threads only `get` from it (INTERRUPT). It also keeps
  every cold task strongly referenced.
* Invalidation notifications are written from the notifier thread, never from a
  reader or the loop: a notification may wait for a page lock held by a
  request whose reply the reader or loop has yet to send. An OPEN reply is
  written after the notifications queued before it (through the same queue
  while any are pending): an open that found the object changed must not be
  served from the pages or the size the kernel held.
* The hot path allocates the reply and nothing else: no logging, no exceptions
  on cache hits, one list lookup for the handler.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import threading
import time
from typing import Any, Callable

from pailfs.errors import NotFound, NotSupported, PailfsError, errno_of
from pailfs.fs.types import FileSystemOps
from pailfs.fuse import protocol as P
from pailfs.fuse import records as R
from pailfs.fuse.notify import Notifier
from pailfs.fuse.records import attr_values, split_seconds
from pailfs.fuse.rw_requests import WritableRequests

log = logging.getLogger(__name__)

MAX_WRITE = 1 << 20               # bytes per WRITE request (FUSE_MAX_PAGES with 256 pages)
MAX_PAGES = MAX_WRITE // 4096
MAX_BACKGROUND = 64               # readahead and other async requests in flight
CONGESTION_THRESHOLD = 48
WRITEV_OVER = 64 * 1024           # replies larger than this skip the header+data copy

# xattr namespaces the front end answers itself (ENODATA): the kernel asks for
# security.capability on writes and for ACLs/SELinux labels on ls -l; an object
# store has none of these.
LOCAL_XATTR_PREFIXES = ("security.", "system.")

_CANCELLABLE = frozenset({P.LOOKUP, P.GETATTR, P.READ, P.READDIR, P.READDIRPLUS, P.READLINK,
                          P.GETXATTR, P.LISTXATTR, P.STATFS})


class FuseSession:
    """Serve one /dev/fuse connection for a FileSystemOps on its asyncio loop."""

    def __init__(self, fs: FileSystemOps, fd: int, loop: asyncio.AbstractEventLoop, *,
                 max_write: int = MAX_WRITE, poll_us: int = 0) -> None:
        self.fs = fs
        self.fd = fd
        self.loop = loop
        self.read_only = bool(fs.read_only)
        self.keep_cache = bool(fs.keep_cache)
        self.entry_valid = split_seconds(fs.entry_timeout)
        self.attr_valid = split_seconds(fs.attr_timeout)
        self.negative_valid = split_seconds(fs.negative_timeout)
        self.max_write = max_write
        self.poll_seconds = poll_us / 1e6
        self.cold_dispatched = 0  # requests handed to the loop
        self.cold_done = 0        # ... and answered (a handover waits until they match)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # stops the reader (handover)
        self.reader: threading.Thread | None = None
        self.buffer_size = max_write + 4096
        self.proto_minor = 0
        self.kernel_flags = 0
        self.init_flags = 0
        self.want_flags = self._wanted_flags()
        # per-opcode request counts (index = opcode); racy increments are fine for stats
        self.counts = [0] * (P.MAX_OPCODE + 1)
        self.initialized = threading.Event()
        self.finished = threading.Event()
        self._inflight: dict[int, tuple[asyncio.Task, bool]] = {}
        self.notifier = Notifier(fd, self.send)
        self._handlers: list[Callable[[bytes, int, int], None]] = self._handler_table()

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Start the reader thread (a daemon thread; `finished` is set when it ends)."""
        self.reader = threading.Thread(target=self._reader_main, name="pailfs-fuse", daemon=True)
        self.reader.start()

    def request_counts(self) -> dict[str, int]:
        return {P.OPCODE_NAMES.get(op, str(op)): n for op, n in enumerate(self.counts) if n}

    def _reader_main(self) -> None:
        try:
            if self.serve_forever() == "paused":
                return
        except Exception:
            log.exception("FUSE reader failed")
        self.finished.set()
        self.notifier.close()

    def serve_forever(self) -> str:
        """Read and answer requests until the connection ends (ENODEV: unmounted or aborted)
        or wake_w is written ("paused": requests stay queued in the kernel).

        Readers never stop on their own: a mount detached lazily still serves the files
        that are open until they close, and an unanswered request would hang its caller.
        """
        fd = self.fd
        # One preallocated buffer: os.read(fd, 1 MiB) would mmap, mremap and
        # munmap a fresh 1 MiB buffer for every request (~13 us); readv into this costs ~1 us.
        buf = bytearray(self.buffer_size)
        bufs = [buf]
        view = memoryview(buf)
        write = os.write
        head = P.IN_HEADER_HEAD.unpack_from
        pack_error = P.ERROR_REPLY.pack
        # Poll for a while after a request answered inline: the next
        # one of a warm epoch comes within microseconds, and sleeping in readv would
        # make the kernel wake this thread's vCPU for it (measured: 47 us per isatty
        # round trip sleeping, 16 us polling). A request that went to the loop means
        # CPU is needed there: sleep at once after those (and always with poll_us=0).
        os.set_blocking(fd, False)
        waiter = select.poll()
        waiter.register(fd, select.POLLIN)
        waiter.register(self.wake_r, select.POLLIN)
        read_polling = self._read_polling
        spin = 0.0
        handlers = self._handlers
        counts = self.counts
        IOCTL = P.IOCTL
        MAX_OPCODE = P.MAX_OPCODE
        ENOTTY = -errno.ENOTTY
        while True:
            try:
                n = read_polling(fd, bufs, spin, waiter, self.wake_r)
                dispatched = self.cold_dispatched
            except OSError as exc:
                code = exc.errno
                if code == errno.ENOENT or code == errno.EINTR or code == errno.EAGAIN:
                    continue  # the request was interrupted before we read it
                if code == errno.ENODEV:
                    return "ended"    # unmounted / connection aborted
                raise
            if n < 0:
                return "paused"
            _, opcode, unique, nodeid = head(buf)
            if opcode == IOCTL:
                counts[IOCTL] += 1
                try:
                    write(fd, pack_error(16, ENOTTY, unique))
                except OSError:
                    pass
                spin = self.poll_seconds
                continue
            if opcode > MAX_OPCODE:
                self.reply_error(unique, errno.ENOSYS)
                continue
            counts[opcode] += 1
            try:
                handlers[opcode](view[:n].tobytes(), unique, nodeid)
            except Exception as exc:  # a bug in a handler must not end the session
                log.exception("FUSE %s failed", P.OPCODE_NAMES.get(opcode, opcode))
                self.reply_error(unique, errno_of(exc))
            spin = self.poll_seconds if self.cold_dispatched == dispatched else 0.0

    @staticmethod
    def _read_polling(fd: int, bufs: list, spin: float, waiter: Any, wake: int) -> int:
        """readv on the non-blocking device: retried for `spin` s, then asleep in poll; -1 if woken."""
        clock = time.perf_counter
        end = clock() + spin
        while True:
            try:
                return os.readv(fd, bufs)
            except BlockingIOError:
                pass
            if clock() >= end:
                if any(ready == wake for ready, _ in waiter.poll()):  # POLLERR when ended: readv says ENODEV
                    return -1

    # ------------------------------------------------------------------ replies
    def send(self, data: bytes) -> bool:
        try:
            os.write(self.fd, data)
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("FUSE reply failed: %s", exc)
            return False

    def reply_error(self, unique: int, code: int) -> None:
        self.send(P.ERROR_REPLY.pack(16, -code, unique))

    def reply_ok(self, unique: int, _result: Any = None) -> None:
        self.send(P.ERROR_REPLY.pack(16, 0, unique))

    def reply_data(self, unique: int, data: bytes) -> None:
        n = len(data)
        if n > WRITEV_OVER:
            try:
                os.writev(self.fd, (P.OUT_HEADER.pack(16 + n, 0, unique), data))
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENODEV):
                    log.warning("FUSE reply failed: %s", exc)
            return
        self.send(P.OUT_HEADER.pack(16 + n, 0, unique) + data)

    def reply_entry(self, unique: int, attr: Any) -> None:
        ino = attr.ino
        self.fs.ref(attr)
        ev, evn = self.entry_valid
        av, avn = self.attr_valid
        if not self.send(P.ENTRY_REPLY.pack(144, 0, unique, ino, 0, ev, av, evn, avn, *attr_values(attr))):
            self.fs.forget(ino, 1)

    def _reply_negative(self, unique: int) -> None:
        ev, evn = self.negative_valid
        self.send(P.ENTRY_REPLY.pack(144, 0, unique, 0, 0, ev, 0, evn, 0,
                                      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))

    def _reply_lookup(self, unique: int, attr: Any) -> None:
        if attr is None:
            self._reply_negative(unique)
        else:
            self.reply_entry(unique, attr)

    def reply_attr(self, unique: int, attr: Any) -> None:
        av, avn = self.attr_valid
        self.send(P.ATTR_REPLY.pack(120, 0, unique, av, avn, 0, *attr_values(attr)))

    def _reply_statfs(self, unique: int, st: Any) -> None:
        self.send(P.STATFS_REPLY.pack(96, 0, unique, st.blocks, st.bfree, st.bavail, st.files, st.ffree,
                                       st.bsize, st.namelen, st.frsize, 0))

    # ------------------------------------------------------------------ cold path
    def cold(self, unique: int, opcode: int, coro: Any, finish: Callable[[int, Any], None]) -> None:
        """Run coro on the loop; finish(unique, result) replies, an exception replies its errno."""
        # call_soon_threadsafe(create_task) rather than run_coroutine_threadsafe: no
        # concurrent.futures.Future to chain, 8 us instead of 17 us per request (measured).
        # The task is kept alive by the loop's ready queue, then by _inflight.
        self.cold_dispatched += 1
        wrapper = self._run_cold(unique, opcode, coro, finish)
        try:
            self.loop.call_soon_threadsafe(self.loop.create_task, wrapper)
        except RuntimeError:  # the loop is closed: we are shutting down
            wrapper.close()
            coro.close()
            self.reply_error(unique, errno.EIO)

    async def _run_cold(self, unique: int, opcode: int, coro: Any, finish: Callable[[int, Any], None]) -> None:
        inflight = self._inflight
        inflight[unique] = (asyncio.current_task(), opcode in _CANCELLABLE)  # type: ignore[assignment]
        try:
            result = await coro
        except asyncio.CancelledError:
            self.reply_error(unique, errno.EINTR)
        except Exception as exc:
            code = errno_of(exc)
            if isinstance(exc, (PailfsError, OSError)):
                # EIO is the store failing under a reader: say why (the CSI plugin's log shows it)
                log.log(logging.WARNING if code == errno.EIO else logging.DEBUG, "FUSE %s: %s -> %s",
                        P.OPCODE_NAMES.get(opcode), exc, errno.errorcode.get(code))
            else:
                log.error("FUSE %s failed", P.OPCODE_NAMES.get(opcode), exc_info=exc)
            self.reply_error(unique, code)
        else:
            try:
                finish(unique, result)
            except Exception:
                log.exception("FUSE %s: cannot pack the reply", P.OPCODE_NAMES.get(opcode))
                self.reply_error(unique, errno.EIO)
        finally:
            inflight.pop(unique, None)
            self.cold_done += 1

    # ------------------------------------------------------------------ table
    def _handler_table(self) -> list[Callable[[bytes, int, int], None]]:
        table: list[Callable[[bytes, int, int], None]] = [self._enosys] * (P.MAX_OPCODE + 1)
        rw = not self.read_only
        rw_requests = WritableRequests(self)
        for opcode, handler in {
            P.INIT: self._init,
            P.DESTROY: self._destroy,
            P.LOOKUP: self._lookup,
            P.FORGET: self._forget,
            P.BATCH_FORGET: self._batch_forget,
            P.GETATTR: self._getattr,
            P.SETATTR: rw_requests.setattr,
            P.READLINK: self._readlink,
            P.SYMLINK: rw_requests.symlink,
            P.MKNOD: rw_requests.mknod,
            P.MKDIR: rw_requests.mkdir,
            P.UNLINK: rw_requests.unlink,
            P.RMDIR: rw_requests.rmdir,
            P.RENAME: rw_requests.rename,
            P.RENAME2: rw_requests.rename2,
            P.LINK: rw_requests.link,
            P.OPEN: rw_requests.open if rw else self._enosys,
            P.OPENDIR: self._opendir if rw else self._enosys,
            P.READ: self._read,
            P.WRITE: rw_requests.write,
            P.STATFS: self._statfs,
            P.RELEASE: rw_requests.release,
            P.RELEASEDIR: self._reply_ok_req,
            P.FSYNC: rw_requests.fsync,
            P.FSYNCDIR: self._reply_ok_req,
            # ro: FLUSH has nothing to do; ENOSYS makes the kernel stop sending it on close()
            P.FLUSH: rw_requests.flush if rw else self._enosys,
            P.SETXATTR: rw_requests.setxattr,
            P.GETXATTR: self._getxattr,
            P.LISTXATTR: self._listxattr,
            P.REMOVEXATTR: rw_requests.removexattr,
            P.READDIR: self._readdir,
            P.READDIRPLUS: self._readdirplus,
            P.CREATE: rw_requests.create,
            P.INTERRUPT: self._interrupt,
            P.NOTIFY_REPLY: self._no_reply,
            P.FALLOCATE: self._eopnotsupp,
            # ACCESS: ENOSYS makes the kernel stop asking (default_permissions does the checks);
            # GETLK/SETLK/SETLKW: ENOSYS -> the kernel keeps POSIX locks local;
            # BMAP, POLL, LSEEK, COPY_FILE_RANGE, TMPFILE...: ENOSYS (the default).
        }.items():
            table[opcode] = handler
        return table

    def _enosys(self, req: bytes, unique: int, nodeid: int) -> None:
        self.reply_error(unique, errno.ENOSYS)

    def _eopnotsupp(self, req: bytes, unique: int, nodeid: int) -> None:
        self.reply_error(unique, errno.EOPNOTSUPP)

    def _reply_ok_req(self, req: bytes, unique: int, nodeid: int) -> None:
        self.reply_ok(unique)

    def _no_reply(self, req: bytes, unique: int, nodeid: int) -> None:
        pass

    @staticmethod
    def names(req: bytes, start: int, count: int) -> list[str]:
        """count NUL-terminated UTF-8 names from req[start:]; UnicodeDecodeError if invalid."""
        parts = req[start:].split(b"\0", count)
        if len(parts) <= count - 1:
            raise UnicodeDecodeError("utf-8", b"", 0, 0, "truncated name")
        return [p.decode() for p in parts[:count]]

    # ------------------------------------------------------------------ INIT / DESTROY
    def _wanted_flags(self) -> int:
        want = (P.ASYNC_READ | P.BIG_WRITES | P.DO_READDIRPLUS | P.PARALLEL_DIROPS
                | P.CACHE_SYMLINKS | P.MAX_PAGES)
        if not self.read_only:
            want |= P.ATOMIC_O_TRUNC
            if not self.keep_cache:
                # rw without keep_cache: drop cached pages when mtime/size change
                want |= P.AUTO_INVAL_DATA
        # Read-only mounts never ask for AUTO_INVAL_DATA: their data does not change,
        # and the page cache must survive from epoch to epoch (see docs/architecture.md).
        return want

    def _init(self, req: bytes, unique: int, nodeid: int) -> None:
        major, minor, max_readahead, flags = P.INIT_IN.unpack_from(req, P.IN_HEADER_SIZE)
        if major > P.KERNEL_VERSION:
            # the kernel retries INIT with the major we announce
            self.send(P.OUT_HEADER.pack(16 + 8, 0, unique) + P.INIT_IN.pack(P.KERNEL_VERSION, 0, 0, 0)[:8])
            return
        if major < P.KERNEL_VERSION or minor < P.MIN_KERNEL_MINOR:
            log.error("kernel FUSE protocol %d.%d is too old (need 7.%d)", major, minor, P.MIN_KERNEL_MINOR)
            self.reply_error(unique, errno.EPROTO)
            return
        want = self.want_flags
        out_minor = min(minor, P.KERNEL_MINOR_VERSION)
        got = want & flags
        self.proto_minor = out_minor
        self.kernel_flags = flags
        self.init_flags = got
        body = P.INIT_OUT.pack(P.KERNEL_VERSION, out_minor, max_readahead, got, MAX_BACKGROUND,
                               CONGESTION_THRESHOLD, self.max_write, 1, MAX_PAGES, 0, 0)
        if out_minor < 23:
            body = body[:P.INIT_OUT_COMPAT_22]
        self.send(P.OUT_HEADER.pack(16 + len(body), 0, unique) + body)
        log.debug("FUSE 7.%d initialized, flags %#x (kernel offered %#x), max_readahead %d",
                  out_minor, got, flags, max_readahead)
        self.initialized.set()

    def _destroy(self, req: bytes, unique: int, nodeid: int) -> None:
        # The kernel then aborts the connection; readers end on ENODEV.
        self.reply_ok(unique)

    # ------------------------------------------------------------------ hot: lookup/attr
    def _lookup(self, req: bytes, unique: int, nodeid: int) -> None:
        try:
            name = req[40:-1].decode()
        except UnicodeDecodeError:
            return self.reply_error(unique, errno.EINVAL)
        try:
            attr = self.fs.cached_lookup(nodeid, name)
        except NotFound:
            if self.negative_valid[0] or self.negative_valid[1]:
                return self._reply_negative(unique)
            return self.reply_error(unique, errno.ENOENT)
        if attr is not None:
            return self.reply_entry(unique, attr)
        self.cold(unique, P.LOOKUP, self._lookup_cold(nodeid, name), self._reply_lookup)

    async def _lookup_cold(self, parent: int, name: str) -> Any:
        try:
            return await self.fs.lookup(parent, name)
        except NotFound:
            if self.negative_valid[0] or self.negative_valid[1]:
                return None  # -> negative entry the kernel caches
            raise

    def _getattr(self, req: bytes, unique: int, nodeid: int) -> None:
        attr = self.fs.cached_getattr(nodeid)
        if attr is not None:
            return self.reply_attr(unique, attr)
        self.cold(unique, P.GETATTR, self.fs.getattr(nodeid), self.reply_attr)

    def _forget(self, req: bytes, unique: int, nodeid: int) -> None:
        self.fs.forget(nodeid, P.FORGET_IN.unpack_from(req, 40)[0])

    def _batch_forget(self, req: bytes, unique: int, nodeid: int) -> None:
        count = P.BATCH_FORGET_IN.unpack_from(req, 40)[0]
        forget = self.fs.forget
        for ino, nlookup in P.FORGET_ONE.iter_unpack(req[48:48 + 16 * count]):
            forget(ino, nlookup)

    def _interrupt(self, req: bytes, unique: int, nodeid: int) -> None:
        target = P.INTERRUPT_IN.unpack_from(req, 40)[0]
        item = self._inflight.get(target)
        if item is not None and item[1]:
            self.loop.call_soon_threadsafe(item[0].cancel)

    # ------------------------------------------------------------------ hot: read
    def _read(self, req: bytes, unique: int, nodeid: int) -> None:
        fh, offset, size = P.READ_HEAD.unpack_from(req, 40)
        if fh == 0:
            data = self.fs.cached_read(nodeid, offset, size)
            if data is not None:
                return self.reply_data(unique, data)
            self.cold(unique, P.READ, self.fs.read(nodeid, offset, size), self.reply_data)
        else:
            self.cold(unique, P.READ, self.fs.read_handle(nodeid, fh, offset, size), self.reply_data)

    # ------------------------------------------------------------------ hot: directories
    def _readdirplus(self, req: bytes, unique: int, nodeid: int) -> None:
        _, offset, size = P.READ_HEAD.unpack_from(req, 40)
        entries = self.fs.cached_readdir(nodeid)
        if entries is not None:
            return self._reply_dirplus(unique, nodeid, offset, size, entries)
        self.cold(unique, P.READDIRPLUS, self.fs.readdir(nodeid),
                   lambda u, ents: self._reply_dirplus(u, nodeid, offset, size, ents))

    def _reply_dirplus(self, unique: int, nodeid: int, offset: int, size: int, entries: list) -> None:
        out, used, refs = R.direntplus(entries, nodeid, offset, size, self.entry_valid, self.attr_valid)
        out[0] = P.OUT_HEADER.pack(used, 0, unique)
        ref = self.fs.ref
        for attr in refs:
            ref(attr)
        if not self.send(b"".join(out)):
            forget = self.fs.forget
            for attr in refs:
                forget(attr.ino, 1)

    def _readdir(self, req: bytes, unique: int, nodeid: int) -> None:
        # Only without DO_READDIRPLUS (never negotiated by us), kept for completeness.
        _, offset, size = P.READ_HEAD.unpack_from(req, 40)
        entries = self.fs.cached_readdir(nodeid)
        if entries is not None:
            return self._reply_dir(unique, nodeid, offset, size, entries)
        self.cold(unique, P.READDIR, self.fs.readdir(nodeid),
                   lambda u, ents: self._reply_dir(u, nodeid, offset, size, ents))

    def _reply_dir(self, unique: int, nodeid: int, offset: int, size: int, entries: list) -> None:
        out, used = R.dirent(entries, nodeid, offset, size)
        out[0] = P.OUT_HEADER.pack(used, 0, unique)
        self.send(b"".join(out))

    def _opendir(self, req: bytes, unique: int, nodeid: int) -> None:
        # rw mounts: a handle-less open with no cache flags (listings may change); the
        # fs lists the directory afresh for this open (other clients' changes show)
        self.fs.opendir(nodeid)
        self.send(P.OPEN_REPLY.pack(32, 0, unique, 0, 0, 0))

    def _statfs(self, req: bytes, unique: int, nodeid: int) -> None:
        self.cold(unique, P.STATFS, self.fs.statfs(), self._reply_statfs)

    def _readlink(self, req: bytes, unique: int, nodeid: int) -> None:
        self.cold(unique, P.READLINK, self.fs.readlink(nodeid),
                   lambda u, target: self.reply_data(u, target.encode("utf-8", "surrogateescape")))

    # ------------------------------------------------------------------ xattrs
    def _getxattr(self, req: bytes, unique: int, nodeid: int) -> None:
        size = P.GETXATTR_IN.unpack_from(req, 40)[0]
        try:
            name = self.names(req, 48, 1)[0]
        except UnicodeDecodeError:
            return self.reply_error(unique, errno.EINVAL)
        if name.startswith(LOCAL_XATTR_PREFIXES):
            return self.reply_error(unique, errno.ENODATA)
        self.cold(unique, P.GETXATTR, self.fs.getxattr(nodeid, name),
                   lambda u, value: self._reply_xattr(u, size, value))


    def _listxattr(self, req: bytes, unique: int, nodeid: int) -> None:
        size = P.GETXATTR_IN.unpack_from(req, 40)[0]
        self.cold(unique, P.LISTXATTR, self._listxattr_cold(nodeid),
                   lambda u, value: self._reply_xattr(u, size, value))

    async def _listxattr_cold(self, ino: int) -> bytes:
        try:
            names = await self.fs.listxattr(ino)
        except NotSupported:
            names = []
        return b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)

    def _reply_xattr(self, unique: int, size: int, value: bytes) -> None:
        if size == 0:
            reply = P.GETXATTR_REPLY.pack(24, 0, unique, len(value), 0)
        elif len(value) > size:
            return self.reply_error(unique, errno.ERANGE)
        else:
            reply = P.OUT_HEADER.pack(16 + len(value), 0, unique) + value
        # behind the notices queued so far: a warmup's pages are in the page cache
        # before its caller goes on to read them
        self.notifier.send_after(reply, lambda: None)

    # ------------------------------------------------------------------ notifications
    def invalidate_inode(self, ino: int, offset: int = 0, length: int = 0) -> None:
        """Ask the kernel to drop its cached attributes and pages of ino (any thread).

        offset < 0 drops only the attributes; length <= 0 means to the end of the file.
        """
        if self.initialized.is_set() and not self.finished.is_set():
            self.notifier.invalidate_inode(ino, offset, length)

    def invalidate_entry(self, parent: int, name: str) -> None:
        """Ask the kernel to drop its cached name -> inode entry (any thread)."""
        if self.initialized.is_set() and not self.finished.is_set():
            self.notifier.invalidate_entry(parent, name)

    def store_pages(self, ino: int, data: bytes) -> None:
        """Hand a whole file's bytes to the kernel's page cache (any thread)."""
        if self.initialized.is_set() and not self.finished.is_set():
            self.notifier.store(ino, data)
