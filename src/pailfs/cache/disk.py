"""Disk data cache (`use_cache=DIR`): object bytes keyed by key + ETag, LRU, bounded.

Whole small objects are one file; large objects are cached in 1 MiB chunks
(the prefetcher's unit), so a later mount can serve any range it has seen.
A file is named by a hash of (key, ETag[, chunk]), so a changed object never
serves old bytes, and the cache survives a remount. Files are written to a
temp name and renamed, so a crash never leaves a torn entry.

Ownership: DIR is the user's. The cache lives in `DIR/pailfs-cache/`, a
directory it creates and marks with a `.pailfs-cache` file; it refuses a
`pailfs-cache` it did not mark (or that is a symlink, or someone else's), and
it only ever deletes files inside it whose names it could have made (entry
names and its own temp files). A user's file anywhere in DIR is never touched.

Threads: called from the file system's loop. Reads of whole small objects run
inline (a few KB from the page cache cost less than a thread hand-off); chunk
reads and every write run on one I/O thread, and writes are not waited for:
at most WRITE_BACKLOG bytes wait to be written, beyond that an entry is not
cached (the read it came from never waits for the disk).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import stat
import tempfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from pailfs.errors import BadOption

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
SUBDIR = "pailfs-cache"
MARKER = ".pailfs-cache"
MARKER_TEXT = "pailfs disk cache, format 1: files here are managed by pailfs\n"
WRITE_BACKLOG = 64 * CHUNK
_ENTRY_RE = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{62}$")
_TMP_RE = re.compile(r"^\.tmp[A-Za-z0-9_]{8}$")  # tempfile.mkstemp(prefix=".tmp") names


def open_cache_dir(directory: str) -> str:
    """DIR/pailfs-cache, created and marked if new; BadOption if it is not ours."""
    base = os.path.abspath(directory)
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise BadOption(f"use_cache={directory}: cannot create the directory ({exc.strerror})") from None
    if not os.path.isdir(base):
        raise BadOption(f"use_cache={directory} is not a directory")
    path = os.path.join(base, SUBDIR)
    marker = os.path.join(path, MARKER)
    try:
        os.mkdir(path, 0o700)
        with open(marker, "x") as f:
            f.write(MARKER_TEXT)
    except FileExistsError:
        pass
    except OSError as exc:
        raise BadOption(f"use_cache={directory}: cannot create {path} ({exc.strerror})") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise BadOption(f"use_cache={directory}: {path} exists and is not a directory of this user; "
                        "pailfs keeps its cache in a directory it creates itself")
    try:
        with open(marker, encoding="utf-8", errors="replace") as f:
            ours = f.read() == MARKER_TEXT
    except OSError:
        ours = False
    if not ours:
        raise BadOption(f"use_cache={directory}: {path} exists but was not created by pailfs "
                        f"(no {MARKER} marker); pailfs will not manage files it did not create")
    return path


class DiskCache:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.dir = open_cache_dir(directory)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._backlog = 0  # bytes handed to the I/O thread, not written yet
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pailfs-disk-cache")
        # name -> size, oldest first (by mtime at start, then by use)
        self._lru: OrderedDict[str, int] = OrderedDict()
        entries = []
        for sub in os.listdir(self.dir):
            subdir = os.path.join(self.dir, sub)
            if len(sub) != 2 or not os.path.isdir(subdir) or os.path.islink(subdir):
                continue
            for name in os.listdir(subdir):
                path = os.path.join(subdir, name)
                rel = f"{sub}/{name}"
                if _TMP_RE.match(name):
                    os.unlink(path)  # our own interrupted write
                    continue
                if not _ENTRY_RE.match(rel):
                    continue  # not a name we make: not ours to count or delete
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    entries.append((st.st_mtime, rel, st.st_size))
        for _mtime, rel, size in sorted(entries):
            self._lru[rel] = size
        self.used = sum(self._lru.values())

    @staticmethod
    def _name(key: str, etag: str | bytes | None, chunk: int | None = None) -> str:
        digest = hashlib.sha256(f"{key}\0{etag}\0{chunk}".encode("utf-8", "surrogateescape")).hexdigest()
        return f"{digest[:2]}/{digest[2:]}"

    def _read(self, rel: str) -> bytes | None:
        try:
            with open(os.path.join(self.dir, rel), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _found(self, rel: str, data: bytes | None) -> bytes | None:
        """Bookkeeping of a read, on the loop thread."""
        if data is None:
            self.used -= self._lru.pop(rel, 0)
            return None
        if rel in self._lru:
            self._lru.move_to_end(rel)
        return data

    def _write(self, rel: str, data: bytes | memoryview) -> bool:
        """On the I/O thread: the entry's file, written atomically."""
        path = os.path.join(self.dir, rel)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp", dir=os.path.dirname(path))
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:  # a full disk must not fail the read
            log.warning("disk cache write failed: %s", exc.strerror)
            return False
        return True

    def _store(self, rel: str, data: bytes | memoryview) -> None:
        if len(data) > self.max_bytes or rel in self._lru or self._backlog + len(data) > WRITE_BACKLOG:
            return
        size = len(data)
        self._backlog += size
        future = asyncio.get_running_loop().run_in_executor(self._io, self._write, rel, data)
        future.add_done_callback(lambda f: self._stored(rel, size, f))

    def _stored(self, rel: str, size: int, future: asyncio.Future) -> None:
        self._backlog -= size
        if future.cancelled() or future.exception() is not None or not future.result() or rel in self._lru:
            return
        self._lru[rel] = size
        self.used += size
        victims = []
        while self.used > self.max_bytes and self._lru:
            victim, vsize = self._lru.popitem(last=False)
            self.used -= vsize
            victims.append(os.path.join(self.dir, victim))
        if victims:
            try:
                self._io.submit(_unlink_all, victims)
            except RuntimeError:  # closed: the unmount is under way; a later mount evicts them
                pass

    async def get(self, key: str, etag: str | bytes | None) -> bytes | None:
        rel = self._name(key, etag)
        data = self._found(rel, self._read(rel)) if rel in self._lru else None
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        return data

    def put(self, key: str, etag: str | bytes | None, data: bytes) -> None:
        self._store(self._name(key, etag), data)

    async def get_range(self, key: str, etag: str | bytes | None, start: int, end: int) -> bytes | None:
        if start % CHUNK:
            return None
        rels = [self._name(key, etag, chunk_start) for chunk_start in range(start, end, CHUNK)]
        if not all(rel in self._lru for rel in rels):
            self.misses += 1
            return None
        loop = asyncio.get_running_loop()
        pieces = await loop.run_in_executor(self._io, lambda: [self._read(rel) for rel in rels])
        for rel, piece in zip(rels, pieces):
            if self._found(rel, piece) is None:
                self.misses += 1
                return None
        self.hits += 1
        return b"".join(pieces)[: end - start]

    def put_range(self, key: str, etag: str | bytes | None, start: int, data: bytes | memoryview) -> None:
        if start % CHUNK:
            return
        for off in range(0, len(data), CHUNK):
            self._store(self._name(key, etag, start + off), data[off:off + CHUNK])

    def stats(self) -> dict:
        return {"disk_bytes": self.used, "disk_entries": len(self._lru), "disk_hits": self.hits,
                "disk_misses": self.misses}

    def close(self) -> None:
        """Finish the writes under way."""
        self._io.shutdown(wait=True)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
