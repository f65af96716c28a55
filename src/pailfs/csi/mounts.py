"""The mount table as the CSI node plugin needs it: is a path a mount point, is
that mount dead (its FUSE daemon gone), and unmount it without a helper binary.

Root only (the plugin runs privileged): umount2(2) is called directly, so no
`umount` process, no shell and no PATH look-up is involved.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os

log = logging.getLogger(__name__)

MNT_DETACH = 2  # <sys/mount.h>: lazy unmount, works on a mount whose daemon died
# What statvfs(2) answers on a FUSE mount whose daemon is gone: ENOTCONN, or
# ECONNABORTED when the daemon had asked for FUSE_ABORT_ERROR.
DEAD_MOUNT_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


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


def mount_points() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount seen by this process, in table order."""
    result = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5 or not right:
                continue
            result.append((_unescape(fields[4]), right.split()[0]))
    return result


def canonical(path: str) -> str:
    """Absolute path with symlinks of the parent resolved; the last component is
    not touched, since stat on a dead FUSE mount point fails."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def is_mount_point(path: str) -> bool:
    """True when `path` is a mount point, live or dead (reads the mount table)."""
    path = canonical(path)
    return any(mp == path for mp, _ in mount_points())


def _is_dead(path: str) -> bool:
    # statvfs, not stat: the kernel may answer stat from cached attributes
    # (kernel_cache) long after the daemon died, but STATFS always asks it.
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in DEAD_MOUNT_ERRNOS
    return False


def is_dead_mount(path: str) -> bool:
    """True when statvfs(path) fails with ENOTCONN/ECONNABORTED: a FUSE mount whose daemon is gone."""
    return _is_dead(path)


def unmount(path: str, lazy: bool = False) -> None:
    """umount2(path); raises OSError with the kernel's errno."""
    if _libc.umount2(os.fsencode(path), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def unmount_all(path: str, attempts: int = 8) -> None:
    """Remove every mount stacked on `path`: a clean unmount first, a lazy one
    when the mount is dead or still busy, so an unpublish never hangs."""
    for _ in range(attempts):
        if not is_mount_point(path):
            return
        dead = is_dead_mount(path)
        try:
            unmount(path, lazy=dead)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # raced with another unmount: no longer a mount point
                continue
            log.warning("unmount of %s failed (%s); detaching it lazily", path, exc.strerror)
            unmount(path, lazy=True)
    if is_mount_point(path):
        raise OSError(errno.EBUSY, "still mounted after repeated unmounts", path)
