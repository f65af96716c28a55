"""What the kernel's POSIX contract promises, on a real read-write mount (issue 16).

Each test drives a real FUSE mount against the real SeaweedFS and checks what a
user sees: stat fields to the nanosecond, errnos, the objects in the bucket
(read by a direct store, not through the mount) and what a fresh mount of the
same bucket shows. The options are those of a new user who copied the README:
`kernel_cache,max_stat_cache_size=10000,umask=022`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from mounts import get_object, list_keys, mount_stats, mounted, put_objects

OPTS = "kernel_cache,max_stat_cache_size=10000,umask=022"
PAST = 1_500_000_000_123_456_789  # a time well before any test runs, to the nanosecond


def head(url: str, key: str):
    from pailfs.store import open_store

    async def run():
        store = open_store(url)
        try:
            return await store.head(key)
        finally:
            await store.close()

    return asyncio.run(run())


def delete_object(url: str, key: str) -> None:
    from pailfs.store import open_store

    async def run() -> None:
        store = open_store(url)
        try:
            await store.delete(key)
        finally:
            await store.close()

    asyncio.run(run())


def raw_put(url: str, key: str, data: bytes, content_type: str) -> None:
    from pailfs.store import open_store

    async def run() -> None:
        store = open_store(url)
        try:
            await store.put(key, data, content_type=content_type)
        finally:
            await store.close()

    asyncio.run(run())


def times(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


def backdate(path: Path) -> os.stat_result:
    os.utime(path, ns=(PAST, PAST))
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (PAST, PAST)
    return st


def assert_modified(path: Path, before: os.stat_result) -> os.stat_result:
    """A data change: mtime and ctime moved to now, atime stayed."""
    st = os.stat(path)
    assert st.st_mtime_ns > PAST and abs(st.st_mtime - time.time()) < 60
    assert st.st_ctime_ns > before.st_ctime_ns
    assert st.st_atime_ns == before.st_atime_ns
    return st


def assert_changed_only(path: Path, before: os.stat_result) -> os.stat_result:
    """An inode change (chmod, chown, rename): ctime moved, mtime and atime did not."""
    st = os.stat(path)
    assert st.st_mtime_ns == before.st_mtime_ns and st.st_atime_ns == before.st_atime_ns
    assert st.st_ctime_ns > before.st_ctime_ns
    return st


@pytest.fixture
def fresh(bucket, s3_env, tmp_path):
    """mount(): a context manager mounting the test's bucket (again) with OPTS."""
    count = [0]

    def mount(*extra: str):
        count[0] += 1
        return mounted(bucket, tmp_path / f"mnt{count[0]}", ",".join((OPTS, *extra)))

    mount.url = f"s3://{bucket}"
    return mount


# --- 16.1 / 16.6: times after each call, to the nanosecond, through a remount ---------
def test_times_follow_every_call_and_survive_a_remount(fresh):
    with fresh() as mnt:
        path = mnt / "f"
        created = time.time()
        path.write_bytes(b"0123456789")
        st = os.stat(path)
        assert abs(st.st_mtime - created) < 60 and st.st_atime_ns <= st.st_mtime_ns <= st.st_ctime_ns

        before = backdate(path)
        with open(path, "ab") as f:  # append
            f.write(b"appended")
        assert_modified(path, before)
        before = backdate(path)
        with open(path, "r+b") as f:  # an in-place write of the same size
            f.write(b"X")
        assert_modified(path, before)
        before = backdate(path)
        os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))  # O_TRUNC, nothing written
        assert assert_modified(path, before).st_size == 0
        path.write_bytes(b"abc")
        before = backdate(path)
        os.truncate(path, 1)
        assert assert_modified(path, before).st_size == 1

        before = backdate(path)
        os.chmod(path, 0o600)
        before = assert_changed_only(path, before)
        os.chown(path, 1234, 5678)
        before = assert_changed_only(path, before)
        os.rename(path, mnt / "g")
        moved = assert_changed_only(mnt / "g", before)
        assert stat.S_IMODE(moved.st_mode) == 0o600 and (moved.st_uid, moved.st_gid) == (1234, 5678)

        exact_a, exact_m = 1_600_000_000_200_000_000, 1_700_000_000_123_456_789
        os.utime(mnt / "g", ns=(exact_a, exact_m))
        final = os.stat(mnt / "g")
        assert (final.st_atime_ns, final.st_mtime_ns) == (exact_a, exact_m)
        assert final.st_ctime_ns > moved.st_ctime_ns
        assert (mnt / "g").read_bytes() and times(os.stat(mnt / "g")) == times(final)  # noatime: reads move nothing
    meta = head(fresh.url, "g").metadata
    assert meta["mtime"] == "1700000000.123456789" and meta["atime"] == "1600000000.200000000"
    with fresh() as mnt:  # a fresh mount reads every field back, exactly
        again = os.stat(mnt / "g")
        assert times(again) == times(final)
        assert (again.st_mode, again.st_uid, again.st_gid, again.st_size) == \
            (final.st_mode, final.st_uid, final.st_gid, final.st_size)


