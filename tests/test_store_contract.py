"""One contract suite for every ObjectStore: a local directory and the real SeaweedFS
(with and without a root prefix). Assertions are on what callers see: bytes, keys,
sizes, metadata and error types/messages."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import time

import pytest

import pailfs
from pailfs.errors import (AccessDenied, BadCredentials, BadOption, NoSuchBucket, NotFound, PreconditionFailed, StoreError,
                           StoreUnavailable)
from pailfs.store import open_store, parse_url
from pailfs.store.base import ObjectStore
from pailfs.store.local import LocalStore
from pailfs.store.memory import MemoryStore
from pailfs.store.s3 import S3Store
from pailfs.store.s3api import Credentials
from pailfs.store.url import StoreURL

MiB = 1024 * 1024
ODD_KEYS = [
    "plain.txt",
    "with space/file name.txt",
    "unicode/日本語/ファイル.bin",
    "ümlaut/ä ö.txt",
    "plus+sign",
    "percent%20literal%",
    "equals=sign&and",
    "deep/a/b/c/d/e/f/g/h/i/j.txt",
    "star*question?hash#",
    "brackets[1]{2}",
    "quotes\"'",
    "tilde~caret^",
    ".hidden",
    "dots..name.",
    "comma,semi;colon:at@dollar$",
]


@pytest.fixture(params=["memory", "local", "s3", "s3-prefix"])
def run(request, tmp_path, s3_env, bucket):
    """run(body): build the store under test inside a fresh event loop, await
    body(store), close the store; returns body's result."""
    kind = request.param

    def make() -> ObjectStore:
        if kind == "memory":
            return MemoryStore()
        if kind == "local":
            root = tmp_path / "bucket"
            root.mkdir(exist_ok=True)
            return LocalStore(root)
        prefix = "/root/prefix" if kind == "s3-prefix" else ""
        return open_store(f"s3://{bucket}{prefix}", multipart_size=5, parallel_count=4)

    def runner(body):
        async def main():
            store = make()
            try:
                return await body(store)
            finally:
                await store.close()
        return asyncio.run(main())

    runner.kind = kind
    runner.bucket = bucket
    return runner


async def _put_many(store: ObjectStore, items: dict[str, bytes], limit: int = 32) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(key: str, data: bytes) -> None:
        async with sem:
            await store.put(key, data)

    await asyncio.gather(*(one(k, v) for k, v in items.items()))


# --- keys, bytes, sizes ------------------------------------------------------
def test_odd_keys_round_trip(run):
    contents = {key: f"body of {key}".encode() * (i + 1) for i, key in enumerate(ODD_KEYS)}

    async def body(store):
        await _put_many(store, contents)
        listed = (await store.list()).objects
        got = {k: await store.get(k) for k in contents}
        heads = {k: await store.head(k) for k in contents}
        return listed, got, heads

    listed, got, heads = run(body)
    assert [o.key for o in listed] == sorted(contents)
    assert {o.key: o.size for o in listed} == {k: len(v) for k, v in contents.items()}
    assert got == contents
    for key, info in heads.items():
        assert info.key == key and info.size == len(contents[key])
        assert info.etag == f'"{hashlib.md5(contents[key]).hexdigest()}"'
        assert abs(info.mtime - time.time()) < 300


def test_empty_objects(run, tmp_path):
    empty = tmp_path / "empty.src"
    empty.write_bytes(b"")
    out = tmp_path / "empty.out"
    out.write_bytes(b"old content")

    async def body(store):
        await store.put("empty", b"")
        await store.put_file("empty-file", empty)
        await store.get_file("empty-file", out)
        return (await store.get("empty"), await store.get("empty", 0, 10), await store.get("empty", 5),
                (await store.head("empty")).size, (await store.head("empty-file")).size)

    whole, ranged, tail, size1, size2 = run(body)
    assert (whole, ranged, tail, size1, size2) == (b"", b"", b"", 0, 0)
    assert out.read_bytes() == b""


