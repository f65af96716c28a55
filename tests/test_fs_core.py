"""The file system core called directly (no mount), against the real SeaweedFS:
which store requests each call costs, and what the stat cache keeps."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from mounts import put_objects
from pailfs.config import configuration_markdown, parse_options
from pailfs.errors import NotFound, ReadOnly
from pailfs.fs.core import ObjectFileSystem
from pailfs.fs.types import ROOT_INO, SetAttr
from pailfs.store import open_store


def run_fs(bucket: str, options: str, body):
    """Build an ObjectFileSystem on a fresh store and run body(fs) on a loop."""

    async def main():
        store = open_store(f"s3://{bucket}", parse_options([options] if options else []))
        fs = ObjectFileSystem(store, store_options := parse_options([options] if options else []))
        del store_options
        fs.attach(asyncio.get_running_loop())
        try:
            return await body(fs)
        finally:
            await fs.close()
            await store.close()

    return asyncio.run(main())


def requests(fs) -> dict:
    return dict(fs.store.stats.requests)


@pytest.fixture
def tree(bucket, s3_env):
    objects = {f"dir/f{i:03d}": b"x" * i for i in range(50)}
    objects["dir/sub/inner"] = b"inner"
    objects["top.txt"] = b"top"
    put_objects(f"s3://{bucket}", objects)
    return bucket


def test_readdir_fills_attributes_from_list_without_head(tree):
    async def body(fs):
        d = await fs.lookup(ROOT_INO, "dir")
        entries = await fs.readdir(d.ino)
        names = {node.name: node for node in entries}
        assert len(names) == 51 and names["sub"].is_dir and names["f007"].size == 7
        before = requests(fs)
        assert "head" not in before
        for i in range(50):
            node = fs.cached_lookup(d.ino, f"f{i:03d}")
            assert node is not None and node.size == i
        with pytest.raises(NotFound):
            fs.cached_lookup(d.ino, "absent")  # the listing proves absence
        assert requests(fs) == before
        return True

    assert run_fs(tree, "ro,kernel_cache", body)


def test_one_list_answers_all_sibling_lookups(tree):
    async def body(fs):
        d = await fs.lookup(ROOT_INO, "dir")
        results = await asyncio.gather(*(fs.lookup(d.ino, f"f{i:03d}") for i in range(50)))
        assert [n.size for n in results] == list(range(50))
        counts = requests(fs)
        assert counts.get("head", 0) == 0
        assert counts.get("list", 0) <= 2  # root + dir
        with pytest.raises(NotFound):
            await fs.lookup(d.ino, "nope")
        assert requests(fs) == counts  # negative answer from the listing
        return True

    assert run_fs(tree, "ro", body)


def test_without_stat_cache_every_lookup_asks_the_store(tree):
    async def body(fs):
        assert fs.entry_timeout == fs.attr_timeout == 0
        d = await fs.lookup(ROOT_INO, "dir")
        await fs.lookup(d.ino, "f001")
        first = requests(fs)
        await fs.lookup(d.ino, "f001")
        second = requests(fs)
        assert sum(second.values()) > sum(first.values())
        assert fs.cached_lookup(d.ino, "f001") is None
        return True

    assert run_fs(tree, "max_stat_cache_size=0", body)


def test_stat_cache_is_bounded(bucket, s3_env):
    put_objects(f"s3://{bucket}", {f"many/k{i:04d}": b"" for i in range(300)})

    async def body(fs):
        d = await fs.lookup(ROOT_INO, "many")
        entries = await fs.readdir(d.ino)
        assert len(entries) == 300  # readdir still answers in full
        assert fs.namespace.stat_cache.count <= 100
        assert fs.namespace.stat_cache.evictions > 0
        # evicted names are still found, from the store
        node = await fs.lookup(d.ino, "k0000")
        assert node.size == 0
        return True

    assert run_fs(bucket, "ro,max_stat_cache_size=100", body)


def test_read_only_core_refuses_changes(tree):
    async def body(fs):
        top = await fs.lookup(ROOT_INO, "top.txt")
        for call in (lambda: fs.mkdir(ROOT_INO, "d", 0o755), lambda: fs.unlink(ROOT_INO, "top.txt"),
                     lambda: fs.setattr(top.ino, None, SetAttr(mode=0o600)),
                     lambda: fs.create(ROOT_INO, "n", 0o644, 0),
                     lambda: fs.rename(ROOT_INO, "top.txt", ROOT_INO, "x")):
            with pytest.raises(ReadOnly):
                await call()
        assert await fs.read(top.ino, 0, 100) == b"top"
        return True

    assert run_fs(tree, "ro", body)


def test_modes_follow_options(tree):
    async def body(fs):
        top = await fs.lookup(ROOT_INO, "top.txt")
        d = await fs.lookup(ROOT_INO, "dir")
        return stat.S_IMODE(top.mode), stat.S_IMODE(d.mode), stat.S_IMODE(fs.namespace.root.mode), top.uid

    assert run_fs(tree, "ro", body)[:3] == (0o640, 0o750, 0o750)
    assert run_fs(tree, "ro,umask=027,mp_umask=0,uid=7", body) == (0o750, 0o750, 0o777, 7)


def test_configuration_doc_matches_the_option_table():
    doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == configuration_markdown(), "regenerate: python -m pailfs.config > docs/configuration.md"


@pytest.mark.parametrize("new", [b"grown well past the listed size", b"cut"])
def test_small_object_changed_since_listing_reads_whole(new, tree):
    """A small object is fetched in one request sized from its listing; if it changed
    meanwhile, the read still returns the whole current object, never a torn one."""
    async def body(fs):
        top = await fs.lookup(ROOT_INO, "top.txt")
        assert top.size == 3
        await fs.store.put("top.txt", new)
        before = requests(fs).get("get", 0)
        data = await fs.read(top.ino, 0, 1 << 20)
        assert bytes(data) == new
        assert top.size == len(new)
        return requests(fs)["get"] - before

    gets = run_fs(tree, "ro", body)
    assert gets == (2 if len(new) > 3 else 1)
