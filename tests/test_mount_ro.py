"""The read-only mount, for real: SeaweedFS + /dev/fuse + `pailfs mount`."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mounts import blob, is_mounted, mount_stats, mounted, pailfs, put_objects

RO = "ro,kernel_cache,max_stat_cache_size=10000,umask=022"


ODD_NAMES = ["with space.txt", "ünïcödé-数据.bin", "plus+sign", "per%cent", "eq=ual", "dash-._~"]


@pytest.fixture(scope="module")
def dataset(seaweed, tmp_path_factory):
    """One bucket with a tree of objects, shared by the read-only tests."""
    from conftest import make_bucket

    bucket = make_bucket(seaweed)
    objects: dict[str, bytes] = {}
    for d in range(3):
        for i in range(40):
            objects[f"train/class{d}/img{i:03d}.bin"] = blob(d * 1000 + i, 2000 + (i * 37) % 2000)
    for n, name in enumerate(ODD_NAMES):
        objects[f"odd/{name}"] = blob(5000 + n, 100 + n)
    objects["deep/a/b/c/d/leaf.txt"] = b"leaf\n"
    objects["markers/empty/"] = b""           # a directory marker, nothing inside
    objects["markers/full/"] = b""
    objects["markers/full/x"] = b"x"
    objects["empty-file"] = b""
    objects["big.bin"] = blob(42, 12 * 1024 * 1024 + 12345)
    objects["wide/" + "f" * 0] = b""  # marker of a wide dir
    for i in range(3000):
        objects[f"wide/e{i:05d}"] = b"%d" % i
    env = seaweed.env()
    old = dict(os.environ)
    os.environ.update(env)
    try:
        put_objects(f"s3://{bucket}", objects)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return bucket, objects


@pytest.fixture
def ro_mount(dataset, s3_env, tmp_path):
    bucket, objects = dataset
    with mounted(bucket, tmp_path / "mnt", RO) as mnt:
        yield mnt, objects


def test_every_file_reads_back_identical(ro_mount):
    mnt, objects = ro_mount
    for key, data in objects.items():
        if key.endswith("/"):
            continue
        path = mnt / key
        with open(path, "rb") as f:  # Python open(): the isatty ioctl path
            assert f.read() == data, key
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.read(fd, len(data) + 10) == data
        finally:
            os.close(fd)
        assert os.stat(path).st_size == len(data)


def test_listing_implicit_dirs_markers_and_odd_names(ro_mount):
    mnt, _ = ro_mount
    assert sorted(os.listdir(mnt)) == ["big.bin", "deep", "empty-file", "markers", "odd", "train", "wide"]
    assert sorted(os.listdir(mnt / "train")) == ["class0", "class1", "class2"]
    assert len(os.listdir(mnt / "train/class1")) == 40
    assert sorted(os.listdir(mnt / "odd")) == sorted(ODD_NAMES)
    assert os.listdir(mnt / "markers/empty") == []
    assert os.listdir(mnt / "markers/full") == ["x"]
    assert os.path.isdir(mnt / "deep/a/b/c")
    assert (mnt / "deep/a/b/c/d/leaf.txt").read_bytes() == b"leaf\n"
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "train/class9")
    with pytest.raises(NotADirectoryError):
        os.listdir(mnt / "empty-file")


def test_directory_of_3000_entries(ro_mount):
    mnt, _ = ro_mount
    names = os.listdir(mnt / "wide")
    assert len(names) == 3000
    assert sorted(names) == [f"e{i:05d}" for i in range(3000)]
    with os.scandir(mnt / "wide") as it:
        sizes = {e.name: e.stat().st_size for e in it}
    assert sizes["e02999"] == 4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 12 * 1024 * 1024 + 12345 + 100), length=st.integers(0, 3 * 1024 * 1024))
def test_random_reads_of_a_large_object(ro_mount, offset, length):
    mnt, objects = ro_mount
    source = objects["big.bin"]
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    try:
        got = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    assert got == source[offset:offset + length]


def test_sequential_read_of_a_large_object(ro_mount):
    mnt, objects = ro_mount
    digest = hashlib.sha256()
    with open(mnt / "big.bin", "rb", buffering=0) as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(objects["big.bin"]).hexdigest()


def test_every_modifying_call_fails_with_erofs(ro_mount):
    mnt, _ = ro_mount
    target = mnt / "empty-file"
    calls = {
        "create": lambda: open(mnt / "new.txt", "wb"),
        "open for write": lambda: os.open(target, os.O_WRONLY),
        "truncate": lambda: os.truncate(target, 0),
        "unlink": lambda: os.unlink(target),
        "rename": lambda: os.rename(target, mnt / "moved"),
        "mkdir": lambda: os.mkdir(mnt / "newdir"),
        "rmdir": lambda: os.rmdir(mnt / "markers/empty"),
        "chmod": lambda: os.chmod(target, 0o600),
        "chown": lambda: os.chown(target, 1, 1),
        "utime": lambda: os.utime(target, (1, 1)),
        "symlink": lambda: os.symlink("x", mnt / "link"),
        "link": lambda: os.link(target, mnt / "hard"),
        "setxattr": lambda: os.setxattr(target, "user.k", b"v"),
    }
    for name, call in calls.items():
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS, f"{name}: {info.value}"
    assert sorted(os.listdir(mnt))[:3] == ["big.bin", "deep", "empty-file"]


def test_modes_with_umask(ro_mount):
    mnt, _ = ro_mount
    assert stat.S_IMODE(os.stat(mnt / "empty-file").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(mnt / "train").st_mode) == 0o755
    assert stat.S_ISDIR(os.stat(mnt / "train").st_mode)


def test_modes_and_owner_without_umask(dataset, s3_env, tmp_path):
    bucket, _ = dataset
    with mounted(bucket, tmp_path / "m", "ro,uid=1234,gid=4321") as mnt:
        st_file = os.stat(mnt / "empty-file")
        st_dir = os.stat(mnt / "train")
        assert stat.S_IMODE(st_file.st_mode) == 0o640  # ossfs default
        assert stat.S_IMODE(st_dir.st_mode) == 0o750
        assert (st_file.st_uid, st_file.st_gid) == (1234, 4321)


def test_subpath_mount(dataset, s3_env, tmp_path):
    bucket, objects = dataset
    with mounted(f"{bucket}:/train/class2", tmp_path / "m", RO) as mnt:
        assert len(os.listdir(mnt)) == 40
        assert (mnt / "img007.bin").read_bytes() == objects["train/class2/img007.bin"]
    with mounted(f"s3://{bucket}/deep/a", tmp_path / "m2", RO) as mnt:
        assert os.listdir(mnt) == ["b"]


def test_change_seen_after_expiry_and_at_once_without_stat_cache(bucket, s3_env, tmp_path):
    put_objects(f"s3://{bucket}", {"data.txt": b"version one"})
    with mounted(bucket, tmp_path / "a", "ro,kernel_cache,stat_cache_expire=2") as cached, \
            mounted(bucket, tmp_path / "b", "ro,max_stat_cache_size=0") as uncached:
        assert (cached / "data.txt").read_bytes() == b"version one"
        assert (uncached / "data.txt").read_bytes() == b"version one"
        put_objects(f"s3://{bucket}", {"data.txt": b"version two, longer"})
        assert (uncached / "data.txt").read_bytes() == b"version two, longer"
        assert (cached / "data.txt").read_bytes() == b"version one"  # trusted until expiry
        time.sleep(3)
        assert (cached / "data.txt").read_bytes() == b"version two, longer"


def test_stats_and_warmup(dataset, s3_env, tmp_path):
    bucket, _ = dataset
    with mounted(bucket, tmp_path / "m", RO) as mnt:
        proc = pailfs("warmup", str(mnt / "train"), "-j", "8", check=True)
        assert "warmed 120 files" in proc.stdout.decode()
        data = mount_stats(mnt)
        assert data["read_only"] is True
        assert data["store"]["requests"].get("get", 0) >= 120
        assert data["store"]["requests"].get("head", 0) == 0  # attributes came from LIST
        assert data["stat_cache"]["entries"] >= 120
        table = pailfs("stats", str(mnt), check=True).stdout.decode()
        assert "bytes downloaded" in table


@pytest.mark.parametrize("readahead_mb", [16, 0])
def test_sequential_read_makes_few_large_gets(readahead_mb, dataset, s3_env, tmp_path):
    """A sequential read is fetched once, in aligned ranged GETs of up to 8 MiB, whether
    the kernel sends 1 MiB requests a little out of order (its readahead raised to
    `kernel_readahead`) or 128 KiB ones in order (the kernel's default)."""
    bucket, objects = dataset
    with mounted(bucket, tmp_path / "m", f"{RO},kernel_readahead={readahead_mb}") as mnt:
        dev = os.stat(mnt).st_dev
        bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        assert int(bdi.read_text()) == (readahead_mb * 1024 or 128)
        fd = os.open(mnt / "big.bin", os.O_RDONLY)
        before = mount_stats(mnt)["store"]
        try:
            digest = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
        finally:
            os.close(fd)
        assert digest.hexdigest() == hashlib.sha256(objects["big.bin"]).hexdigest()
        after = mount_stats(mnt)["store"]
        assert after["bytes_down"] - before["bytes_down"] == len(objects["big.bin"])  # nothing fetched twice
        gets = after["requests"]["get"] - before["requests"].get("get", 0)
        assert gets <= 4  # 12 MiB: the first 8 MiB group, then the rest


def test_readahead_stays_within_max_buffer_memory(dataset, s3_env, tmp_path):
    """Readahead shares the max_buffer_memory bound with cached small objects: with
    4 MB the kernel's readahead is cut to 1 MB, a sequential read of the 12 MiB
    object still returns every byte, and the mount never holds more than 4 MiB of
    read buffers plus the chunks of the READs in flight."""
    import threading

    bucket, objects = dataset
    with mounted(bucket, tmp_path / "m", f"{RO},max_buffer_memory=4") as mnt:
        dev = os.stat(mnt).st_dev
        assert Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").read_text().strip() == "1024"
        peak = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                data = mount_stats(mnt)["data_cache"]
                peak[0] = max(peak[0], data["readahead_bytes"] + data["memory_bytes"])

        watcher = threading.Thread(target=watch)
        watcher.start()
        digest = hashlib.sha256()
        try:
            fd = os.open(mnt / "big.bin", os.O_RDONLY)
            try:
                while chunk := os.read(fd, 1 << 20):
                    digest.update(chunk)
                    time.sleep(0.01)  # let the watcher see the buffers mid-read
            finally:
                os.close(fd)
        finally:
            done.set()
            watcher.join()
        assert digest.hexdigest() == hashlib.sha256(objects["big.bin"]).hexdigest()
        assert 0 < peak[0] <= 6 * 1024 * 1024


def test_disk_cache_survives_remount(dataset, s3_env, tmp_path):
    bucket, objects = dataset
    cache = tmp_path / "cache"
    with mounted(bucket, tmp_path / "m", f"ro,use_cache={cache}") as mnt:
        assert (mnt / "train/class0/img001.bin").read_bytes() == objects["train/class0/img001.bin"]
    assert any(cache.rglob("*"))
    with mounted(bucket, tmp_path / "m", f"ro,use_cache={cache}") as mnt:
        assert (mnt / "train/class0/img001.bin").read_bytes() == objects["train/class0/img001.bin"]
        data = mount_stats(mnt)
        assert data["data_cache"]["disk_hits"] >= 1
        assert data["store"]["requests"].get("get", 0) == 0


@pytest.mark.parametrize("case", ["missing bucket", "wrong secret", "no mountpoint", "not a directory",
                                  "not empty", "bad option", "bad value"])
def test_mount_failures_are_one_clear_line(case, bucket, s3_env, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    source, opts, env = bucket, ["ro"], dict(os.environ)
    expect = ""
    if case == "missing bucket":
        source, expect = "no-such-bucket-here", "bucket"
    elif case == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "definitely-wrong-secret-value"
        expect = "denied"
    elif case == "no mountpoint":
        mnt = tmp_path / "absent"
        expect = "does not exist"
    elif case == "not a directory":
        mnt = tmp_path / "file"
        mnt.write_text("x")
        expect = "not a directory"
    elif case == "not empty":
        (mnt / "something").write_text("x")
        expect = "not empty"
    elif case == "bad option":
        opts, expect = ["ro,bogus_option=1"], "unknown option 'bogus_option'"
    elif case == "bad value":
        opts, expect = ["parallel_count=many"], "bad value for option 'parallel_count'"
    args = ["mount", source, str(mnt)] + [x for o in opts for x in ("-o", o)]
    proc = pailfs(*args, env=env, timeout=90)
    err = proc.stderr.decode()
    try:
        assert proc.returncode != 0
        assert expect.lower() in err.lower(), err
        assert len(err.strip().splitlines()) == 1, err
        assert "definitely-wrong-secret-value" not in err
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)])


