"""The mount table as the CSI node plugin needs it: what is mounted at a target,
is that mount dead (its FUSE daemon gone), and unmount it without a helper binary.

Root only (the plugin runs privileged): umount2(2) is called directly, so no
`umount` process, no shell and no PATH look-up is involved. The plugin unmounts
only pailfs mounts (fs type `fuse.pailfs`); anything else at a target is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os

from pailfs.fuse.mount import MountInfo, find_mount, resolve_parent

log = logging.getLogger(__name__)

PAILFS_FSTYPE = "fuse.pailfs"
MNT_DETACH = 2  # <sys/mount.h>: lazy unmount, works on a mount whose daemon died
# What statvfs(2) answers on a FUSE mount whose daemon is gone: ENOTCONN, or
# ECONNABORTED when the daemon had asked for FUSE_ABORT_ERROR.
DEAD_MOUNT_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def canonical(path: str) -> str:
    """Absolute path with symlinks of the parent resolved; the last component is
    not touched, since stat on a dead FUSE mount point fails."""
    return resolve_parent(path)


def mount_at(path: str) -> MountInfo | None:
    """The topmost mount at `path`, live or dead (from the mount table)."""
    return find_mount(canonical(path))


def is_mount_point(path: str) -> bool:
    return mount_at(path) is not None


def is_dead_mount(path: str) -> bool:
    """True when statvfs(path) fails with ENOTCONN/ECONNABORTED: a FUSE mount whose daemon is gone.

    statvfs, not stat: the kernel may answer stat from cached attributes
    (kernel_cache) long after the daemon died, but STATFS always asks it."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in DEAD_MOUNT_ERRNOS
    return False


def unmount(path: str, lazy: bool = False) -> None:
    """umount2(path); raises OSError with the kernel's errno."""
    if _libc.umount2(os.fsencode(path), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def unmount_pailfs(path: str, attempts: int = 8) -> None:
    """Remove every pailfs mount stacked on `path`: a clean unmount first, a lazy one
    when the mount is dead or still busy, so an unpublish never hangs. Raises
    OSError(EPERM) at a mount that is not pailfs's (it stays)."""
    for _ in range(attempts):
        info = mount_at(path)
        if info is None:
            return
        if info.fstype != PAILFS_FSTYPE:
            raise OSError(errno.EPERM, f"a {info.fstype} mount that pailfs did not make", path)
        try:
            unmount(path, lazy=is_dead_mount(path))
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # raced with another unmount: no longer a mount point
                continue
            log.warning("unmount of %s failed (%s); detaching it lazily", path, exc.strerror)
            unmount(path, lazy=True)
    if is_mount_point(path):
        raise OSError(errno.EBUSY, "still mounted after repeated unmounts", path)
