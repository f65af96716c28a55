"""The read-write mount, for real: staged writes, uploads on close, no partial objects."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from mounts import (get_object, get_object_after_restart, list_keys, mount_stats, mounted, put_objects,
                    uploads_in_progress, wait_for)

RW = "stat_cache_expire=60"


@pytest.fixture
def rw(bucket, s3_env, tmp_path):
    with mounted(bucket, tmp_path / "mnt", RW) as mnt:
        yield mnt, f"s3://{bucket}"


def test_create_write_close_uploads(rw):
    mnt, url = rw
    with open(mnt / "hello.txt", "wb") as f:
        f.write(b"hello ")
        f.write(b"world")
        assert get_object(url, "hello.txt") is None  # staged until close
    assert get_object(url, "hello.txt") == b"hello world"
    assert (mnt / "hello.txt").read_bytes() == b"hello world"
    assert os.stat(mnt / "hello.txt").st_size == 11


def test_append_truncate_and_overwrite_in_the_middle(rw):
    mnt, url = rw
    path = mnt / "f.bin"
    path.write_bytes(b"0123456789")
    with open(path, "ab") as f:
        f.write(b"abc")
    assert get_object(url, "f.bin") == b"0123456789abc"
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(b"XY")
    assert get_object(url, "f.bin") == b"0123XY6789abc"
    os.truncate(path, 5)
    assert get_object(url, "f.bin") == b"0123X"
    os.truncate(path, 8)
    assert get_object(url, "f.bin") == b"0123X\0\0\0"
    with open(path, "wb") as f:  # O_TRUNC
        f.write(b"new")
    assert path.read_bytes() == b"new" == get_object(url, "f.bin")


def test_fsync_uploads_and_reads_see_own_writes(rw):
    mnt, url = rw
    fd = os.open(mnt / "log.txt", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"line 1\n")
        assert os.pread(fd, 100, 0) == b"line 1\n"
        os.fsync(fd)
        assert get_object(url, "log.txt") == b"line 1\n"
        os.write(fd, b"line 2\n")
    finally:
        os.close(fd)
    assert get_object(url, "log.txt") == b"line 1\nline 2\n"


def test_mkdir_rmdir_unlink(rw):
    mnt, url = rw
    os.mkdir(mnt / "d")
    assert "d/" in list_keys(url)
    (mnt / "d/x").write_bytes(b"x")
    with pytest.raises(OSError) as info:
        os.rmdir(mnt / "d")
    assert info.value.errno == errno.ENOTEMPTY
    os.unlink(mnt / "d/x")
    assert get_object(url, "d/x") is None
    os.rmdir(mnt / "d")
    assert list_keys(url) == []
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "d")


def test_rename_file_over_existing_and_move_directory(rw):
    mnt, url = rw
    (mnt / "a.txt").write_bytes(b"AAA")
    (mnt / "b.txt").write_bytes(b"BBB")
    os.rename(mnt / "a.txt", mnt / "b.txt")
    assert get_object(url, "b.txt") == b"AAA"
    assert get_object(url, "a.txt") is None
    assert sorted(os.listdir(mnt)) == ["b.txt"]
    os.makedirs(mnt / "src/sub")
    (mnt / "src/sub/one").write_bytes(b"1")
    (mnt / "src/two").write_bytes(b"2")
    os.rename(mnt / "src", mnt / "dst")
    assert sorted(k for k in list_keys(url) if k.startswith("dst")) == [
        "dst/", "dst/.pailfs-dirmeta", "dst/sub/", "dst/sub/.pailfs-dirmeta", "dst/sub/one", "dst/two"]
    assert not [k for k in list_keys(url) if k.startswith("src")]
    assert (mnt / "dst/sub/one").read_bytes() == b"1"
    assert not os.path.exists(mnt / "src")


def test_rm_r_cp_r_and_tar_x(rw, tmp_path):
    mnt, url = rw
    tree = tmp_path / "tree"
    for i in range(30):
        p = tree / f"d{i % 3}" / f"f{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(100 + i))
    shutil.copytree(tree, mnt / "copy")
    back = tmp_path / "back"
    shutil.copytree(mnt / "copy", back)
    for p in tree.rglob("*"):
        if p.is_file():
            assert (back / p.relative_to(tree)).read_bytes() == p.read_bytes()
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname="untarred")
    subprocess.run(["tar", "xf", str(archive), "-C", str(mnt)], check=True)
    files = [k for k in list_keys(url, "untarred/") if not k.endswith(("/", "/.pailfs-dirmeta"))]
    assert len(files) == 30
    subprocess.run(["rm", "-r", str(mnt / "copy"), str(mnt / "untarred")], check=True)
    assert list_keys(url) == []


def test_chmod_touch_kept_as_metadata(bucket, s3_env, tmp_path):
    with mounted(bucket, tmp_path / "m", RW) as mnt:
        (mnt / "f").write_bytes(b"data")
        os.chmod(mnt / "f", 0o600)
        os.utime(mnt / "f", (1_600_000_000, 1_600_000_000))
        st = os.stat(mnt / "f")
        assert stat.S_IMODE(st.st_mode) == 0o600 and int(st.st_mtime) == 1_600_000_000
    with mounted(bucket, tmp_path / "m", RW) as mnt:  # a fresh mount reads the metadata back
        st = os.stat(mnt / "f")
        assert stat.S_IMODE(st.st_mode) == 0o600 and int(st.st_mtime) == 1_600_000_000
        assert (mnt / "f").read_bytes() == b"data"


def test_large_write_read_back_by_hash(rw):
    mnt, url = rw
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with open(mnt / "big.bin", "wb") as f:
        for i in range(64):
            chunk = block[i:] + block[:i]
            digest.update(chunk)
            f.write(chunk)
    assert hashlib.sha256(get_object(url, "big.bin")).hexdigest() == digest.hexdigest()
    check = hashlib.sha256()
    with open(mnt / "big.bin", "rb") as f:
        while data := f.read(1 << 20):
            check.update(data)
    assert check.hexdigest() == digest.hexdigest()


def test_nodelete_refuses_deletion_but_allows_new_files(bucket, s3_env, tmp_path):
    put_objects(f"s3://{bucket}", {"keep.txt": b"precious"})
    with mounted(bucket, tmp_path / "m", "nodelete") as mnt:
        (mnt / "new.txt").write_bytes(b"new")
        for call in (lambda: os.unlink(mnt / "keep.txt"),
                     lambda: os.rename(mnt / "new.txt", mnt / "keep.txt"),
                     lambda: open(mnt / "keep.txt", "wb"),
                     lambda: os.truncate(mnt / "keep.txt", 1)):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EPERM
        assert get_object(f"s3://{bucket}", "keep.txt") == b"precious"
        assert get_object(f"s3://{bucket}", "new.txt") == b"new"


def test_failed_upload_gives_eio_and_leaves_the_bucket_unchanged(private_server, tmp_path):
    from conftest import restart

    srv, state, bucket = private_server
    url = f"s3://{bucket}"
    put_objects(url, {"model.bin": b"old content"})
    with mounted(bucket, tmp_path / "mnt", "readwrite_timeout=3,connect_timeout=2,retries=0") as mnt:
        fd = os.open(mnt / "model.bin", os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"new content that must not half-arrive")
        srv.stop(timeout=3)  # the server dies before close
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            os.close(fd)
        assert info.value.errno == errno.EIO
        assert time.monotonic() - started < 30
    restart(state, tmp_path)
    assert get_object_after_restart(url, "model.bin") == b"old content"


# --- issue 20.1: the mount's own overwrite is what it reads back ------------------------
def _pattern(seed: int, size: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def _drop_page_cache() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024, 40 * 1024 * 1024], ids=["1KB", "3MiB", "40MiB"])
def test_overwrite_in_place_reads_back_the_new_bytes(bucket, s3_env, tmp_path, size):
    """Write A, read it, overwrite the same path with B of the same size, read it back
    through the same mount: B, also after the page cache is dropped (default options)."""
    url = f"s3://{bucket}"
    old, new = _pattern(1, size), _pattern(2, size)
    with mounted(bucket, tmp_path / "mnt") as mnt:
        path = mnt / "model.pt"
        path.write_bytes(old)
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(old).digest()
        with open(path, "wb") as f:
            f.write(new)
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(new).digest()
        _drop_page_cache()
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(new).digest()
        assert hashlib.sha256(get_object(url, "model.pt")).digest() == hashlib.sha256(new).digest()


def test_partial_overwrite_in_the_middle_reads_back_the_new_bytes(bucket, s3_env, tmp_path):
    size = 40 * 1024 * 1024
    old = _pattern(3, size)
    patch = _pattern(4, 5 * 1024 * 1024 + 123)
    at = 17 * 1024 * 1024 + 7
    want = old[:at] + patch + old[at + len(patch):]
    with mounted(bucket, tmp_path / "mnt") as mnt:
        path = mnt / "big.bin"
        path.write_bytes(old)
        with open(path, "rb") as f:  # the read path caches it (readahead buffers)
            while f.read(1 << 20):
                pass
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(patch)
        for _ in range(2):
            got = path.read_bytes()
            assert len(got) == size and got[at - 10:at + len(patch) + 10] == want[at - 10:at + len(patch) + 10]
            assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
            _drop_page_cache()


@pytest.mark.parametrize("options", ["", "kernel_cache", "use_cache"], ids=["default", "kernel_cache", "use_cache"])
@pytest.mark.parametrize("size", [5000, 3 * 1024 * 1024], ids=["small", "3MiB"])
def test_own_changes_never_serve_stale_bytes(bucket, s3_env, tmp_path, options, size):
    """Every cached byte (read-ahead buffers, the small-object cache, the disk cache, the
    kernel's pages) follows the mount's own overwrites, truncations, renames over a file
    and deletions."""
    if options == "use_cache":
        options = f"use_cache={tmp_path / 'cache'}"
    with mounted(bucket, tmp_path / "mnt", *([options] if options else [])) as mnt:
        path = mnt / "w.bin"
        versions = [_pattern(10 + i, size) for i in range(4)]

        def read_back(want: bytes) -> None:
            for _ in range(2):  # from whatever caches the first read filled, then again cold
                assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(want).digest()
                _drop_page_cache()

        path.write_bytes(versions[0])
        read_back(versions[0])
        (mnt / "tmp.bin").write_bytes(versions[1])
        os.rename(mnt / "tmp.bin", path)  # renamed over it
        read_back(versions[1])
        with open(path, "r+b") as f:  # an in-place overwrite
            f.write(versions[2])
        read_back(versions[2])
        os.truncate(path, size // 2)
        read_back(versions[2][:size // 2])
        os.unlink(path)
        path.write_bytes(versions[3])  # deleted, then a new file of the same name
        read_back(versions[3])


# --- issue 14.14, the mount's side: keys that cannot be names -----------------------------
HOSTILE_KEYS = [".", "..", "./x", "../up", "sub/..", "sub/.", "/abs", "a//b", "dot/./y", "nul\0name",
                "long" + "x" * 300, ".pailfs-dirmeta"]


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_hostile_keys_in_listings(mode, seaweed, bucket, s3_env, tmp_path):
    from listproxy import ListProxy
    from pailfs.store import open_store

    url = f"s3://{bucket}"
    put_objects(url, {"real.txt": b"real", "ctl\x01name": b"control", "datadir/inner": b"in"})

    async def marker_with_data() -> None:  # a key ending in '/' that holds bytes
        store = open_store(url)
        try:
            resp = await store.api.request("PUT", bucket, "datadir/", body=b"marker bytes")
            assert resp.status_code == 200
        finally:
            await store.close()

    asyncio.run(marker_with_data())
    opts = "ro,kernel_cache" if mode == "ro" else RW
    with ListProxy(seaweed.state().s3_port, HOSTILE_KEYS) as proxy, \
            mounted(bucket, tmp_path / "mnt", opts, env=proxy.env()) as mnt:
        names = sorted(os.listdir(mnt))
        assert names == sorted(["real.txt", "ctl\x01name", "datadir", "sub", "a", "dot"])
        for empty in ("sub", "a", "dot"):  # only keys that cannot be names under them
            assert stat.S_ISDIR(os.stat(mnt / empty).st_mode) and os.listdir(mnt / empty) == []
        listing = subprocess.run(["ls", "-a1", str(mnt)], capture_output=True, check=True).stdout.split(b"\n")
        assert listing.count(b".") == 1 and listing.count(b"..") == 1
        found = subprocess.run(["find", str(mnt)], capture_output=True, timeout=60)
        assert found.returncode == 0, found.stderr
        for line in found.stdout.decode(errors="surrogateescape").splitlines()[1:]:
            assert not {".", ".."} & set(line[len(str(mnt)) + 1:].split("/")), line
        assert (mnt / "ctl\x01name").read_bytes() == b"control"
        assert os.listdir(mnt / "datadir") == ["inner"] and (mnt / "datadir/inner").read_bytes() == b"in"
        assert proxy.injected > 0
        if mode == "rw":
            (mnt / "new.txt").write_bytes(b"fine")
            with pytest.raises(OSError) as info:  # it still holds a key it cannot show: not deleted
                os.rmdir(mnt / "sub")
            assert info.value.errno == errno.ENOTEMPTY
            subprocess.run(["rm", "-r", str(mnt / "datadir"), str(mnt / "new.txt")], check=True)
    assert sorted(list_keys(url)) == (["ctl\x01name", "real.txt"] if mode == "rw" else
                                      ["ctl\x01name", "datadir/", "datadir/inner", "real.txt"])


# --- issue 14.1: data beyond max_dirty_data streams into an invisible multipart upload --------
STREAMING = "stat_cache_expire=60,max_dirty_data=5,multipart_size=5"
MiB = 1024 * 1024


def test_long_write_streams_parts_and_stays_invisible_until_close(bucket, s3_env, tmp_path):
    url = f"s3://{bucket}"
    old, new = _pattern(20, 3000), _pattern(21, 22 * MiB + 17)
    put_objects(url, {"model.bin": old})
    with mounted(bucket, tmp_path / "w", STREAMING) as mnt, \
            mounted(bucket, tmp_path / "r", "stat_cache_expire=60") as other:
        fd = os.open(mnt / "model.bin", os.O_WRONLY | os.O_TRUNC)
        try:
            for off in range(0, 16 * MiB, MiB):
                os.write(fd, new[off:off + MiB])
            # parts go up while the file is still being written...
            uploads = wait_for(lambda: {u: n for u, n in uploads_in_progress(url, bucket, "model.bin").items()
                                        if n >= 2})
            assert len(uploads) == 1
            # ...and nobody sees them: the bucket and another mount hold the old object
            assert get_object(url, "model.bin") == old
            assert (other / "model.bin").read_bytes() == old
            assert os.stat(mnt / "model.bin").st_size == 16 * MiB  # the writer's mount sees its own writes
            os.pwrite(fd, b"REWRITTEN", 5)  # a part already sent, written again
            os.write(fd, new[16 * MiB:])
        finally:
            os.close(fd)
        want = new[:5] + b"REWRITTEN" + new[14:]
        assert hashlib.sha256(get_object(url, "model.bin")).digest() == hashlib.sha256(want).digest()
        # its times were fixed when the upload began; a copy onto itself stored the last ones
        stored = asyncio.run(_head(url, "model.bin")).metadata["mtime"]
        assert stored == "%d.%09d" % divmod(os.stat(mnt / "model.bin").st_mtime_ns, 10**9)
        assert uploads_in_progress(url, bucket, "model.bin") == {}
        assert hashlib.sha256((other / "model.bin").read_bytes()).digest() == hashlib.sha256(want).digest()
        requests = mount_stats(mnt)["store"]["requests"]
        assert requests.get("create_multipart") == 1 and requests.get("complete_multipart") == 1
        assert requests.get("put_part", 0) >= 5


async def _head(url: str, key: str):
    from pailfs.store import open_store

    store = open_store(url)
    try:
        return await store.head(key)
    finally:
        await store.close()


def test_kill_9_mid_stream_keeps_the_old_object(bucket, s3_env, tmp_path):
    from pailfs.procs import pid_running, pids_with_argument

    url = f"s3://{bucket}"
    old = _pattern(30, 4000)
    put_objects(url, {"model.bin": old})
    staging = tmp_path / "staging"
    with mounted(bucket, tmp_path / "w", f"{STREAMING},staging_dir={staging}") as mnt:
        fd = os.open(mnt / "model.bin", os.O_WRONLY | os.O_TRUNC)
        for _ in range(14):
            os.write(fd, _pattern(31, MiB))
        wait_for(lambda: any(n >= 1 for n in uploads_in_progress(url, bucket, "model.bin").values()))
        (daemon,) = pids_with_argument(str(mnt), words=("mount", "-f"))
        os.kill(daemon, signal.SIGKILL)
        wait_for(lambda: not pid_running(daemon))
        with pytest.raises(OSError):
            os.write(fd, b"more")
        try:
            os.close(fd)
        except OSError:
            pass
    assert get_object(url, "model.bin") == old  # the old object stays
    left = uploads_in_progress(url, bucket, "model.bin")  # for abort_stale_uploads / lifecycle rules
    assert len(left) == 1
    dead_dirs = list(staging.glob(f"pailfs-mount-{os.getuid()}-{daemon}-*"))
    assert len(dead_dirs) == 1 and [p.name for p in dead_dirs[0].iterdir() if p.name.startswith("ino")]
    with mounted(bucket, tmp_path / "again", f"{STREAMING},staging_dir={staging}") as mnt:
        assert (mnt / "model.bin").read_bytes() == old
        assert dead_dirs[0].exists()  # its staged data is kept: the only copy of what was written


# --- issue 14.7: staging in the mount's own marked directory --------------------------------
def test_staging_dir_is_the_mounts_own_and_only_dead_mounts_empty_dirs_are_removed(bucket, s3_env, tmp_path):
    from pailfs.procs import pid_running, pids_with_argument

    staging = tmp_path / "staging"
    opts = f"stat_cache_expire=60,staging_dir={staging}"

    def own_dir(pid: int) -> list[Path]:
        return list(staging.glob(f"pailfs-mount-{os.getuid()}-{pid}-*"))

    with mounted(bucket, tmp_path / "a", opts) as mnt:
        (daemon,) = pids_with_argument(str(mnt), words=("mount", "-f"))
        (own,) = own_dir(daemon)
        assert json.loads((own / "mount.json").read_text())["pid"] == daemon
        assert stat.S_IMODE(own.stat().st_mode) == 0o700
        fd = os.open(mnt / "open.bin", os.O_CREAT | os.O_WRONLY)
        os.write(fd, b"staged")
        assert [p.name for p in own.iterdir() if p.name.startswith("ino")]
        os.kill(daemon, signal.SIGKILL)  # leaves its dir, with a staged file
        wait_for(lambda: not pid_running(daemon))
        try:
            os.close(fd)
        except OSError:
            pass
    with mounted(bucket, tmp_path / "b", opts) as live:
        (live_pid,) = pids_with_argument(str(live), words=("mount", "-f"))
        with mounted(bucket, tmp_path / "c", opts) as idle:
            (idle_pid,) = pids_with_argument(str(idle), words=("mount", "-f"))
            os.kill(idle_pid, signal.SIGKILL)  # an empty dir of a dead mount
            wait_for(lambda: not pid_running(idle_pid))
        (idle_dir,) = own_dir(idle_pid)
        lookalike = staging / f"pailfs-mount-{os.getuid()}-999999-notours"  # named like ours, no marker
        lookalike.mkdir()
        other = staging / "pailfs-staging-old"
        other.mkdir()
        (staging / "notes.txt").write_text("a user's file")
        with mounted(bucket, tmp_path / "d", opts) as mnt:
            (newest,) = pids_with_argument(str(mnt), words=("mount", "-f"))
            assert not idle_dir.exists()  # dead, empty, provably ours: removed
            assert own.exists()           # dead but holds staged data: kept
            assert own_dir(live_pid)      # alive: kept
            assert lookalike.exists() and other.exists() and (staging / "notes.txt").exists()
        assert not own_dir(newest)        # a clean unmount removes its own dir
        assert own_dir(live_pid)


def test_a_clean_unmount_leaves_nothing_in_the_temp_dir(bucket, s3_env, tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    with mounted(bucket, tmp_path / "mnt", "stat_cache_expire=60") as mnt:
        (mnt / "f").write_bytes(b"x")
        assert [p.name.startswith(f"pailfs-mount-{os.getuid()}-") for p in tmp.iterdir()] == [True]
    assert list(tmp.iterdir()) == []