def test_already_mounted_mountpoint_is_refused(dataset, s3_env, tmp_path):
    bucket, _ = dataset
    with mounted(bucket, tmp_path / "m", RO) as mnt:
        proc = pailfs("mount", bucket, str(mnt), "-o", "ro,nonempty")
        assert proc.returncode != 0
        assert "already" in proc.stderr.decode().lower()
        assert os.listdir(mnt)  # the first mount still answers


def test_dead_server_gives_eio_then_recovers(private_server, tmp_path):
    from conftest import restart

    srv, state, bucket = private_server
    mnt = tmp_path / "mnt"
    put_objects(f"s3://{bucket}", {"a.txt": b"alpha", "b.txt": b"bravo"})
    with mounted(bucket, mnt, "ro,readwrite_timeout=3,connect_timeout=2,retries=0"):
        assert (mnt / "a.txt").read_bytes() == b"alpha"
        srv.stop(timeout=3)
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            (mnt / "b.txt").read_bytes()
        assert info.value.errno == errno.EIO
        assert time.monotonic() - started < 20
        assert (mnt / "a.txt").read_bytes() == b"alpha"  # cached data still served
        restart(state, tmp_path)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert (mnt / "b.txt").read_bytes() == b"bravo"
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def test_mount_t_fuse_pailfs_and_fstab_style_options(dataset, s3_env, tmp_path):
    """mount(8) runs /sbin/mount.fuse.pailfs (linked by `make setup`) with fstab-style options."""
    bucket, objects = dataset
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "fuse.pailfs", f"{bucket}:/train", str(mnt),
                           "-o", f"ro,nosuid,nodev,_netdev,kernel_cache,url={s3_env['PAILFS_ENDPOINT']}"],
                          capture_output=True, timeout=60)
    try:
        assert proc.returncode == 0, proc.stderr.decode()
        assert sorted(os.listdir(mnt)) == ["class0", "class1", "class2"]
        assert (mnt / "class0/img000.bin").read_bytes() == objects["train/class0/img000.bin"]
    finally:
        pailfs("umount", str(mnt))
    assert not is_mounted(mnt)


