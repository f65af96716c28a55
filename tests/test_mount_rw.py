"""The read-write mount, for real: staged writes, uploads on close, no partial objects."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import time

import pytest

from mounts import get_object, get_object_after_restart, list_keys, mounted, put_objects

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