def test_a_directory_moves_when_entries_come_and_go(fresh):
    with fresh() as mnt:
        os.mkdir(mnt / "d")
        for change in (lambda: (mnt / "d/f").write_bytes(b"1"), lambda: os.rename(mnt / "d/f", mnt / "d/g"),
                       lambda: os.unlink(mnt / "d/g"), lambda: os.mkdir(mnt / "d/sub"),
                       lambda: os.rmdir(mnt / "d/sub"), lambda: os.symlink("x", mnt / "d/link")):
            before = backdate(mnt / "d")
            change()
            assert_modified(mnt / "d", before)


# --- 16.2: O_TRUNC without a write ---------------------------------------------------------
def test_o_trunc_without_a_write_truncates(fresh):
    with fresh() as mnt:
        (mnt / "f").write_bytes(b"twelve bytes")
        subprocess.run(["sh", "-c", ": > f"], cwd=mnt, check=True)
        assert os.stat(mnt / "f").st_size == 0 and (mnt / "f").read_bytes() == b""
    assert get_object(fresh.url, "f") == b""
    with fresh() as mnt:
        assert os.stat(mnt / "f").st_size == 0


# --- 16.3: unlinked while open -------------------------------------------------------------
@pytest.mark.parametrize("how", ["new file", "uploaded file", "renamed over"])
def test_a_file_unlinked_while_open_is_never_uploaded(fresh, how):
    with fresh() as mnt:
        path = mnt / "tmpfile"
        if how != "new file":
            path.write_bytes(b"already in the bucket")
            assert get_object(fresh.url, "tmpfile") == b"already in the bucket"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"before unlink ", 0)
            if how == "renamed over":
                (mnt / "other").write_bytes(b"the file renamed over it")
                os.rename(mnt / "other", path)
                assert get_object(fresh.url, "tmpfile") == b"the file renamed over it"
                os.pwrite(fd, b"after unlink", 14)
                os.close(fd)
                fd = -1
                assert get_object(fresh.url, "tmpfile") == b"the file renamed over it"
                assert path.read_bytes() == b"the file renamed over it"
                return
            os.unlink(path)
            assert get_object(fresh.url, "tmpfile") is None
            os.pwrite(fd, b"after unlink", 14)
            os.fsync(fd)
            assert os.pread(fd, 100, 0).startswith(b"before unlink after unlink")  # still readable
            assert not path.exists()
        finally:
            if fd >= 0:
                os.close(fd)
        assert get_object(fresh.url, "tmpfile") is None
        assert "tmpfile" not in os.listdir(mnt)
    assert list_keys(fresh.url) == []
    with fresh() as mnt:
        assert os.listdir(mnt) == []


