"""The mount's side of `pailfs warmup`, called directly on the file system core over
the in-memory store: what reaches the kernel's page cache, and when."""

from __future__ import annotations

import asyncio
import json

import pytest

from pailfs.config import parse_options
from pailfs.fs.core import WARM_XATTR, ObjectFileSystem
from pailfs.fs.types import ROOT_INO
from pailfs.store.memory import MemoryStore

pytestmark = pytest.mark.unit


class PageCache:
    """A front end that keeps what the file system hands to the kernel's page cache."""

    def __init__(self) -> None:
        self.pages: dict[int, bytes] = {}

    def invalidate_inode(self, ino: int) -> None:
        self.pages.pop(ino, None)

    def store_pages(self, ino: int, data: bytes) -> None:
        self.pages[ino] = data

    def request_counts(self) -> dict[str, int]:
        return {}


def run(options: str, objects: dict[str, bytes], body):
    async def main():
        store = MemoryStore()
        for key, data in objects.items():
            await store.put(key, data)
        fs = ObjectFileSystem(store, parse_options([options], env={}))
        kernel = PageCache()
        fs.attach(asyncio.get_running_loop(), kernel)
        try:
            return await body(fs, store, kernel)
        finally:
            await fs.close()

    return asyncio.run(main())


async def warm(fs, ino: int, first: int = 0, count: int = 256) -> dict:
    """Awaited directly, not through a task of its own: a request that follows another
    starts in the very step the caller resumes in, as the mount's next request can."""
    task = asyncio.current_task()
    assert task is not None
    watchdog = asyncio.get_running_loop().call_later(10, task.cancel)
    try:
        return json.loads(await fs.getxattr(ino, f"{WARM_XATTR}.{first}.{count}"))
    except asyncio.CancelledError:
        pytest.fail("the warm request was never served")
    finally:
        watchdog.cancel()


def test_requests_made_one_after_another_are_each_served():
    """A request made the moment the one before finished found that one's workers
    still counted as running (a task done leaves the set a step later) and waited
    forever: `pailfs warmup` hung at a 10 ms round trip."""
    objects = {f"d{d}/f{i:03d}": bytes([d, i]) * 50 for d in range(3) for i in range(70)}

    async def body(fs, store, kernel):
        dirs = {n.name: n for n in await fs.readdir(ROOT_INO)}
        for name in ("d0", "d1", "d2"):
            entries = await fs.readdir(dirs[name].ino)
            assert await warm(fs, dirs[name].ino) == {"files": 70, "bytes": 7000, "missed": 0, "small": 1 << 20}
            assert {kernel.pages[n.ino] for n in entries} == {objects[f"{name}/{n.name}"] for n in entries}
        assert store.stats.requests["get"] == 210

    run("ro,kernel_cache", objects, body)


def test_batches_cover_their_entries_and_a_second_warm_fetches_nothing():
    objects = {f"d/f{i:03d}": bytes([i]) * (1 + i) for i in range(100)}
    objects["d/empty"] = b""

    async def body(fs, store, kernel):
        (d,) = await fs.readdir(ROOT_INO)
        entries = await fs.readdir(d.ino)
        answers = await asyncio.gather(*(warm(fs, d.ino, first, 30) for first in range(0, 101, 30)))
        assert sum(a["files"] for a in answers) == 100 and not any(a["missed"] for a in answers)
        assert len(kernel.pages) == 100
        gets = store.stats.requests["get"]
        assert (await warm(fs, d.ino, 0, 1000))["files"] == 100
        assert store.stats.requests["get"] == gets
        assert all(kernel.pages[n.ino] == objects[f"d/{n.name}"] for n in entries if n.size)

    run("ro,kernel_cache", objects, body)


@pytest.mark.parametrize("options", ["kernel_cache", "ro"])
def test_only_a_read_only_kernel_cache_mount_warms(options):
    """A read-write mount (dirty pages must never be overwritten) and a mount whose
    pages are dropped at every open answer "no such attribute": the caller reads."""
    from pailfs.errors import NoSuchAttribute

    async def body(fs, store, kernel):
        (d,) = await fs.readdir(ROOT_INO)
        with pytest.raises(NoSuchAttribute):
            await fs.getxattr(d.ino, f"{WARM_XATTR}.0.256")
        assert kernel.pages == {}

    run(options, {"d/f": b"data"}, body)


def test_a_file_that_fails_to_fetch_is_missed_not_handed_over():
    from pailfs.errors import StoreUnavailable

    objects = {f"d/f{i}": b"x" * 10 for i in range(5)}

    async def body(fs, store, kernel):
        (d,) = await fs.readdir(ROOT_INO)
        await fs.readdir(d.ino)
        store.fail_next("get", StoreUnavailable("injected"), times=2)
        answer = await warm(fs, d.ino)
        assert answer["files"] == 3 and answer["missed"] == 2
        assert len(kernel.pages) == 3

    run("ro,kernel_cache", objects, body)
