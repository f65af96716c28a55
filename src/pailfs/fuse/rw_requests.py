"""Requests of a read-write mount: each decoded into its FileSystemOps call, the
reply packed when the call returns. Cold path only: every one of them goes to the
fs's loop (FuseSession.cold). A read-only session never routes these here: the
kernel refuses them itself on an MS_RDONLY mount, or the fs raises ReadOnly."""

from __future__ import annotations

import errno
import logging
import stat
import time
from typing import TYPE_CHECKING, Any

from pailfs.fs.types import SetAttr
from pailfs.fuse import protocol as P
from pailfs.fuse.records import NS, attr_values

if TYPE_CHECKING:
    from pailfs.fuse.session import FuseSession

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1  # renameat2 flags (<linux/fs.h>)
RENAME_EXCHANGE = 2


class WritableRequests:
    def __init__(self, session: "FuseSession") -> None:
        self.session = session
        self.fs = session.fs

    # ------------------------------------------------------------------ files
    def open(self, req: bytes, unique: int, nodeid: int) -> None:
        flags = P.OPEN_IN.unpack_from(req, 40)[0]
        open_flags = P.FOPEN_KEEP_CACHE if self.session.keep_cache else 0

        def reply(u: int, fh: int) -> None:
            # after the invalidations open() queued (close-to-open: an object that changed
            # must not be read from pages or a size the kernel still holds)
            loop = self.session.loop
            self.session.notifier.send_after(
                P.OPEN_REPLY.pack(32, 0, u, fh, open_flags, 0),
                lambda: loop.call_soon_threadsafe(lambda: loop.create_task(self._release_quietly(nodeid, fh))))

        self.session.cold(unique, P.OPEN, self.fs.open(nodeid, flags), reply)

    async def _release_quietly(self, ino: int, fh: int) -> None:
        try:
            await self.fs.release(ino, fh)
        except Exception as exc:
            log.warning("release of an unanswered open failed: %s", exc)

    def create(self, req: bytes, unique: int, nodeid: int) -> None:
        flags, mode, _umask, _ = P.CREATE_IN.unpack_from(req, 40)
        try:
            name = self.session.names(req, 56, 1)[0]
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        open_flags = P.FOPEN_KEEP_CACHE if self.session.keep_cache else 0

        def reply(u: int, result: tuple[Any, int]) -> None:
            attr, fh = result
            ino = attr.ino
            self.fs.ref(attr)
            ev, evn = self.session.entry_valid
            av, avn = self.session.attr_valid
            if not self.session.send(P.CREATE_REPLY.pack(160, 0, u, ino, 0, ev, av, evn, avn, *attr_values(attr),
                                                  fh, open_flags, 0)):
                self.fs.forget(ino, 1)
                self.session.loop.create_task(self._release_quietly(ino, fh))

        self.session.cold(unique, P.CREATE, self.fs.create(nodeid, name, stat.S_IMODE(mode), flags), reply)

    def mknod(self, req: bytes, unique: int, nodeid: int) -> None:
        mode, rdev, _umask, _ = P.MKNOD_IN.unpack_from(req, 40)
        try:
            name = self.session.names(req, 56, 1)[0]
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        self.session.cold(unique, P.MKNOD, self.fs.mknod(nodeid, name, mode, rdev), self.session.reply_entry)

    def write(self, req: bytes, unique: int, nodeid: int) -> None:
        fh, offset, size = P.READ_HEAD.unpack_from(req, 40)
        data = req[80:80 + size]
        self.session.cold(unique, P.WRITE, self.fs.write(nodeid, fh, offset, data),
                   lambda u, n: self.session.send(P.WRITE_REPLY.pack(24, 0, u, n, 0)))

    def flush(self, req: bytes, unique: int, nodeid: int) -> None:
        fh = P.FLUSH_IN.unpack_from(req, 40)[0]
        self.session.cold(unique, P.FLUSH, self.fs.flush(nodeid, fh), self.session.reply_ok)

    def fsync(self, req: bytes, unique: int, nodeid: int) -> None:
        fh, fsync_flags, _ = P.FSYNC_IN.unpack_from(req, 40)
        self.session.cold(unique, P.FSYNC, self.fs.fsync(nodeid, fh, bool(fsync_flags & P.FSYNC_FDATASYNC)),
                   self.session.reply_ok)

    def release(self, req: bytes, unique: int, nodeid: int) -> None:
        fh = P.RELEASE_IN.unpack_from(req, 40)[0]
        self.session.cold(unique, P.RELEASE, self.fs.release(nodeid, fh), self.session.reply_ok)

    def setattr(self, req: bytes, unique: int, nodeid: int) -> None:
        (valid, _, fh, size, _, atime, mtime, _, atimensec, mtimensec, _, mode, _, uid, gid, _) = \
            P.SETATTR_IN.unpack_from(req, 40)
        changes = SetAttr()
        if valid & P.FATTR_MODE:
            changes.mode = stat.S_IMODE(mode)
        if valid & P.FATTR_UID:
            changes.uid = uid
        if valid & P.FATTR_GID:
            changes.gid = gid
        if valid & P.FATTR_SIZE:
            changes.size = size
        now = None
        if valid & P.FATTR_ATIME_NOW:
            changes.atime_ns = now = time.time_ns()
        elif valid & P.FATTR_ATIME:
            changes.atime_ns = atime * NS + atimensec
        if valid & P.FATTR_MTIME_NOW:
            changes.mtime_ns = now if now is not None else time.time_ns()
        elif valid & P.FATTR_MTIME:
            changes.mtime_ns = mtime * NS + mtimensec
        if changes.atime_ns is not None:
            changes.atime = changes.atime_ns / NS
        if changes.mtime_ns is not None:
            changes.mtime = changes.mtime_ns / NS
        handle = fh if valid & P.FATTR_FH else None
        self.session.cold(unique, P.SETATTR, self.fs.setattr(nodeid, handle, changes), self.session.reply_attr)

    # ------------------------------------------------------------------ namespace
    def mkdir(self, req: bytes, unique: int, nodeid: int) -> None:
        mode, _umask = P.MKDIR_IN.unpack_from(req, 40)
        try:
            name = self.session.names(req, 48, 1)[0]
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        self.session.cold(unique, P.MKDIR, self.fs.mkdir(nodeid, name, stat.S_IMODE(mode)), self.session.reply_entry)

    def unlink(self, req: bytes, unique: int, nodeid: int) -> None:
        try:
            name = self.session.names(req, 40, 1)[0]
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        self.session.cold(unique, P.UNLINK, self.fs.unlink(nodeid, name), self.session.reply_ok)

    def rmdir(self, req: bytes, unique: int, nodeid: int) -> None:
        try:
            name = self.session.names(req, 40, 1)[0]
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        self.session.cold(unique, P.RMDIR, self.fs.rmdir(nodeid, name), self.session.reply_ok)

    def rename(self, req: bytes, unique: int, nodeid: int) -> None:
        newdir = P.RENAME_IN.unpack_from(req, 40)[0]
        self._do_rename(req, unique, nodeid, newdir, 0, 48)

    def rename2(self, req: bytes, unique: int, nodeid: int) -> None:
        newdir, flags, _ = P.RENAME2_IN.unpack_from(req, 40)
        self._do_rename(req, unique, nodeid, newdir, flags, 56)

    def _do_rename(self, req: bytes, unique: int, nodeid: int, newdir: int, flags: int, start: int) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):  # RENAME_WHITEOUT: overlayfs only
            return self.session.reply_error(unique, errno.EINVAL)
        try:
            old, new = self.session.names(req, start, 2)
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        rename = self.fs.rename(nodeid, old, newdir, new, noreplace=bool(flags & RENAME_NOREPLACE),
                                exchange=bool(flags & RENAME_EXCHANGE))
        self.session.cold(unique, P.RENAME, rename, self.session.reply_ok)

    def link(self, req: bytes, unique: int, nodeid: int) -> None:
        newdir = P.LINK_IN.unpack_from(req, 40)[0]
        try:
            name = self.session.names(req, 48, 1)[0]
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        self.session.cold(unique, P.LINK, self.fs.link(nodeid, newdir, name), self.session.reply_entry)

    def symlink(self, req: bytes, unique: int, nodeid: int) -> None:
        try:
            name, target = self.session.names(req, 40, 2)
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        self.session.cold(unique, P.SYMLINK, self.fs.symlink(nodeid, name, target), self.session.reply_entry)

    def setxattr(self, req: bytes, unique: int, nodeid: int) -> None:
        size, flags = P.SETXATTR_IN.unpack_from(req, 40)
        nul = req.find(b"\0", 48)
        try:
            if nul < 0:
                raise UnicodeDecodeError("utf-8", b"", 0, 0, "truncated name")
            name = req[48:nul].decode()
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        value = req[nul + 1:nul + 1 + size]
        self.session.cold(unique, P.SETXATTR, self.fs.setxattr(nodeid, name, value, flags), self.session.reply_ok)

    def removexattr(self, req: bytes, unique: int, nodeid: int) -> None:
        try:
            name = self.session.names(req, 40, 1)[0]
        except UnicodeDecodeError:
            return self.session.reply_error(unique, errno.EINVAL)
        self.session.cold(unique, P.REMOVEXATTR, self.fs.removexattr(nodeid, name), self.session.reply_ok)
