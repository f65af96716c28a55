"""Packing of the records inside replies: fuse_attr fields, timeouts, and the
dirent / direntplus records of READDIR and READDIRPLUS. Pure functions of the
kernel ABI (include/uapi/linux/fuse.h); the session adds headers and sends."""

from __future__ import annotations

import math
import stat
from typing import Any

from pailfs.fuse import protocol as P

BLKSIZE = 128 * 1024              # st_blksize: stdio/cp read this much per call
_MAX_TIMEOUT = float(2**62)
NS = 1_000_000_000
_DOT = (b".", b"..")


def split_seconds(t: float) -> tuple[int, int]:
    """Kernel timeout (seconds, nanoseconds) for a float; negative -> 0, inf -> huge."""
    if not t > 0:
        return 0, 0
    t = min(t, _MAX_TIMEOUT)
    s = int(t)
    return s, min(int((t - s) * 1e9), NS - 1)


def _split_time(t: float) -> tuple[int, int]:
    s = math.floor(t)
    return s, min(int((t - s) * 1e9), NS - 1)


def attr_values(a: Any) -> tuple:
    """The 16 fields of fuse_attr for an Attr (times default to mtime; `times_ns`,
    when not None, gives all three exactly: read-write inodes)."""
    size = a.size
    exact = a.times_ns
    if exact is not None:
        as_, ans, ms, mns, cs, cns = exact
        return (a.ino, size, (size + 511) >> 9, as_, ms, cs, ans, mns, cns,
                a.mode, a.nlink, a.uid, a.gid, 0, BLKSIZE, 0)
    m = a.mtime
    ms = math.floor(m)
    mns = int((m - ms) * 1e9)
    at = a.atime
    if at is None or at == m:
        as_, ans = ms, mns
    else:
        as_, ans = _split_time(at)
    ct = a.ctime
    if ct is None or ct == m:
        cs, cns = ms, mns
    else:
        cs, cns = _split_time(ct)
    return (a.ino, size, (size + 511) >> 9, as_, ms, cs, ans, mns, cns,
            a.mode, a.nlink, a.uid, a.gid, 0, BLKSIZE, 0)


def direntplus(entries: list, nodeid: int, offset: int, size: int, entry_valid: tuple[int, int],
               attr_valid: tuple[int, int]) -> tuple[list[bytes], int, list]:
    """direntplus records for entries[offset-2:], '.' and '..' first ('off' = next index),
    as many as fit in size bytes. Returns (parts, bytes, entries handed to the kernel);
    parts[0] is left empty for the reply header."""
    pack = P.DIRENTPLUS.pack
    pad = P.PADDING
    ev, evn = entry_valid
    av, avn = attr_valid
    out = [b""]
    used = 16
    refs: list[Any] = []
    index = offset
    end = len(entries) + 2
    while index < end:
        if index < 2:
            name = _DOT[index]
            rec = pack(0, 0, 0, 0, 0, 0,
                       0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                       nodeid if index == 0 else 1, index + 1, len(name), stat.S_IFDIR >> 12)
        else:
            attr = entries[index - 2]
            name = attr.name.encode("utf-8", "surrogateescape")
            values = attr_values(attr)
            rec = pack(values[0], 0, ev, av, evn, avn, *values,
                       values[0], index + 1, len(name), (values[9] >> 12) & 0xF)
        reclen = 152 + len(name)
        padding = -reclen & 7
        if used + reclen + padding > size + 16:
            break
        if index >= 2:
            refs.append(attr)
        out.append(rec)
        out.append(name)
        if padding:
            out.append(pad[padding])
        used += reclen + padding
        index += 1
    return out, used, refs


def dirent(entries: list, nodeid: int, offset: int, size: int) -> tuple[list[bytes], int]:
    """dirent records (READDIR without READDIRPLUS), like direntplus."""
    pack = P.DIRENT.pack
    out = [b""]
    used = 16
    index = offset
    end = len(entries) + 2
    while index < end:
        if index < 2:
            name, ino, mode = _DOT[index], (nodeid if index == 0 else 1), stat.S_IFDIR
        else:
            attr = entries[index - 2]
            name, ino, mode = attr.name.encode("utf-8", "surrogateescape"), attr.ino, attr.mode
        reclen = 24 + len(name)
        padding = -reclen & 7
        if used + reclen + padding > size + 16:
            break
        out.append(pack(ino, index + 1, len(name), (mode >> 12) & 0xF))
        out.append(name)
        if padding:
            out.append(P.PADDING[padding])
        used += reclen + padding
        index += 1
    return out, used