def test_ranges_at_the_edges(run):
    data = bytes(range(256)) * 4  # 1024 bytes

    async def body(store):
        await store.put("r", data)
        return {
            "first": await store.get("r", 0, 1),
            "last": await store.get("r", 1023, 1024),
            "middle": await store.get("r", 100, 200),
            "clipped": await store.get("r", 1000, 5000),
            "past_end": await store.get("r", 1024, 2000),
            "far_past": await store.get("r", 5000),
            "from": await store.get("r", 1000),
            "to": await store.get("r", None, 10),
            "empty": await store.get("r", 7, 7),
        }

    got = run(body)
    assert got == {"first": data[:1], "last": data[-1:], "middle": data[100:200], "clipped": data[1000:],
                   "past_end": b"", "far_past": b"", "from": data[1000:], "to": data[:10], "empty": b""}


def test_put_replaces_and_delete(run):
    async def body(store):
        await store.put("k", b"one")
        await store.put("k", b"two!")
        after_replace = await store.get("k")
        await store.delete("k")
        await store.delete("k")  # absent: not an error
        await store.delete("never/existed")
        with pytest.raises(NotFound):
            await store.head("k")
        with pytest.raises(NotFound):
            await store.get("k")
        await _put_many(store, {f"m/{i}": b"x" for i in range(5)})
        await store.delete_many(["m/0", "m/1", "m/absent", "m/4"])
        left = [o.key for o in (await store.list("m/")).objects]
        return after_replace, left

    after_replace, left = run(body)
    assert after_replace == b"two!"
    assert left == ["m/2", "m/3"]


# --- metadata and copy ----------------------------------------------------------
def test_metadata_round_trip_and_copy(run, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"file body")

    async def body(store):
        await store.put("meta/a", b"A", {"Owner": "alice", "sha256": "ab" * 32})
        await store.put_file("meta/b", src, {"step": "100"})
        await store.copy("meta/a", "meta/a-copy")
        await store.copy("meta/a", "meta/a-new", {"owner": "bob"})
        heads = {k: await store.head(k) for k in ("meta/a", "meta/b", "meta/a-copy", "meta/a-new")}
        plain = await store.put("meta/plain", b"p")
        listed = (await store.list("meta/")).objects
        with pytest.raises(NotFound):
            await store.copy("meta/missing", "meta/x")
        return heads, (await store.head("meta/plain")).metadata, listed, await store.get("meta/a-new"), plain

    heads, plain_meta, listed, copied, plain = run(body)
    assert heads["meta/a"].metadata == {"owner": "alice", "sha256": "ab" * 32}
    assert heads["meta/b"].metadata == {"step": "100"}
    assert heads["meta/a-copy"].metadata == {"owner": "alice", "sha256": "ab" * 32}
    assert heads["meta/a-new"].metadata == {"owner": "bob"}
    assert copied == b"A"
    assert plain_meta == {}
    assert plain.size == 1 and plain.etag == f'"{hashlib.md5(b"p").hexdigest()}"'
    assert all(o.metadata is None for o in listed)  # LIST carries no metadata
    assert "meta/x" not in [o.key for o in listed]


def test_content_type_round_trip(run, tmp_path):
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_bytes(b"hello")
    big.write_bytes(os.urandom(6 * MiB))  # multipart with the 5 MiB parts of these stores

    async def body(store):
        await store.put("ct/page.html", b"<p>", content_type="text/html")
        await store.put("ct/dir/", b"", content_type="application/x-directory")
        await store.put_file("ct/small.txt", small, content_type="text/plain")
        await store.put_file("ct/big.bin", big, {"k": "v"}, content_type="application/x-big")
        await store.copy("ct/page.html", "ct/same.html")
        await store.copy("ct/page.html", "ct/new.css", {"m": "1"}, content_type="text/css")
        keys = ("ct/page.html", "ct/dir/", "ct/small.txt", "ct/big.bin", "ct/same.html", "ct/new.css")
        return {k: await store.head(k) for k in keys}

    heads = run(body)
    types = {k: (h.content_type or "").split(";")[0] for k, h in heads.items()}
    assert types == {"ct/page.html": "text/html", "ct/dir/": "application/x-directory",
                     "ct/small.txt": "text/plain", "ct/big.bin": "application/x-big",
                     "ct/same.html": "text/html", "ct/new.css": "text/css"}
    assert heads["ct/big.bin"].metadata == {"k": "v"} and heads["ct/new.css"].metadata == {"m": "1"}


