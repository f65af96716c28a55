"""Mount lifecycle: checks, mount(2) or fusermount3, unmount, stale-mount detection.

As root, pailfs opens /dev/fuse itself and calls mount(2) with the fd in the
data string; other users go through `fusermount3`, which mounts and passes
the /dev/fuse fd back over a socket (`_FUSE_COMMFD`, SCM_RIGHTS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass

from pailfs.errors import MountError

log = logging.getLogger(__name__)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOATIME = 1024
MNT_FORCE = 1      # not used: a forced unmount fails the callers of in-flight requests
MNT_DETACH = 2

FUSE_DEVICE = "/dev/fuse"
FUSECTL_DIR = "/sys/fs/fuse/connections"

_libc = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                                ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo (the fields pailfs uses)."""

    mount_id: int
    device: tuple[int, int]  # (major, minor) of st_dev
    mountpoint: str
    mount_options: str  # per-mount: ro, nosuid, nodev, noatime...
    fstype: str
    source: str
    options: str        # per-superblock: user_id=, default_permissions...


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[MountInfo]:
    result = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            if len(parts) < 6 or len(rparts) < 3:
                continue
            major, _, minor = parts[2].partition(":")
            result.append(MountInfo(int(parts[0]), (int(major), int(minor)), _unescape(parts[4]),
                                    parts[5], rparts[0], _unescape(rparts[1]), rparts[2]))
    return result


def find_mount(mountpoint: str) -> MountInfo | None:
    """The topmost mount at mountpoint (an absolute, resolved path), or None."""
    path = _abspath(mountpoint)
    found = None
    for info in mounts():
        if info.mountpoint == path:
            found = info  # later lines are mounted on top of earlier ones
    return found


def _abspath(path: str) -> str:
    # realpath would stat through a stale FUSE mount; resolve the parent only
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def is_stale(mountpoint: str) -> bool:
    """True when mountpoint is a FUSE mount whose server has gone (ENOTCONN)."""
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def check_mountpoint(mountpoint: str, *, nonempty: bool = False) -> str:
    """Raise MountError (one clear line) unless mountpoint can be mounted on; returns its path."""
    path = _abspath(mountpoint)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            raise MountError(f"mountpoint {path} is a stale FUSE mount; run `pailfs umount {path}`") from None
        raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {path} is not a directory")
    if find_mount(path) is not None:
        try:  # the stat above may have come from the attribute cache of a dead FUSE mount
            os.statvfs(path)
        except OSError as exc:
            if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                raise MountError(f"mountpoint {path} is a stale FUSE mount; run `pailfs umount {path}`") from None
        raise MountError(f"{path} is already a mount point")
    if not nonempty:
        try:
            with os.scandir(path) as it:
                busy = any(True for _ in it)
        except OSError as exc:
            raise MountError(f"mountpoint {path}: {exc.strerror}") from None
        if busy:
            raise MountError(f"mountpoint {path} is not empty (use -o nonempty to mount over it)")
    if not os.path.exists(FUSE_DEVICE):
        raise MountError(f"{FUSE_DEVICE} is missing: load the fuse module or give the container the device")
    return path


def mount(mountpoint: str, *, fs_name: str = "pailfs", subtype: str = "pailfs", read_only: bool = False,
          allow_other: bool = False, default_permissions: bool = True, noatime: bool = True,
          rootmode: int = 0o40000, uid: int | None = None, gid: int | None = None,
          nonempty: bool = False, max_read: int | None = None,
          use_fusermount: bool | None = None) -> int:
    """Mount a FUSE file system at mountpoint and return the /dev/fuse fd to serve.

    Root uses mount(2) directly; other users (or use_fusermount=True) use fusermount3.
    uid/gid are the mount owner (user_id/group_id: who may use it without
    allow_other), not the owner shown for files. Raises MountError.
    """
    path = check_mountpoint(mountpoint, nonempty=nonempty)
    if use_fusermount is None:
        use_fusermount = os.geteuid() != 0
    if use_fusermount:
        return _mount_fusermount(path, fs_name, subtype, read_only, allow_other, default_permissions,
                                 noatime, nonempty, max_read)
    return _mount_syscall(path, fs_name, subtype, read_only, allow_other, default_permissions, noatime,
                          rootmode, os.getuid() if uid is None else uid,
                          os.getgid() if gid is None else gid, max_read)


