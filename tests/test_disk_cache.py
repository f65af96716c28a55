"""The disk cache (`use_cache=DIR`) owns only the directory it creates and marks:
a user's files in DIR, or files it did not make inside its own directory, are
never deleted — not at mount start, not by eviction."""

from __future__ import annotations

import os

import pytest

from mounts import mount_stats, mounted, pailfs, put_objects

pytestmark = pytest.mark.mount


def _objects(n: int, size: int) -> dict[str, bytes]:
    return {f"f{i:02d}.bin": bytes([i]) * size for i in range(n)}


def test_cache_never_deletes_files_it_did_not_create(bucket, s3_env, tmp_path):
    objects = _objects(6, 600 * 1024)  # 3.6 MB through a 1 MB cache: evictions
    put_objects(f"s3://{bucket}", objects)
    cache = tmp_path / "cache"
    cache.mkdir()
    user_files = {
        cache / ".tmpnotes": b"a dot-file of the user",           # looked like a temp file to the old cache
        cache / "thesis.pdf": os.urandom(2 * 1024 * 1024),        # the oldest file: the old eviction's victim
        cache / "ab" / "cd": b"a file in a 2-letter directory",
    }
    for path, data in user_files.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1, 1))  # older than anything the cache writes
    for _ in range(2):  # mount start and eviction, twice (the second start sees a full cache dir)
        with mounted(bucket, tmp_path / "m", f"ro,use_cache={cache},max_cache_size=1") as mnt:
            for name, data in objects.items():
                assert (mnt / name).read_bytes() == data
            stats = mount_stats(mnt)["data_cache"]
            assert stats["disk_bytes"] <= 1024 * 1024
    for path, data in user_files.items():
        assert path.read_bytes() == data, path
    ours = cache / "pailfs-cache"
    assert (ours / ".pailfs-cache").is_file()
    assert sum(f.stat().st_size for f in ours.rglob("*") if f.is_file() and f.name != ".pailfs-cache") \
        <= 1024 * 1024


def test_foreign_files_inside_the_cache_dir_survive(bucket, s3_env, tmp_path):
    objects = _objects(4, 600 * 1024)
    put_objects(f"s3://{bucket}", objects)
    cache = tmp_path / "cache"
    with mounted(bucket, tmp_path / "m", f"ro,use_cache={cache}") as mnt:
        assert (mnt / "f00.bin").read_bytes() == objects["f00.bin"]
    ours = cache / "pailfs-cache"
    entry_dir = next(p for p in ours.iterdir() if p.is_dir())
    foreign = [ours / "README", entry_dir / "keep-me.txt", entry_dir / ".tmp-not-ours"]
    for path in foreign:
        path.write_bytes(b"not the cache's")
        os.utime(path, (1, 1))
    with mounted(bucket, tmp_path / "m", f"ro,use_cache={cache},max_cache_size=1") as mnt:
        for name, data in objects.items():
            assert (mnt / name).read_bytes() == data
    for path in foreign:
        assert path.read_bytes() == b"not the cache's", path


@pytest.mark.parametrize("case", ["unmarked", "symlink"])
def test_a_cache_dir_pailfs_did_not_create_is_refused(case, bucket, s3_env, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_bytes(b"data")
    if case == "unmarked":
        (cache / "pailfs-cache").mkdir()
        (cache / "pailfs-cache" / "precious").write_bytes(b"data")
    else:
        (cache / "pailfs-cache").symlink_to(elsewhere)
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = pailfs("mount", bucket, str(mnt), "-o", f"ro,use_cache={cache}")
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert len(err.strip().splitlines()) == 1 and "pailfs-cache" in err and "Traceback" not in err, err
    assert not os.path.ismount(mnt)
    assert (elsewhere / "precious").read_bytes() == b"data"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["precious"]


def test_cache_serves_a_remount_without_gets(bucket, s3_env, tmp_path):
    objects = _objects(3, 300 * 1024)
    put_objects(f"s3://{bucket}", objects)
    cache = tmp_path / "cache"
    with mounted(bucket, tmp_path / "m", f"ro,use_cache={cache}") as mnt:
        for name, data in objects.items():
            assert (mnt / name).read_bytes() == data
    # the unmount waited for the background writes
    with mounted(bucket, tmp_path / "m", f"ro,use_cache={cache}") as mnt:
        for name, data in objects.items():
            assert (mnt / name).read_bytes() == data
        stats = mount_stats(mnt)
        assert stats["store"]["requests"].get("get", 0) == 0
        assert stats["data_cache"]["disk_hits"] == len(objects)
