"""What the file system core offers a front end (the FUSE layer, or a test).

The core works with inode numbers and names, like the kernel, and knows
nothing of the FUSE protocol. Each call has two forms:

* `cached_*` — the hot path. Answers from memory only, never blocks, never does
  I/O, and returns None on a miss. The front end calls it inline in the thread
  that read the request.
* the coroutine of the same name — the cold path, run on the core's asyncio
  loop; it may ask the store.

The front end attaches itself once it serves the file system:
`attach(loop, front_end)` names the loop the coroutines run on and the
FrontEnd to tell when cached bytes went stale.

Errors are raised as pailfs.errors exceptions; the front end maps them to
errnos with pailfs.errors.errno_of. Names are str (S3 keys are UTF-8); a name
that is not valid UTF-8 is refused by the front end with EINVAL.

Reference counting follows the kernel: every time the front end hands an
entry (an Attr with a nonzero ino) to the kernel — LOOKUP, READDIRPLUS,
CREATE, MKDIR, SYMLINK — it calls `ref(attr)` once, before the reply is
written, passing the very object the core returned (so the core can keep an
inode it was about to drop); FORGET calls `forget(ino, n)`.
"""

from __future__ import annotations

import asyncio
import stat
from dataclasses import dataclass
from typing import Protocol

ROOT_INO = 1


@dataclass(slots=True)
class Attr:
    """Attributes of one inode; `name` is set on readdir entries."""

    ino: int
    size: int
    mode: int  # includes the file type bits (S_IFREG, S_IFDIR, S_IFLNK)
    uid: int
    gid: int
    mtime: float
    nlink: int = 1
    ctime: float | None = None  # None: same as mtime
    atime: float | None = None  # None: same as mtime
    name: str = ""
    # (atime s, ns, mtime s, ns, ctime s, ns) when the times are known to the
    # nanosecond (read-write inodes); None: use the float fields
    times_ns: tuple[int, int, int, int, int, int] | None = None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass(slots=True)
class StatFs:
    blocks: int = 1 << 40
    bfree: int = 1 << 40
    bavail: int = 1 << 40
    files: int = 1 << 32
    ffree: int = 1 << 32
    bsize: int = 4096
    namelen: int = 255  # enforced for names this mount creates (mutations.NAME_MAX)
    frsize: int = 4096


@dataclass(slots=True)
class SetAttr:
    """Fields of a SETATTR; None means 'leave as is'."""

    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime: float | None = None
    mtime: float | None = None
    atime_ns: int | None = None  # the same times to the nanosecond, when the front end has them
    mtime_ns: int | None = None


class FrontEnd(Protocol):
    """What the file system may ask of the front end that serves it."""

    def invalidate_entry(self, parent: int, name: str) -> None:
        """Drop the kernel's cached name -> inode entry (the next open looks it up)."""

    def invalidate_inode(self, ino: int) -> None:
        """Drop the kernel's cached pages and attributes of ino (the object changed)."""

    def store_pages(self, ino: int, data: bytes) -> None:
        """Put a whole file's bytes into the kernel's page cache of ino (warmup)."""

    def request_counts(self) -> dict[str, int]:
        """Requests received from the kernel, by kind (for `pailfs stats`)."""