# --- 16.4: renames of trees ------------------------------------------------------------------
def test_renamed_tree_leaves_nothing_behind_and_rm_rf_works(fresh):
    from pailfs.store import open_store

    async def root_listing() -> tuple[list[str], list[str]]:
        store = open_store(fresh.url)
        try:
            listing = await store.list("", "/")
            return [o.key for o in listing.objects], listing.prefixes
        finally:
            await store.close()

    with fresh() as mnt:
        os.makedirs(mnt / "d/sub/deeper")
        for rel in ("d/a", "d/sub/b", "d/sub/deeper/c"):
            (mnt / rel).write_bytes(rel.encode())
        subprocess.run(["mv", str(mnt / "d"), str(mnt / "d2")], check=True)
        assert asyncio.run(root_listing()) == ([], ["d2/"])  # no store re-created d/
        assert not [k for k in list_keys(fresh.url) if k.startswith("d/")]
        assert (mnt / "d2/sub/deeper/c").read_bytes() == b"d/sub/deeper/c"
        subprocess.run(["mv", str(mnt / "d2/sub"), str(mnt / "sub2")], check=True)  # a subtree out of it
        assert (mnt / "sub2/b").read_bytes() == b"d/sub/b" and os.listdir(mnt / "d2") == ["a"]
        rm = subprocess.run(["rm", "-rf", str(mnt / "d2"), str(mnt / "sub2")], capture_output=True)
        assert rm.returncode == 0, rm.stderr
        assert os.listdir(mnt) == []
    assert list_keys(fresh.url) == [] and asyncio.run(root_listing()) == ([], [])
    with fresh() as mnt:
        assert os.listdir(mnt) == []


# --- 16.5: another client changes the bucket --------------------------------------------------
def test_rw_mount_sees_other_clients_at_once(fresh):
    with fresh() as mnt:
        os.mkdir(mnt / "dir")
        (mnt / "dir/a.txt").write_bytes(b"old a")
        (mnt / "dir/b.txt").write_bytes(b"b")
        assert sorted(os.listdir(mnt / "dir")) == ["a.txt", "b.txt"]
        assert (mnt / "dir/a.txt").read_bytes() == b"old a"  # in the kernel's page cache now
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "dir/new.txt")
        # another client: creates, changes (to the same size), deletes
        put_objects(fresh.url, {"dir/new.txt": b"new", "dir/a.txt": b"NEW A"})
        delete_object(fresh.url, "dir/b.txt")
        assert (mnt / "dir/new.txt").read_bytes() == b"new"
        assert (mnt / "dir/a.txt").read_bytes() == b"NEW A"  # close-to-open
        with pytest.raises(FileNotFoundError):
            open(mnt / "dir/b.txt", "rb")
        assert sorted(os.listdir(mnt / "dir")) == ["a.txt", "new.txt"]
        put_objects(fresh.url, {"dir/late.txt": b"x"})
        rm = subprocess.run(["rm", "-rf", str(mnt / "dir")], capture_output=True)
        assert rm.returncode == 0, rm.stderr
    assert list_keys(fresh.url) == []