def test_multipart_part_by_part(run):
    part1, part2, last = os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"

    async def body(store):
        await store.put("mp/obj", b"old")
        upload = await store.create_multipart("mp/obj", {"mtime": "1.5"}, content_type="application/x-test")
        etag2 = await store.upload_part("mp/obj", upload, 2, part2)
        etag1 = await store.upload_part("mp/obj", upload, 1, b"x" * (5 * MiB))
        etag1 = await store.upload_part("mp/obj", upload, 1, part1)  # a part sent again replaces it
        etag3 = await store.upload_part("mp/obj", upload, 3, last)
        during = await store.get("mp/obj")  # nothing visible before completion
        etag = await store.complete_multipart("mp/obj", upload, [(1, etag1), (2, etag2), (3, etag3)])
        done = await store.get("mp/obj")
        head = await store.head("mp/obj")

        aborted = await store.create_multipart("mp/never")
        await store.upload_part("mp/never", aborted, 1, b"lost")
        await store.abort_multipart("mp/never", aborted)
        await store.abort_multipart("mp/never", aborted)  # twice: not an error
        with pytest.raises(NotFound):
            await store.head("mp/never")
        with pytest.raises(StoreError):
            await store.upload_part("mp/never", aborted, 2, b"late")
        return during, etag, done, head, [o.key for o in (await store.list("mp/")).objects]

    during, etag, done, head, keys = run(body)
    assert during == b"old"
    assert done == part1 + part2 + last
    assert head.size == len(done) and head.metadata == {"mtime": "1.5"}
    assert (head.content_type or "").startswith("application/x-test")
    assert etag is not None and etag.strip('"') == (head.etag or "").strip('"')
    assert keys == ["mp/obj"]


# --- listing ------------------------------------------------------------------
def test_delimiter_listing_with_dir_markers(run):
    async def body(store):
        await _put_many(store, {"d/": b"", "d/x": b"1", "d/sub/y": b"22", "e/z": b"333", "top": b"4444",
                                "m/": b"", "dd": b"5"})
        out = {
            "root": await store.list("", "/"),
            "d/": await store.list("d/", "/"),
            "d": await store.list("d", "/"),
            "m/": await store.list("m/", "/"),
            "all": await store.list(""),
            "marker_head": await store.head("d/"),
            "marker_get": await store.get("m/"),
        }
        await store.delete("d/x")
        await store.delete("d/sub/y")
        out["d/ after"] = await store.list("d/", "/")
        out["d/sub/ after"] = await store.list("d/sub/")
        await store.delete("e/z")
        await store.delete("d/")
        out["all after"] = await store.list("")
        return out

    out = run(body)
    assert [o.key for o in out["root"].objects] == ["dd", "top"]
    assert out["root"].prefixes == ["d/", "e/", "m/"]
    assert [o.key for o in out["d/"].objects] == ["d/", "d/x"]
    assert out["d/"].prefixes == ["d/sub/"]
    assert out["d"].prefixes == ["d/"] and [o.key for o in out["d"].objects] == ["dd"]
    assert [o.key for o in out["m/"].objects] == ["m/"] and out["m/"].prefixes == []
    assert [o.key for o in out["all"].objects] == ["d/", "d/sub/y", "d/x", "dd", "e/z", "m/", "top"]
    assert out["marker_head"].size == 0 and out["marker_head"].is_dir_marker
    assert out["marker_get"] == b""
    # SeaweedFS may keep an emptied folder as a prefix for a while (real S3 drops it
    # at once), so only the objects are compared after deletes
    assert [o.key for o in out["d/ after"].objects] == ["d/"]
    assert out["d/sub/ after"].objects == []
    assert [o.key for o in out["all after"].objects] == ["dd", "m/", "top"]


def test_listing_more_than_1000_keys_pages(run):
    keys = {f"p/k{i:05d}": str(i).encode() for i in range(1005)}

    async def body(store):
        await _put_many(store, keys | {"q": b"q"})
        pages = [page async for page in store.list_pages("p/")]
        rolled = await store.list("", "/")
        return pages, rolled

    pages, rolled = run(body)
    assert len(pages) >= 2
    listed = [o.key for page in pages for o in page.objects]
    assert listed == sorted(keys)
    assert sum(o.size for page in pages for o in page.objects) == sum(len(v) for v in keys.values())
    assert rolled.prefixes == ["p/"] and [o.key for o in rolled.objects] == ["q"]