def _mount_syscall(path: str, fs_name: str, subtype: str, read_only: bool, allow_other: bool,
                   default_permissions: bool, noatime: bool, rootmode: int, uid: int, gid: int,
                   max_read: int | None) -> int:
    try:
        fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise MountError(f"cannot open {FUSE_DEVICE}: {exc.strerror}") from None
    data = [f"fd={fd}", f"rootmode={rootmode:o}", f"user_id={uid}", f"group_id={gid}"]
    if default_permissions:
        data.append("default_permissions")
    if allow_other:
        data.append("allow_other")
    if max_read:
        data.append(f"max_read={max_read}")
    flags = MS_NOSUID | MS_NODEV
    if read_only:
        flags |= MS_RDONLY
    if noatime:
        flags |= MS_NOATIME
    fstype = f"fuse.{subtype}" if subtype else "fuse"
    rc = _c().mount(os.fsencode(fs_name), os.fsencode(path), fstype.encode(), flags,
                    ",".join(data).encode())
    if rc != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise MountError(f"mount {path} failed: {os.strerror(err)}")
    log.debug("mounted %s at %s (fd %d, flags %#x)", fs_name, path, fd, flags)
    return fd


def _fusermount() -> str:
    exe = shutil.which("fusermount3")
    if exe is None:
        raise MountError("fusermount3 is not installed (Debian/Ubuntu: apt-get install fuse3)")
    return exe


def _mount_fusermount(path: str, fs_name: str, subtype: str, read_only: bool, allow_other: bool,
                      default_permissions: bool, noatime: bool, nonempty: bool,
                      max_read: int | None) -> int:
    exe = _fusermount()
    opts = ["ro" if read_only else "rw", "nosuid", "nodev", f"fsname={fs_name}"]
    if subtype:
        opts.append(f"subtype={subtype}")
    if noatime:
        opts.append("noatime")
    if default_permissions:
        opts.append("default_permissions")
    if allow_other:
        opts.append("allow_other")
    if max_read:
        opts.append(f"max_read={max_read}")
    if nonempty:
        opts.append("nonempty")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        proc = subprocess.run([exe, "-o", ",".join(opts), "--", path], env=env,
                              pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        theirs.close()
        if proc.returncode != 0:
            msg = proc.stderr.decode(errors="replace").strip().splitlines()
            raise MountError(f"fusermount3 could not mount {path}: {msg[-1] if msg else proc.returncode}")
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    except subprocess.TimeoutExpired:
        raise MountError(f"fusermount3 timed out mounting {path}") from None
    finally:
        theirs.close()
        ours.close()
    if not fds:
        raise MountError(f"fusermount3 did not pass back the /dev/fuse fd for {path}")
    fd = fds[0]
    os.set_inheritable(fd, False)
    log.debug("mounted %s at %s through fusermount3 (fd %d)", fs_name, path, fd)
    return fd


def unmount(mountpoint: str, *, lazy: bool = False, use_fusermount: bool | None = None) -> None:
    """Unmount; lazy detaches now and lets open files finish. Raises MountError."""
    path = _abspath(mountpoint)
    if use_fusermount is None:
        use_fusermount = os.geteuid() != 0
    if use_fusermount:
        cmd = [_fusermount(), "-u", "-q"] + (["-z"] if lazy else []) + ["--", path]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        if proc.returncode != 0:
            msg = proc.stderr.decode(errors="replace").strip().splitlines()
            raise MountError(f"cannot unmount {path}: {msg[-1] if msg else 'fusermount3 failed'}")
        return
    if _c().umount2(os.fsencode(path), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            raise MountError(f"{path} is not mounted")
        if err == errno.EBUSY:
            raise MountError(f"{path} is busy (files are open); unmount lazily to detach it now")
        raise MountError(f"cannot unmount {path}: {os.strerror(err)}")


def abort_connection(device: tuple[int, int]) -> bool:
    """Abort a FUSE connection through fusectl (root, fusectl mounted); True if done."""
    major, minor = device
    # the connection is named by the kernel's dev_t of the superblock (MKDEV: major << 20 | minor)
    path = os.path.join(FUSECTL_DIR, str((major << 20) | minor), "abort")
    try:
        with open(path, "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def set_readahead(device: tuple[int, int], kib: int) -> bool:
    """Set the kernel readahead of a mounted FUSE file system (root); True if done.

    FUSE starts at the kernel's 128 KiB and its INIT reply can only lower that,
    so sequential reads arrive as 128 KiB requests unless the bdi is raised here.
    """
    major, minor = device
    try:
        with open(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb", "w") as f:
            f.write(str(kib))
        return True
    except OSError as exc:
        log.debug("cannot set readahead of %d:%d: %s", major, minor, exc)
        return False