class FileSystemOps(Protocol):
    # --- properties the front end reads once at mount ------------------------
    read_only: bool          # True: answer OPEN/OPENDIR with ENOSYS (zero-message opens)
    entry_timeout: float     # seconds the kernel may cache a name -> inode
    attr_timeout: float      # seconds the kernel may cache attributes
    negative_timeout: float  # seconds the kernel may cache "no such name" (0 = don't)
    keep_cache: bool         # rw mounts: set FOPEN_KEEP_CACHE on OPEN replies

    def attach(self, loop: asyncio.AbstractEventLoop, front_end: FrontEnd | None = None) -> None: ...

    # --- hot path: memory only, None on a miss --------------------------------
    def cached_lookup(self, parent: int, name: str) -> Attr | None:
        """Raises NotFound when the name is known (negatively cached) to be absent."""

    def cached_getattr(self, ino: int) -> Attr | None: ...

    def cached_readdir(self, ino: int) -> list[Attr] | None:
        """All entries of a directory (without '.' and '..'), each with its `name`,
        in a stable order (one list slot per entry: no pair objects to keep)."""

    def cached_read(self, ino: int, offset: int, size: int) -> bytes | None: ...

    def opendir(self, ino: int) -> None:
        """OPENDIR on a read-write mount (reader thread, no I/O): the readdir of this
        open lists the directory from the store again."""

    # --- cold path: coroutines on the core's loop -----------------------------
    async def lookup(self, parent: int, name: str) -> Attr: ...

    async def getattr(self, ino: int) -> Attr: ...

    async def readdir(self, ino: int) -> list[Attr]: ...

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to size bytes at offset; fewer only at end of file."""

    async def statfs(self) -> StatFs: ...

    async def getxattr(self, ino: int, name: str) -> bytes:
        """Extended attribute value; NoSuchAttribute (ENODATA) if absent."""

    async def listxattr(self, ino: int) -> list[str]: ...

    # --- reference counting -----------------------------------------------------
    def ref(self, attr: Attr) -> None: ...

    def forget(self, ino: int, nlookup: int) -> None: ...

    # --- read-write (read_only mounts raise ReadOnly) -------------------------
    async def open(self, ino: int, flags: int) -> int:
        """Returns a file handle (nonzero)."""

    async def create(self, parent: int, name: str, mode: int, flags: int) -> tuple[Attr, int]: ...

    async def write(self, ino: int, fh: int, offset: int, data: bytes) -> int: ...

    async def read_handle(self, ino: int, fh: int, offset: int, size: int) -> bytes:
        """READ on an opened handle (rw mounts; sees the handle's own writes)."""

    async def flush(self, ino: int, fh: int) -> None: ...

    async def fsync(self, ino: int, fh: int, datasync: bool) -> None: ...

    async def release(self, ino: int, fh: int) -> None: ...

    async def setattr(self, ino: int, fh: int | None, changes: SetAttr) -> Attr: ...

    async def mknod(self, parent: int, name: str, mode: int, rdev: int) -> Attr:
        """mode includes the file type bits (S_IFREG, S_IFIFO, ...)."""

    async def link(self, ino: int, new_parent: int, new_name: str) -> Attr: ...

    async def mkdir(self, parent: int, name: str, mode: int) -> Attr: ...

    async def unlink(self, parent: int, name: str) -> None: ...

    async def rmdir(self, parent: int, name: str) -> None: ...

    async def rename(self, parent: int, name: str, new_parent: int, new_name: str, *,
                     noreplace: bool = False, exchange: bool = False) -> None:
        """noreplace: EEXIST if new_name exists (RENAME_NOREPLACE); exchange: swap
        the two (RENAME_EXCHANGE)."""

    async def symlink(self, parent: int, name: str, target: str) -> Attr: ...

    async def readlink(self, ino: int) -> str: ...

    async def setxattr(self, ino: int, name: str, value: bytes, flags: int) -> None: ...

    async def removexattr(self, ino: int, name: str) -> None: ...

    async def close(self) -> None:
        """Unmounted: finish pending uploads, stop background work."""

    # --- handover to a successor process (pailfs.fs.state) ----------------------
    async def export_state(self) -> tuple[dict, list[int]]:
        """What the kernel can see (inodes it holds, handles, staged writes) as JSON-able
        data and the file descriptors that go with it; FUSE requests are drained first."""

    def import_state(self, data: dict, fds: list[int]) -> None: ...

    def forget_exported(self) -> None:
        """The successor serves: drop what it now owns, without uploading."""
