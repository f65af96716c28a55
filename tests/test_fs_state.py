"""Handing a file system's state to a successor (fs/state.py, used by `pailfs mount
--takeover` and the CSI plugin's upgrades) never turns data the predecessor would
not upload into data the successor uploads: an unlinked open file stays unlinked,
a poisoned write stays poisoned. Over the in-memory store, no mount."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from pailfs.config import parse_options
from pailfs.errors import StoreError, StoreUnavailable
from pailfs.fs.core import ObjectFileSystem
from pailfs.fs.types import ROOT_INO
from pailfs.store.memory import MemoryStore

pytestmark = pytest.mark.unit
MiB = 1024 * 1024


def handover(options: str, before, after) -> MemoryStore:
    """Run before(fs, store) on a predecessor, hand its state to a successor the way a
    takeover does (the staging files as new descriptors), then after(fs, store, ctx)."""
    store = MemoryStore()
    opts = parse_options([options], env={})

    async def main():
        loop = asyncio.get_running_loop()
        old = ObjectFileSystem(store, opts)
        old.attach(loop)
        new = ObjectFileSystem(store, opts)
        new.attach(loop)
        try:
            ctx = await before(old, store)
            state, fds = await old.export_state()
            new.import_state(state, [os.dup(fd) for fd in fds])  # what SCM_RIGHTS delivers
            old.forget_exported()
            await after(new, store, ctx)
        finally:
            await new.close()
            await old.close()

    asyncio.run(main())
    return store


def test_a_file_unlinked_while_open_stays_unlinked():
    async def before(fs, store):
        node, fh = await fs.create(ROOT_INO, "scratch.bin", 0o644, os.O_WRONLY | os.O_CREAT)
        fs.ref(node)  # the kernel holds what it opened
        await fs.write(node.ino, fh, 0, b"temporary")
        await fs.flush(node.ino, fh)
        await fs.unlink(ROOT_INO, "scratch.bin")
        await fs.write(node.ino, fh, 9, b" and more")
        return node.ino, fh

    async def after(fs, store, ctx):
        ino, fh = ctx
        await fs.release(ino, fh)
        assert "scratch.bin" not in [o.key for o in (await store.list("")).objects]

    handover("stat_cache_expire=60", before, after)


def test_a_poisoned_streamed_write_stays_poisoned():
    async def before(fs, store):
        await store.put("model.bin", b"old model")
        node = await fs.lookup(ROOT_INO, "model.bin")
        fs.ref(node)
        fh = await fs.open(node.ino, os.O_WRONLY | os.O_TRUNC)
        store.fail_next("put_part", StoreUnavailable("the server went away"), times=100)
        for offset in range(0, 12 * MiB, MiB):  # past max_dirty_data: streams into 5 MiB parts
            await fs.write(node.ino, fh, offset, os.urandom(MiB))
        staged = fs.writes.staged[node.ino]
        deadline = time.monotonic() + 10
        while staged.stream is not None and staged.stream.running:  # the part uploads end (failed)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        return node.ino, fh

    async def after(fs, store, ctx):
        ino, fh = ctx
        with pytest.raises(StoreError):
            await fs.flush(ino, fh)
        await fs.release(ino, fh)
        assert await store.get("model.bin") == b"old model"

    handover("stat_cache_expire=60,max_dirty_data=1,multipart_size=5", before, after)


def test_unsaved_writes_are_uploaded_by_the_successor():
    async def before(fs, store):
        node, fh = await fs.create(ROOT_INO, "notes.txt", 0o644, os.O_WRONLY | os.O_CREAT)
        fs.ref(node)
        await fs.write(node.ino, fh, 0, b"written before the takeover")
        return node.ino, fh

    async def after(fs, store, ctx):
        ino, fh = ctx
        await fs.write(ino, fh, 27, b", and after")
        await fs.release(ino, fh)
        assert await store.get("notes.txt") == b"written before the takeover, and after"

    handover("stat_cache_expire=60", before, after)