def test_reading_a_directory_lists_its_subdirectories_ahead(dataset, s3_env, tmp_path):
    """os.walk reads a directory, then each subdirectory: their listings are fetched in
    parallel while the walker is still on the parent, so the walk itself waits for none."""
    bucket, objects = dataset
    with mounted(bucket, tmp_path / "m", RO) as mnt:
        def lists() -> int:
            data = mount_stats(mnt)
            return data["store"]["requests"].get("list", 0)

        assert sorted(os.listdir(mnt / "train")) == ["class0", "class1", "class2"]
        deadline = time.monotonic() + 10
        while lists() < 5 and time.monotonic() < deadline:  # root, train, 3 class dirs
            time.sleep(0.05)
        assert lists() == 5
        walked = {os.path.relpath(os.path.join(d, f), mnt) for d, _, fs in os.walk(mnt / "train") for f in fs}
        assert walked == {k for k in objects if k.startswith("train/")}
        assert lists() == 5


def test_walk_then_read_a_tree_larger_than_the_stat_cache(dataset, s3_env, tmp_path):
    """The ImageFolder pattern: list everything, then read every file. Entries evicted
    from a small stat cache are still known to the kernel, so reading them costs one
    GET each and no HEAD."""
    bucket, objects = dataset
    with mounted(bucket, tmp_path / "m", "ro,kernel_cache,max_stat_cache_size=30") as mnt:
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(mnt / "train") for f in files)
        assert len(paths) == 120
        for path in paths:
            assert Path(path).read_bytes() == objects[os.path.relpath(path, mnt)]
        data = mount_stats(mnt)
        assert data["stat_cache"]["evictions"] >= 90
        assert data["store"]["requests"].get("head", 0) == 0
        assert data["store"]["requests"]["get"] == 120
        assert data["kernel_requests"]["READ"] >= 120