def test_two_mounts_writing_at_once_never_mix_their_bytes(fresh):
    """Two read-write mounts of one bucket (two nodes of a job) write the same 12 MiB
    file and 40 files each in one directory, at the same time. Every upload is whole:
    the object is one writer's bytes, never a mix (last completed upload wins, as on
    S3); no file is lost; each mount, opening again, reads what the bucket holds."""
    import threading

    payloads = [os.urandom(12 << 20), os.urandom(12 << 20)]
    with fresh() as a, fresh() as b:
        os.mkdir(a / "shared")
        errors_seen: list[BaseException] = []

        def writer(mnt: Path, n: int) -> None:
            try:
                with open(mnt / "shared/model.bin", "wb") as f:
                    data = payloads[n]
                    for at in range(0, len(data), 1 << 20):
                        f.write(data[at:at + (1 << 20)])
                for i in range(40):
                    (mnt / f"shared/part-{n}-{i:02d}.txt").write_bytes(b"%d:%d" % (n, i))
            except BaseException as exc:  # noqa: BLE001 - reported by the assert below
                errors_seen.append(exc)

        threads = [threading.Thread(target=writer, args=(mnt, n)) for n, mnt in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors_seen == [] and not any(t.is_alive() for t in threads)

        stored = get_object(fresh.url, "shared/model.bin")
        assert stored in payloads  # one writer's whole object
        keys = set(list_keys(fresh.url, "shared/"))
        assert {f"shared/part-{n}-{i:02d}.txt" for n in (0, 1) for i in range(40)} <= keys
        for mnt in (a, b):
            assert (mnt / "shared/model.bin").read_bytes() == stored  # close-to-open
            assert len([n for n in os.listdir(mnt / "shared") if n.startswith("part-")]) == 80
            assert (mnt / "shared/part-1-07.txt").read_bytes() == b"1:7"


def test_ro_data_set_mount_trusts_its_listing_unless_asked(bucket, s3_env, tmp_path):
    url = f"s3://{bucket}"
    put_objects(url, {f"data/{i}.bin": b"%d" % i for i in range(5)})
    with mounted(bucket, tmp_path / "ro", "ro," + OPTS) as ro, \
            mounted(bucket, tmp_path / "checked", "ro,check_missing," + OPTS) as checked:
        for mnt in (ro, checked):
            assert len(os.listdir(mnt / "data")) == 5
            for i in range(5):
                os.stat(mnt / f"data/{i}.bin")
        before = mount_stats(ro)["store"]["requests"]
        assert before.get("head", 0) == 0  # attributes from the LIST: no HEAD per entry
        put_objects(url, {"data/new.bin": b"new"})
        with pytest.raises(FileNotFoundError):  # the data-set mount's speed: its listing is the truth
            os.stat(ro / "data/new.bin")
        assert mount_stats(ro)["store"]["requests"] == before  # and it did not ask
        assert (checked / "data/new.bin").read_bytes() == b"new"  # asked for it: checked with the store


# --- 16.6: directory times and modes survive a remount ---------------------------------------
def test_directory_metadata_survives_a_remount(fresh):
    with fresh() as mnt:
        os.makedirs(mnt / "top/inner")
        os.chmod(mnt / "top/inner", 0o705)
        os.chown(mnt / "top/inner", 321, 654)
        os.setxattr(mnt / "top/inner", "user.note", b"dir xattr")
        os.utime(mnt / "top/inner", ns=(PAST, PAST + 7))
        os.utime(mnt / "top", ns=(PAST + 1, PAST + 2))
        want = {rel: os.stat(mnt / rel) for rel in ("top", "top/inner")}
    with fresh() as mnt:
        scanned = {e.name: e for e in os.scandir(mnt / "top")}  # readdir first: READDIRPLUS attributes
        assert scanned["inner"].stat().st_mtime_ns == PAST + 7
        for rel, st in want.items():
            again = os.stat(mnt / rel)
            assert times(again) == times(st), rel
            assert (again.st_mode, again.st_uid, again.st_gid) == (st.st_mode, st.st_uid, st.st_gid), rel
        assert os.getxattr(mnt / "top/inner", "user.note") == b"dir xattr"


# --- 16.7: the mount root ---------------------------------------------------------------------------
def test_root_attributes_apply_in_memory(fresh):
    with fresh() as mnt:
        default = os.stat(mnt)
        os.chmod(mnt, 0o711)
        os.chown(mnt, 42, 43)
        os.utime(mnt, ns=(PAST, PAST))
        st = os.stat(mnt)
        assert stat.S_IMODE(st.st_mode) == 0o711 and (st.st_uid, st.st_gid) == (42, 43)
        assert (st.st_atime_ns, st.st_mtime_ns) == (PAST, PAST)
    assert list_keys(fresh.url) == []  # nothing stored for the root
    with fresh() as mnt:  # documented: the root's attributes are the mount's own
        again = os.stat(mnt)
        assert stat.S_IMODE(again.st_mode) == stat.S_IMODE(default.st_mode)
        assert (again.st_uid, again.st_gid) == (default.st_uid, default.st_gid)


# --- 16.8: limits --------------------------------------------------------------------------------------
def test_statfs_reports_the_name_limit_that_is_enforced(fresh):
    with fresh() as mnt:
        assert os.statvfs(mnt).f_namemax == 255
        (mnt / ("n" * 255)).write_bytes(b"ok")
        with pytest.raises(OSError) as info:
            (mnt / ("n" * 256)).write_bytes(b"no")
        assert info.value.errno == errno.ENAMETOOLONG
    assert list_keys(fresh.url) == ["n" * 255]


# --- 16.9: Content-Type ----------------------------------------------------------------------------------
def test_content_type_follows_the_name(fresh):
    with fresh() as mnt:
        (mnt / "page.html").write_bytes(b"<p>")
        (mnt / "data.json").write_bytes(b"{}")
        (mnt / "blob.unknownext").write_bytes(b"?")
        os.mkdir(mnt / "d")
        (mnt / "tmp").write_bytes(b"body{}")
        os.rename(mnt / "tmp", mnt / "style.css")
        big = os.urandom(6 * 1024 * 1024)
        (mnt / "big.txt").write_bytes(big)
    types = {k: (head(fresh.url, k).content_type or "").split(";")[0]
             for k in ("page.html", "data.json", "blob.unknownext", "d/", "style.css", "big.txt")}
    assert types == {"page.html": "text/html", "data.json": "application/json",
                     "blob.unknownext": "application/octet-stream", "d/": "application/x-directory",
                     "style.css": "text/css", "big.txt": "text/plain"}


def test_object_with_directory_content_type_is_a_directory(fresh):
    # s3fs-fuse's old layout: `legacy` (no trailing '/') with Content-Type application/x-directory
    raw_put(fresh.url, "legacy", b"", "application/x-directory")
    put_objects(fresh.url, {"legacy/child.txt": b"child"})
    with fresh() as mnt:
        assert stat.S_ISDIR(os.stat(mnt / "legacy").st_mode)
        assert os.listdir(mnt / "legacy") == ["child.txt"]
        assert (mnt / "legacy/child.txt").read_bytes() == b"child"
        os.unlink(mnt / "legacy/child.txt")
        os.rmdir(mnt / "legacy")
        assert not (mnt / "legacy").exists()
    assert list_keys(fresh.url) == []


# --- 16.10: extended attributes, FIFOs, sockets, links ------------------------------------------------
def test_extended_attributes_are_object_metadata(fresh):
    with fresh() as mnt:
        path = mnt / "f"
        path.write_bytes(b"data")
        os.setxattr(path, "user.binary", b"\x00\xff\x10 bytes")
        os.setxattr(path, "user.text", b"hello")
        assert sorted(os.listxattr(path)) == ["user.binary", "user.text"]
        assert os.getxattr(path, "user.binary") == b"\x00\xff\x10 bytes"
        cases = [(lambda: os.setxattr(path, "user.text", b"x", os.XATTR_CREATE), errno.EEXIST),
                 (lambda: os.setxattr(path, "user.none", b"x", os.XATTR_REPLACE), errno.ENODATA),
                 (lambda: os.getxattr(path, "user.none"), errno.ENODATA),
                 (lambda: os.removexattr(path, "user.none"), errno.ENODATA),
                 (lambda: os.setxattr(path, "trusted.x", b"x"), errno.EOPNOTSUPP),
                 (lambda: os.getxattr(path, "security.selinux"), errno.ENODATA),
                 (lambda: os.setxattr(path, "user.big", b"v" * 3000), errno.ENOSPC)]
        for call, code in cases:
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == code
        os.setxattr(path, "user.text", b"replaced", os.XATTR_REPLACE)
        os.setxattr(path, "user.gone", b"soon")
        os.removexattr(path, "user.gone")
        with open(path, "ab") as f:  # a later upload keeps them
            f.write(b" more")
    from pailfs.fs.nodes import decode_xattrs

    stored = head(fresh.url, "f").metadata
    assert decode_xattrs(stored["xattr"]) == {"user.binary": b"\x00\xff\x10 bytes", "user.text": b"replaced"}
    with fresh() as mnt:
        assert sorted(os.listxattr(mnt / "f")) == ["user.binary", "user.text"]
        assert os.getxattr(mnt / "f", "user.text") == b"replaced"
        assert (mnt / "f").read_bytes() == b"data more"


def test_fifos_and_sockets_are_special_objects(fresh, tmp_path):
    with fresh() as mnt:
        os.mkfifo(mnt / "pipe", 0o640)
        server = socket.socket(socket.AF_UNIX)
        try:
            server.bind(str(mnt / "sock"))
        finally:
            server.close()
        with pytest.raises(OSError) as info:
            os.mknod(mnt / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        assert info.value.errno == errno.EPERM
        os.symlink("pipe", mnt / "link")
    assert int(head(fresh.url, "pipe").metadata["mode"]) == stat.S_IFIFO | 0o640
    assert stat.S_ISSOCK(int(head(fresh.url, "sock").metadata["mode"]))
    with fresh() as mnt:
        kinds = {e.name: (e.is_symlink(), e.is_file(follow_symlinks=False)) for e in os.scandir(mnt)}
        assert kinds["link"] == (True, False) and kinds["pipe"] == (False, False)  # d_type from READDIRPLUS
        assert stat.S_ISFIFO(os.lstat(mnt / "pipe").st_mode)
        assert stat.S_IMODE(os.lstat(mnt / "pipe").st_mode) == 0o640
        assert stat.S_ISSOCK(os.lstat(mnt / "sock").st_mode)
        assert os.readlink(mnt / "link") == "pipe"
        # a FIFO on the mount works as one (the kernel keeps the pipe; nothing is uploaded)
        writer = subprocess.Popen(["sh", "-c", f"echo through > '{mnt / 'pipe'}'"])
        with open(mnt / "pipe", "rb") as f:
            assert f.read() == b"through\n"
        assert writer.wait(30) == 0


def test_a_file_beyond_the_part_limit_is_efbig(fresh):
    with fresh("multipart_size=5") as mnt:  # 10,000 parts of 5 MiB
        fd = os.open(mnt / "huge", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with pytest.raises(OSError) as info:
                os.pwrite(fd, b"x", 10_000 * 5 * 1024 * 1024)
            assert info.value.errno == errno.EFBIG
        finally:
            with pytest.raises(OSError) as closed:  # a failed write poisons the file
                os.close(fd)
        assert closed.value.errno == errno.EFBIG
        assert not (mnt / "huge").exists()
    assert list_keys(fresh.url) == []


def test_hard_links_are_not_supported(fresh):
    with fresh() as mnt:
        (mnt / "f").write_bytes(b"x")
        with pytest.raises(OSError) as info:
            os.link(mnt / "f", mnt / "g")
        assert info.value.errno == errno.EOPNOTSUPP
        assert not (mnt / "g").exists()


def test_unlinked_file_open_for_reading(fresh):
    """A small object is read whole at the first read, so it stays readable; the bytes of
    a large one that were not read yet are gone with the object (documented)."""
    small, large = os.urandom(200_000), os.urandom(48 * 1024 * 1024)
    with fresh() as mnt:
        (mnt / "small").write_bytes(small)
        (mnt / "large").write_bytes(large)
    with fresh() as mnt:
        with open(mnt / "small", "rb", buffering=0) as s, open(mnt / "large", "rb", buffering=0) as big:
            assert s.read(10) == small[:10] and big.read(10) == large[:10]
            os.unlink(mnt / "small")
            os.unlink(mnt / "large")
            assert s.read() == small[10:]
            big.seek(40 * 1024 * 1024)  # far beyond what the first read fetched ahead
            with pytest.raises(OSError) as info:
                big.read()
            assert info.value.errno == errno.ENOENT
    assert list_keys(fresh.url) == []


def test_rename_exchange_is_not_supported(fresh):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    with fresh() as mnt:
        (mnt / "a").write_bytes(b"a")
        (mnt / "b").write_bytes(b"b")
        rc = libc.renameat2(-100, bytes(mnt / "a"), -100, bytes(mnt / "b"), 2)  # AT_FDCWD, RENAME_EXCHANGE
        assert rc == -1 and ctypes.get_errno() == errno.EOPNOTSUPP
        assert (mnt / "a").read_bytes() == b"a" and (mnt / "b").read_bytes() == b"b"