# --- large objects -------------------------------------------------------------
def test_multipart_upload_and_parallel_download(run, tmp_path):
    data = os.urandom(12 * MiB + 3)  # three 5 MiB parts
    src = tmp_path / "big.src"
    src.write_bytes(data)
    out = tmp_path / "big.out"
    up: list[int] = []
    down: list[int] = []

    async def body(store):
        info = await store.put_file("big/object", src, {"kind": "big"}, progress=up.append)
        got = await store.get_file("big/object", out, progress=down.append)
        head = await store.head("big/object")
        across = await store.get("big/object", 5 * MiB - 10, 5 * MiB + 10)
        return info, got, head, across

    info, got, head, across = run(body)
    assert out.read_bytes() == data
    assert sum(up) == len(data) and sum(down) == len(data)
    assert info.size == got.size == head.size == len(data)
    assert head.metadata == {"kind": "big"} and got.metadata == {"kind": "big"}
    assert across == data[5 * MiB - 10:5 * MiB + 10]
    assert [p.name for p in tmp_path.iterdir() if "pailfs" in p.name] == []  # no temp files left


def test_failed_multipart_upload_leaves_no_object(s3_env, bucket, tmp_path):
    src = tmp_path / "big.src"
    src.write_bytes(os.urandom(12 * MiB))
    sent = [0]

    def failing_disk(n: int) -> None:
        sent[0] += n
        if sent[0] > 6 * MiB:
            raise OSError(errno.EIO, "Input/output error")

    async def body():
        store = open_store(f"s3://{bucket}", multipart_size=5, parallel_count=2)
        try:
            with pytest.raises(StoreError) as caught:
                await store.put_file("half/written", src, progress=failing_disk)
            listed = await store.list("half/")
            uploads = await store.api.request("GET", bucket, query={"uploads": ""})
            return caught.value, listed, uploads.text
        finally:
            await store.close()

    exc, listed, uploads = asyncio.run(body())
    assert "Input/output error" in str(exc) and "half/written" in str(exc)
    assert listed.objects == []
    assert "<Upload>" not in uploads  # the multipart upload was aborted


