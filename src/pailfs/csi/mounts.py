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

from typing import NamedTuple

log = logging.getLogger(__name__)

PAILFS_FSTYPE = "fuse.pailfs"
MNT_DETACH = 2  # <sys/mount.h>: lazy unmount, works on a mount whose daemon died
# What statvfs(2) answers on a FUSE mount whose daemon is gone: ENOTCONN, or
# ECONNABORTED when the daemon had asked for FUSE_ABORT_ERROR.
DEAD_MOUNT_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


class Mount(NamedTuple):
    mountpoint: str
    fstype: str


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table() -> list[Mount]:
    """Every mount this process sees, in table order (later ones on top)."""
    result = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5 or not right:
                continue
            result.append(Mount(_unescape(fields[4]), right.split()[0]))
    return result


def canonical(path: str) -> str:
    """Absolute path with symlinks of the parent resolved; the last component is
    not touched, since stat on a dead FUSE mount point fails."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mount_at(path: str) -> Mount | None:
    """The topmost mount at `path`, live or dead."""
    path = canonical(path)
    found = None
    for mount in mount_table():
        if mount.mountpoint == path:
            found = mount
    return found


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