def test_many_readers_with_a_stat_cache_smaller_than_the_data(bucket, s3_env, tmp_path):
    """Evictions race with lookups answered from the cache; no reader may ever see an
    error or wrong bytes (a dropped inode the kernel still held used to give ENOENT)."""
    import random
    import threading

    objects = {f"d{i % 4}/f{i:03d}": blob(i, 64 + i) for i in range(400)}
    put_objects(f"s3://{bucket}", objects)
    keys = sorted(objects)
    errors: list[str] = []
    with mounted(bucket, tmp_path / "m", "ro,max_stat_cache_size=40,stat_cache_expire=1") as mnt:
        deadline = time.monotonic() + 12

        def reader(seed: int) -> None:
            rnd = random.Random(seed)
            while time.monotonic() < deadline and len(errors) < 5:
                key = rnd.choice(keys)
                try:
                    fd = os.open(mnt / key, os.O_RDONLY)
                    try:
                        data = os.read(fd, 4096)
                    finally:
                        os.close(fd)
                    if data != objects[key]:
                        errors.append(f"{key}: wrong bytes")
                    if rnd.random() < 0.05:
                        os.listdir(mnt / key.split("/")[0])
                except OSError as exc:
                    errors.append(f"{key}: {exc}")

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_a_walk_is_listed_one_level_ahead_all_the_way_down(dataset, s3_env, tmp_path):
    """A directory listed ahead of the walker queues its own subdirectories when the
    walker reaches it (served from the cache), so a deep walk keeps one level ahead."""
    bucket, objects = dataset
    with mounted(bucket, tmp_path / "m", RO) as mnt:
        def lists_reach(count: int) -> int:
            deadline = time.monotonic() + 10
            while (n := mount_stats(mnt)["store"]["requests"].get("list", 0)) < count and time.monotonic() < deadline:
                time.sleep(0.05)
            return n

        assert os.listdir(mnt / "deep") == ["a"]
        assert lists_reach(3) == 3  # root, deep/, and deep/a/ ahead
        for depth, path in enumerate(["deep/a", "deep/a/b", "deep/a/b/c"], start=4):
            assert len(os.listdir(mnt / path)) == 1  # answered from the listing made ahead
            assert lists_reach(depth) == depth  # ... which queued the next level
        assert os.listdir(mnt / "deep/a/b/c/d") == ["leaf.txt"]
        assert (mnt / "deep/a/b/c/d/leaf.txt").read_bytes() == objects["deep/a/b/c/d/leaf.txt"]
        assert mount_stats(mnt)["store"]["requests"]["list"] == 6  # root, deep, a, b, c, d: one each