def test_get_file_replaces_target_atomically(run, tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")

    async def body(store):
        await store.put("obj", b"new content")
        await store.get_file("obj", target)
        with pytest.raises(NotFound):
            await store.get_file("missing", tmp_path / "never.bin")

    run(body)
    assert target.read_bytes() == b"new content"
    expected = ["bucket", "out.bin"] if run.kind == "local" else ["out.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == expected  # no temp files left


def test_stats_count_requests_and_bytes(run):
    async def body(store):
        await store.put("s", b"12345")
        await store.get("s")
        await store.list()
        with pytest.raises(NotFound):
            await store.head("nope")
        return store.stats

    stats = run(body)
    assert stats.requests["put"] == 1 and stats.requests["get"] == 1 and stats.requests["list"] >= 1
    assert stats.bytes_up == 5 and stats.bytes_down >= 5
    assert stats.errors == 1


# --- errors ---------------------------------------------------------------------
def test_missing_key_errors_name_the_key(run):
    async def body(store):
        errors = []
        for call in (store.head("no/such"), store.get("no/such"), store.get("no/such", 0, 5)):
            with pytest.raises(NotFound) as caught:
                await call
            errors.append(str(caught.value))
        return errors

    for message in run(body):
        assert "no/such" in message and "\n" not in message


def test_missing_bucket(s3_env, tmp_path):
    async def body(store):
        out = []
        for call in (store.head("k"), store.get("k"), store.list(), store.check()):
            with pytest.raises(NoSuchBucket) as caught:
                await call
            out.append(str(caught.value))
        await store.close()
        return out

    for message in asyncio.run(body(open_store("s3://no-such-bucket-here"))):
        assert "no-such-bucket-here" in message and "\n" not in message
    for message in asyncio.run(body(LocalStore(tmp_path / "absent"))):
        assert "absent" in message


def test_wrong_secret_is_access_denied_and_never_shown(s3_env, bucket):
    secret = "WrongSecret/Value+1234567890abcdefghij"

    async def body():
        good = open_store(f"s3://{bucket}")
        await good.put("k", b"v")
        await good.close()
        store = S3Store(bucket, endpoint=s3_env["PAILFS_ENDPOINT"],
                        credentials=Credentials(s3_env["AWS_ACCESS_KEY_ID"], secret, source="test"))
        errors = []
        for call in (store.head("k"), store.get("k"), store.list(), store.put("k2", b"x"), store.check(),
                     store.delete_many(["k"])):
            with pytest.raises(AccessDenied) as caught:
                await call
            errors.append(caught.value)
        await store.close()
        return errors

    for exc in asyncio.run(body()):
        assert secret not in str(exc) and secret not in repr(exc)
        assert "access denied" in str(exc) and "\n" not in str(exc)
        assert bucket in str(exc)


def test_unreachable_endpoint_fails_fast(s3_env):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def body():
        store = open_store("s3://somebucket", url=f"http://127.0.0.1:{port}", retries=1)
        try:
            for call in (store.check(), store.get("k"), store.head("k")):
                with pytest.raises(StoreUnavailable, match="cannot reach"):
                    await call
        finally:
            await store.close()

    started = time.monotonic()
    asyncio.run(body())
    assert time.monotonic() - started < 10


def test_silent_server_times_out_instead_of_hanging(s3_env):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]

        async def body():
            store = open_store("s3://somebucket", url=f"http://127.0.0.1:{port}",
                               readwrite_timeout="1", connect_timeout="1", retries=0)
            try:
                for call in (store.check(), store.get("k")):
                    with pytest.raises(StoreUnavailable, match="timed out"):
                        await call
            finally:
                await store.close()

        started = time.monotonic()
        asyncio.run(body())
        assert time.monotonic() - started < 10


# --- root prefix, URLs and the sync facade ------------------------------------------
def test_root_prefix_is_invisible_to_callers(s3_env, bucket):
    async def body():
        inner = open_store(f"s3://{bucket}/data/set")
        outer = open_store(f"s3://{bucket}")
        try:
            await inner.put("a/b", b"1")
            return (await inner.list()).objects, (await outer.list()).objects, (await inner.list("", "/")).prefixes
        finally:
            await inner.close()
            await outer.close()

    inner_keys, outer_keys, prefixes = asyncio.run(body())
    assert [o.key for o in inner_keys] == ["a/b"]
    assert [o.key for o in outer_keys] == ["data/set/a/b"]
    assert prefixes == ["a/"]


@pytest.mark.parametrize("text, expected", [
    ("s3://bkt/some/prefix", StoreURL("s3", "bkt", "some/prefix")),
    ("oss://bkt", StoreURL("s3", "bkt", "")),
    ("S3://bkt/", StoreURL("s3", "bkt", "")),
    ("bkt:/train/data", StoreURL("s3", "bkt", "train/data")),
    ("bkt:", StoreURL("s3", "bkt", "")),
    ("my-bucket.v2", StoreURL("s3", "my-bucket.v2", "")),
    ("file:///tmp/x/", StoreURL("file", "", "/tmp/x")),
])
def test_parse_url(text, expected):
    assert parse_url(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("s3://", "no bucket"),
    ("s3:///key", "no bucket"),
    ("s3://Bad_Bucket/x", "bucket name"),
    ("s3://ab/x", "bucket name"),
    ("gs://bkt", "unknown scheme"),
    ("file://relative/dir", "absolute path"),
    ("/local/dir", "file:///local/dir"),
    ("bkt:no-slash", "bucket name"),
    (" s3://bkt", "spaces"),
    ("", "empty"),
])
def test_bad_urls_are_one_line_bad_option(text, reason):
    with pytest.raises(BadOption) as caught:
        parse_url(text)
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_open_store_needs_an_endpoint_and_valid_overrides(monkeypatch):
    for var in ("PAILFS_ENDPOINT", "URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BadOption, match="no endpoint"):
        open_store("s3://bkt")
    with pytest.raises(BadOption, match="unknown option 'paralel_count'"):
        open_store("s3://bkt", url="http://127.0.0.1:9", paralel_count=3)
    with pytest.raises(BadOption, match="bad value for option 'parallel_count'"):
        open_store("s3://bkt", url="http://127.0.0.1:9", parallel_count="many")
    with pytest.raises(BadOption, match="bad endpoint"):
        open_store("s3://bkt", url="ftp://host")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("OSS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("OSS_ACCESS_KEY_SECRET", raising=False)
    with pytest.raises(BadCredentials, match="AWS_SECRET_ACCESS_KEY is not"):
        open_store("s3://bkt", url="http://127.0.0.1:9")


def test_sync_facade_like_the_oss_sdk(s3_env, bucket, tmp_path):
    src = tmp_path / "model.pt"
    src.write_bytes(os.urandom(7 * MiB))
    with pailfs.open_store(f"s3://{bucket}/ckpt", multipart_size=5) as store:
        info = store.put_file("step-1/model.pt", src, {"step": "1"})
        store.get_file("step-1/model.pt", tmp_path / "restored.pt")
        listed = store.list("step-1/")
        head = store.head("step-1/model.pt")
        with pytest.raises(NotFound):
            store.get("step-1/absent")
    assert (tmp_path / "restored.pt").read_bytes() == src.read_bytes()
    assert info.size == head.size == 7 * MiB and head.metadata == {"step": "1"}
    assert [o.key for o in listed.objects] == ["step-1/model.pt"]


def test_local_store_url_and_layout(tmp_path):
    root = tmp_path / "b"
    root.mkdir()
    with pailfs.open_store(f"file://{root}") as store:
        store.put("a/b.txt", b"hi", {"k": "v"})
        assert (root / "a" / "b.txt").read_bytes() == b"hi"  # a plain file tree
        assert store.head("a/b.txt").metadata == {"k": "v"}
        (root / "a" / "external.bin").write_bytes(b"dropped in by hand")
        assert [o.key for o in store.list().objects] == ["a/b.txt", "a/external.bin"]
        assert store.head("a/external.bin").etag == f'"{hashlib.md5(b"dropped in by hand").hexdigest()}"'
        with pytest.raises(StoreError, match="cannot be stored"):
            store.put("../escape", b"x")
        with pytest.raises(StoreError, match="conflicts"):
            store.put("a/b.txt/c", b"x")
    assert not (tmp_path / "escape").exists()


def test_s3api_carries_keys_obstore_cannot_spell(s3_env, bucket):
    """obstore's Path rejects control characters; those keys go through S3Api, intact."""
    keys = ["ctl/tab\there", "ctl/bell\x07end"]

    async def body():
        store = open_store(f"s3://{bucket}")
        try:
            for k in keys:
                await store.put(k, k.encode(), {"m": "1"})
            got = {k: await store.get(k) for k in keys}
            ranged = await store.get(keys[0], 1, 3)
            heads = {k: (await store.head(k)).metadata for k in keys}
            listed = [o.key for o in (await store.list()).objects]
            await store.copy(keys[0], "ctl/copied")
            copied = await store.get("ctl/copied")
            for k in keys:
                await store.delete(k)
            left = [o.key for o in (await store.list()).objects]
            with pytest.raises(StoreError, match="'.' or '..'") as caught:
                await store.put("seg/../escape", b"x")
            return got, ranged, heads, listed, copied, left, caught.value
        finally:
            await store.close()

    got, ranged, heads, listed, copied, left, refused = asyncio.run(body())
    assert got == {k: k.encode() for k in keys}
    assert ranged == keys[0].encode()[1:3]
    assert all(m == {"m": "1"} for m in heads.values())
    assert sorted(listed) == sorted(keys)
    assert copied == keys[0].encode()
    assert left == ["ctl/copied"]
    assert "\n" not in str(refused)


def test_check_passes_on_a_good_store(run):
    run(lambda store: store.check())


# --- upkeep: incomplete uploads, buckets ------------------------------------------------------------
async def _leave_incomplete_upload(store: ObjectStore, key: str, kind: str) -> None:
    """What a writer killed mid-upload leaves behind, in each store's own terms."""
    if kind.startswith("s3"):
        resp = await store.api.request("POST", store.bucket, store.root + key, query={"uploads": ""})
        assert resp.status_code == 200, resp.text
    elif kind == "local":
        tmp = store.root / ".pailfs-store" / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "killed-writer").write_bytes(b"half an object")


def test_abort_stale_uploads(run):
    async def body(store):
        await store.put("ckpt/0000000001/done", b"complete")
        await _leave_incomplete_upload(store, "ckpt/0000000002/model.bin", run.kind)
        await _leave_incomplete_upload(store, "other/file.bin", run.kind)
        fresh = await store.abort_stale_uploads(3600)           # begun just now: kept
        if run.kind == "local":
            old = time.time() - 7200
            os.utime(store.root / ".pailfs-store" / "tmp" / "killed-writer", (old, old))
        selected = await store.abort_stale_uploads(0, select=lambda key: key.startswith("ckpt/"))
        rest = await store.abort_stale_uploads(0)
        again = await store.abort_stale_uploads(0)
        listed = [o.key for o in (await store.list()).objects]
        return fresh, selected, rest, again, listed

    fresh, selected, rest, again, listed = run(body)
    assert listed == ["ckpt/0000000001/done"]  # a complete object is never touched
    if run.kind.startswith("s3"):
        assert (fresh, selected, rest, again) == (0, 1, 1, 0)
    elif run.kind == "local":  # temp files belong to no key yet: select does not apply
        assert (fresh, selected, rest, again) == (0, 1, 0, 0)
    else:  # a memory store has no uploads in flight
        assert (fresh, selected, rest, again) == (0, 0, 0, 0)


def test_a_conditional_read_fails_once_the_object_changed(run):
    async def body(store):
        first = await store.put("cond/obj", b"version one")
        same = bytes(await store.get_buffer("cond/obj", 3, 7, if_match=first.etag))
        await store.put("cond/obj", b"version two, longer")
        with pytest.raises(PreconditionFailed) as failed:
            await store.get_buffer("cond/obj", 3, 7, if_match=first.etag)
        second = await store.head("cond/obj")
        return same, failed.value, bytes(await store.get_buffer("cond/obj", 0, 7, if_match=second.etag))

    same, failed, now = run(body)
    assert same == b"sion" and now == b"version"
    assert "\n" not in str(failed)


def test_list_uploads_shows_incomplete_uploads_until_completed_or_aborted(run):
    async def body(store):
        await store.put("up/done", b"complete")
        started = time.time()
        first = await store.create_multipart("up/b.bin")
        second = await store.create_multipart("up/a.bin")
        outside = await store.create_multipart("elsewhere.bin")
        await store.upload_part("up/b.bin", first, 1, b"part")
        listed = [up async for up in store.list_uploads("up/")]
        everything = [up.key async for up in store.list_uploads()]
        await store.abort_multipart("up/a.bin", second)
        etag = await store.upload_part("up/b.bin", first, 1, b"whole")
        await store.complete_multipart("up/b.bin", first, [(1, etag)])
        after = [up.key async for up in store.list_uploads()]
        await store.abort_multipart("elsewhere.bin", outside)
        return started, (first, second, outside), listed, everything, after, [up async for up in store.list_uploads()]

    started, (first, second, outside), listed, everything, after, last = run(body)
    assert sorted((up.key, up.upload_id) for up in listed) == [("up/a.bin", second), ("up/b.bin", first)]
    assert all(started - 5 <= up.initiated <= time.time() + 5 for up in listed)  # the server's clock
    assert sorted(everything) == ["elsewhere.bin", "up/a.bin", "up/b.bin"]
    assert after == ["elsewhere.bin"] and last == []


def test_create_bucket(run, tmp_path, s3_env):
    async def body(store):
        with pytest.raises(StoreError, match="already exists") as caught:
            await store.create_bucket()
        return str(caught.value)

    assert "\n" not in run(body)
    if run.kind == "memory":
        return

    async def new_bucket():
        store = (LocalStore(tmp_path / "new-bucket") if run.kind == "local"
                 else open_store(f"s3://{run.bucket}-new"))
        try:
            with pytest.raises(NoSuchBucket):
                await store.check()
            await store.create_bucket()
            await store.check()
            await store.put("k", b"in a new bucket")
            return await store.get("k")
        finally:
            await store.close()

    assert asyncio.run(new_bucket()) == b"in a new bucket"
