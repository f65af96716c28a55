"""Disk data cache (`use_cache=DIR`): object bytes keyed by key + ETag, LRU, bounded.

Whole small objects are one file; large objects are cached in 1 MiB chunks
(the prefetcher's unit), so a later mount can serve any range it has seen.
A file is named by a hash of (key, ETag[, chunk]), so a changed object never
serves old bytes, and the cache survives a remount. Files are written to a
temp name and renamed, so a crash never leaves a torn entry.

Used from the file system's loop thread only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import OrderedDict

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


class DiskCache:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        # name -> size, oldest first (by mtime at start, then by use)
        self._lru: OrderedDict[str, int] = OrderedDict()
        entries = []
        for root, _dirs, names in os.walk(self.dir):
            for name in names:
                path = os.path.join(root, name)
                if name.startswith(".tmp"):
                    os.unlink(path)  # an interrupted write
                    continue
                st = os.stat(path)
                entries.append((st.st_mtime, os.path.relpath(path, self.dir), st.st_size))
        for _mtime, rel, size in sorted(entries):
            self._lru[rel] = size
        self.used = sum(self._lru.values())

    @staticmethod
    def _name(key: str, etag: str | None, chunk: int | None = None) -> str:
        digest = hashlib.sha256(f"{key}\0{etag}\0{chunk}".encode()).hexdigest()
        return os.path.join(digest[:2], digest[2:])

    def _read(self, rel: str) -> bytes | None:
        if rel not in self._lru:
            return None
        try:
            with open(os.path.join(self.dir, rel), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self.used -= self._lru.pop(rel, 0)
            return None
        self._lru.move_to_end(rel)
        return data

    def _write(self, rel: str, data: bytes) -> None:
        if len(data) > self.max_bytes or rel in self._lru:
            return
        path = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp", dir=os.path.dirname(path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk must not fail the read
            log.warning("disk cache write failed: %s", exc)
            return
        self._lru[rel] = len(data)
        self.used += len(data)
        while self.used > self.max_bytes and self._lru:
            victim, size = self._lru.popitem(last=False)
            self.used -= size
            try:
                os.unlink(os.path.join(self.dir, victim))
            except FileNotFoundError:
                pass

    def get(self, key: str, etag: str | None) -> bytes | None:
        data = self._read(self._name(key, etag))
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        return data

    def put(self, key: str, etag: str | None, data: bytes) -> None:
        self._write(self._name(key, etag), data)

    def get_range(self, key: str, etag: str | None, start: int, end: int) -> bytes | None:
        if start % CHUNK:
            return None
        pieces = []
        for chunk_start in range(start, end, CHUNK):
            piece = self._read(self._name(key, etag, chunk_start))
            if piece is None:
                self.misses += 1
                return None
            pieces.append(piece)
        self.hits += 1
        return b"".join(pieces)[: end - start]

    def put_range(self, key: str, etag: str | None, start: int, data: bytes) -> None:
        if start % CHUNK:
            return
        for off in range(0, len(data), CHUNK):
            self._write(self._name(key, etag, start + off), data[off:off + CHUNK])

    def stats(self) -> dict:
        return {"disk_bytes": self.used, "disk_entries": len(self._lru), "disk_hits": self.hits,
                "disk_misses": self.misses}