def _mount_cpu_seconds(mnt: Path) -> float:
    from pailfs.bench.systems import cpu_seconds, pids_serving

    (pid,) = pids_serving(str(mnt))
    return cpu_seconds(pid)


@pytest.mark.parametrize("poll_us", [0, 50])
def test_the_reader_answers_alike_polling_or_sleeping_and_an_idle_mount_burns_no_cpu(poll_us, dataset, s3_env,
                                                                                      tmp_path):
    """After a request answered from the cache the reader polls /dev/fuse for
    fuse_poll_us before sleeping (0: sleeps at once). Either way every byte and
    errno is the same, and a mount left idle afterwards uses no CPU."""
    bucket, objects = dataset
    with mounted(bucket, tmp_path / "m", f"{RO},fuse_poll_us={poll_us}") as mnt:
        train = sorted(k for k in objects if k.startswith("train/"))
        for _ in range(2):  # cold, then warm: every request of the second pass is answered inline
            for key in train:
                with open(mnt / key, "rb") as f:  # the isatty ioctl, then page-cache reads
                    assert f.read() == objects[key]
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "train/no-such-file")
        assert mount_stats(mnt)["kernel_requests"]["IOCTL"] >= 2 * len(train)
        before = _mount_cpu_seconds(mnt)
        time.sleep(1.0)
        assert _mount_cpu_seconds(mnt) - before < 0.05
