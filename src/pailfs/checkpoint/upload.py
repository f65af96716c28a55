"""Uploading one checkpoint's files, each hashed as it goes, and checking that the
store holds them all before the manifest may name them. Runs on the
Checkpointer's loop thread; file reads and hashing go to its IO pool."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Awaitable, Callable

from pailfs.aio import gather_or_cancel
from pailfs.checkpoint.manifest import FileEntry, step_prefix
from pailfs.checkpoint.snapshot import Snapshot, StagedFile
from pailfs.errors import CheckpointError
from pailfs.store.base import ObjectStore

# Files up to this size are read once into memory, hashed and PUT from that buffer
# (one read); larger ones go through store.put_file (multipart) while a thread
# hashes the staged file, which is then still in the page cache.
SMALL_FILE = 8 * 1024 * 1024


class CheckpointWriter:
    """`io(fn, *args)` runs a blocking function off the loop; at most `parallel`
    files are uploaded at once."""

    def __init__(self, store: ObjectStore, io: Callable[..., Awaitable[Any]], parallel: int) -> None:
        self.store = store
        self._io = io
        self._file_sem = asyncio.Semaphore(parallel)

    async def upload_files(self, step: int, snap: Snapshot) -> tuple[FileEntry, ...]:
        async def one(item: StagedFile) -> FileEntry:
            async with self._file_sem:
                return await self.upload_one(step_prefix(step) + item.name, item)

        return tuple(await gather_or_cancel([one(item) for item in snap.files]))

    async def upload_one(self, key: str, item: StagedFile) -> FileEntry:
        if item.data is not None:
            digest = (hashlib.sha256(item.data).hexdigest() if item.size <= 1 << 20
                      else await self._io(_sha256_bytes, item.data))
            await self.store.put(key, item.data)
            return FileEntry(item.name, item.size, digest)
        assert item.path is not None
        if item.size <= SMALL_FILE:
            data = await self._io(_read, item.path)
            digest = hashlib.sha256(data).hexdigest()
            size = len(data)
            await self.store.put(key, data)
        else:
            hashing = self._io(_sha256_file, item.path)
            try:
                await self.store.put_file(key, item.path)
            except BaseException:
                hashing.cancel()
                raise
            digest, size = await hashing
        if size != item.size or await self._io(item.changed):
            raise CheckpointError(
                f"{item.name} changed while it was being uploaded: it was rewritten in place after "
                "save() returned (write new files, or use Checkpointer(snapshot='copy'))")
        return FileEntry(item.name, item.size, digest)

    async def check_uploaded(self, step: int, entries: tuple[FileEntry, ...]) -> None:
        """The manifest must never name a missing object: LIST the step and compare sizes."""
        prefix = step_prefix(step)
        listing = await self.store.list(prefix)
        sizes = {o.key[len(prefix):]: o.size for o in listing.objects}
        for e in entries:
            if sizes.get(e.name) != e.size:
                got = "missing" if e.name not in sizes else f"{sizes[e.name]} bytes"
                raise CheckpointError(f"checkpoint step {step}: {e.name} is {got} in the store "
                                      f"after upload (expected {e.size} bytes)")


# --- helpers running in worker threads ------------------------------------------
def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                return h.hexdigest(), size
            h.update(block)
            size += len(block)
