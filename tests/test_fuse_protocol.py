"""The FUSE front end over real mounts (root or fusermount3), driven through tests/memfs.py.

Each test asserts what a user of the mount sees (bytes, stat results, errnos),
and where it matters which path the front end took (memfs counts its calls,
the session counts requests by opcode).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pailfs.errors import AccessDenied, MountError, StoreUnavailable
from pailfs.fuse import FuseServer
from pailfs.fuse import mount as fmount
from pailfs.fuse import protocol as P

sys.path.insert(0, str(Path(__file__).parent))
from memfs import MemFS  # noqa: E402



class Mounted:
    def __init__(self, server: FuseServer, thread: threading.Thread, path: str, errors: list) -> None:
        self.server, self.thread, self.path, self.errors = server, thread, path, errors

    def p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def counts(self) -> list[int]:
        return list(self.server.session.counts)

    def wait_ended(self, timeout: float = 10.0) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


pytestmark = pytest.mark.mount


@pytest.fixture
def mount(tmp_path):
    """mount(fs, **FuseServer options) -> Mounted; every mount is gone after the test."""
    made: list[Mounted] = []

    def _mount(fs, **options) -> Mounted:
        mp = tmp_path / f"mnt{len(made)}"
        mp.mkdir()
        server = FuseServer(fs, str(mp), **options)
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                server.serve(ready.set)
            except BaseException as exc:  # reported by the test
                errors.append(exc)
                ready.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert ready.wait(15), "mount did not become ready"
        if errors:
            raise errors[0]
        m = Mounted(server, thread, str(mp), errors)
        made.append(m)
        return m

    yield _mount
    for m in made:
        m.server.stop()
        m.thread.join(15)
        if fmount.find_mount(m.path) is not None:
            fmount.unmount(m.path, lazy=True)
        assert not m.thread.is_alive(), "serve() did not end"
        assert not m.errors, m.errors


def dataset(n_files: int = 0, **kw) -> MemFS:
    fs = MemFS(read_only=True, **kw)
    fs.add_file("hello.txt", b"hello, world\n", mtime=1_700_000_000.25,
                xattrs={"user.etag": b"abc123", "user.empty": b""})
    fs.add_file("sub/big.bin", bytes(range(256)) * (3 * 4096 + 7))  # 3 MiB + 1792 bytes
    fs.add_file("sub/mode600", b"secret", mode=0o600)
    for i in range(n_files):
        fs.add_file(f"many/f{i:05d}", (b"%05d" % i) * (400 + i % 400))
    return fs


# --------------------------------------------------------------------------- read-only

def test_read_bytes_stat_and_errors(mount):
    fs = dataset()
    m = mount(fs)
    with open(m.p("hello.txt"), "rb") as f:
        assert f.read() == b"hello, world\n"
    fd = os.open(m.p("sub", "big.bin"), os.O_RDONLY)
    try:
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        assert data == bytes(range(256)) * (3 * 4096 + 7)
        assert os.pread(fd, 10, 5000) == (bytes(range(256)) * 20)[5000:5010]
    finally:
        os.close(fd)

    st = os.stat(m.p("hello.txt"))
    assert st.st_size == 13 and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_mtime_ns == 1_700_000_000_250_000_000
    assert st.st_atime_ns == st.st_ctime_ns == st.st_mtime_ns
    assert st.st_blocks == 1 and st.st_nlink == 1 and st.st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(m.p("sub", "mode600")).st_mode) == 0o600
    big = os.stat(m.p("sub", "big.bin"))
    assert big.st_size == 256 * (3 * 4096 + 7) and big.st_blocks == (big.st_size + 511) // 512
    assert stat.S_ISDIR(os.stat(m.p("sub")).st_mode)

    with pytest.raises(FileNotFoundError):
        os.stat(m.p("missing"))
    with pytest.raises(FileNotFoundError):
        open(m.p("sub", "missing"))
    with pytest.raises(NotADirectoryError):
        os.listdir(m.p("hello.txt"))
    with pytest.raises(NotADirectoryError):
        os.stat(m.p("hello.txt", "x"))
    fd = os.open(m.p("sub"), os.O_RDONLY)
    try:
        with pytest.raises(IsADirectoryError):
            os.read(fd, 10)
    finally:
        os.close(fd)
    with pytest.raises(IsADirectoryError):
        open(m.p("sub"), "rb")


def test_erofs_for_every_modifying_call(mount):
    m = mount(dataset())
    f, d = m.p("hello.txt"), m.p("sub")
    calls = {
        "open for write": lambda: os.open(f, os.O_WRONLY),
        "open O_TRUNC": lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        "create": lambda: os.open(m.p("new"), os.O_WRONLY | os.O_CREAT, 0o644),
        "mkdir": lambda: os.mkdir(m.p("newdir")),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(d),
        "rename": lambda: os.rename(f, m.p("renamed")),
        "chmod": lambda: os.chmod(f, 0o600),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, (1, 1)),
        "symlink": lambda: os.symlink("hello.txt", m.p("link")),
        "link": lambda: os.link(f, m.p("hard")),
        "truncate": lambda: os.truncate(f, 0),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
        "removexattr": lambda: os.removexattr(f, "user.etag"),
        "mknod": lambda: os.mknod(m.p("node"), stat.S_IFREG | 0o644),
    }
    for what, call in calls.items():
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS, what
    assert open(f, "rb").read() == b"hello, world\n"


def test_erofs_comes_from_the_fs_gate_without_ms_rdonly(mount):
    # Mounted without MS_RDONLY the kernel forwards the calls; fs raises ReadOnly -> EROFS.
    fs = dataset()
    m = mount(fs, read_only=False)
    for call in (lambda: os.mkdir(m.p("x")), lambda: os.unlink(m.p("hello.txt")),
                 lambda: os.rename(m.p("hello.txt"), m.p("y")), lambda: os.chmod(m.p("hello.txt"), 0o600),
                 lambda: os.symlink("a", m.p("l")), lambda: os.setxattr(m.p("hello.txt"), "user.a", b"1")):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EROFS
    assert fs.calls["mkdir"] == 1 and fs.calls["unlink"] == 1 and fs.calls["setattr"] == 1


def test_xattrs(mount):
    fs = dataset()
    m = mount(fs)
    f = m.p("hello.txt")
    assert os.getxattr(f, "user.etag") == b"abc123"
    assert os.getxattr(f, "user.empty") == b""
    assert sorted(os.listxattr(f)) == ["user.empty", "user.etag"]
    assert os.listxattr(m.p("sub")) == []
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.nope")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.getxattr(f, "security.capability")
    assert info.value.errno == errno.ENODATA
    # the size-0 probe and ERANGE, through the raw syscalls
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.getxattr(f.encode(), b"user.etag", None, 0) == 6
    buf = ctypes.create_string_buffer(3)
    assert libc.getxattr(f.encode(), b"user.etag", buf, 3) == -1
    assert ctypes.get_errno() == errno.ERANGE
    assert libc.listxattr(f.encode(), None, 0) == len(b"user.empty\0user.etag\0")
    assert libc.listxattr(f.encode(), buf, 3) == -1 and ctypes.get_errno() == errno.ERANGE
    # a missing xattr is ENODATA every time: the kernel did not switch getxattr off
    assert os.getxattr(f, "user.etag") == b"abc123"


def test_big_directory_readdirplus_paging(mount):
    fs = dataset(3000)
    m = mount(fs)
    before = m.counts
    names = os.listdir(m.p("many"))
    assert sorted(names) == [f"f{i:05d}" for i in range(3000)] and len(set(names)) == 3000
    pages = m.counts[P.READDIRPLUS] - before[P.READDIRPLUS]
    assert pages >= 3  # paged, not one giant reply

    # scandir + stat: the attributes came with READDIRPLUS, no LOOKUP or GETATTR
    before = m.counts
    calls_before = fs.calls.copy()
    sizes = {}
    with os.scandir(m.p("many")) as it:
        for entry in it:
            assert entry.is_file(follow_symlinks=False)
            sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    assert sizes["f00007"] == 5 * 407 and sizes["f02999"] == 5 * (400 + 2999 % 400)
    assert m.counts[P.LOOKUP] == before[P.LOOKUP]
    assert m.counts[P.GETATTR] == before[P.GETATTR]
    # the directory listing itself came from the kernel's dir cache (zero-message opendir)
    assert m.counts[P.READDIRPLUS] == before[P.READDIRPLUS]
    assert fs.calls["cached_lookup"] == calls_before["cached_lookup"]
    # every entry handed to the kernel was referenced once
    assert all(fs.refs[a.ino] >= 1 for a in fs.cached_readdir(fs.nodes[1].children["many"]))


def test_cold_readdir_and_lookup_paths(mount):
    fs = dataset(300, cache="never")
    m = mount(fs)
    assert len(os.listdir(m.p("many"))) == 300
    assert fs.calls["readdir"] >= 1 and fs.calls["lookup"] >= 1
    assert open(m.p("many", "f00042"), "rb").read() == b"00042" * 442
    assert fs.calls["read"] >= 1
    assert os.statvfs(m.path).f_blocks == 1000


def test_zero_message_opens_warm_pass_costs_nothing(mount):
    fs = dataset(1000, cache="lazy")
    m = mount(fs)
    paths = [m.p("many", f"f{i:05d}") for i in range(1000)]

    def read_all() -> list[bytes]:
        out = []
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            out.append(os.read(fd, 1 << 20))
            os.close(fd)
        return out

    first = read_all()
    assert first[5] == b"00005" * 405
    assert fs.calls["lookup"] >= 1000  # the first pass went cold
    assert m.counts[P.OPEN] == 1   # answered ENOSYS once, then no OPEN for the connection
    assert m.counts[P.RELEASE] == 0 and m.counts[P.FLUSH] <= 1

    fs.calls.clear()
    counts = m.counts
    assert read_all() == first
    assert fs.cold_calls() == 0
    assert fs.calls["cached_getattr"] == 0 and fs.calls["cached_read"] == 0
    assert m.counts == counts  # not one request reached the session

    # Python's open() adds only the isatty IOCTL, answered on the fast path
    for path in paths:
        with open(path, "rb") as f:
            f.read()
    assert fs.cold_calls() == 0 and fs.calls["cached_getattr"] == 0
    diff = [a - b for a, b in zip(m.counts, counts)]
    assert diff[P.IOCTL] == 1000 and sum(diff) == 1000


def test_negative_lookups(mount):
    fs = dataset(cache="never", negative_timeout=60.0)
    m = mount(fs)
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            os.stat(m.p("nothing-here"))
    assert fs.calls["lookup"] == 1  # the kernel cached the negative entry

    fs2 = dataset(cache="never")
    m2 = mount(fs2)
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            os.stat(m2.p("nothing-here"))
    assert fs2.calls["lookup"] == 3


def test_domain_errors_map_through_the_table(mount):
    fs = dataset()
    fs.fail = {"denied": AccessDenied("no"), "down": StoreUnavailable("timeout"),
               "bug": RuntimeError("boom")}
    m = mount(fs)
    for name, code in (("denied", errno.EACCES), ("down", errno.EIO), ("bug", errno.EIO)):
        with pytest.raises(OSError) as info:
            os.stat(m.p(name))
        assert info.value.errno == code
    assert os.stat(m.p("hello.txt")).st_size == 13  # still serving


def test_concurrent_reads_from_8_threads(mount):
    fs = dataset(800, cache="lazy", delay=0.002)
    m = mount(fs)
    expected = {f"f{i:05d}": (b"%05d" % i) * (400 + i % 400) for i in range(800)}

    def read(name: str) -> tuple[str, bytes]:
        with open(m.p("many", name), "rb") as f:
            return name, f.read()

    for _ in range(2):
        with ThreadPoolExecutor(8) as pool:
            got = dict(pool.map(read, sorted(expected)))
        assert got == expected
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda _: read("../sub/big.bin")[1] == bytes(range(256)) * (3 * 4096 + 7),
                            range(8)))


def test_interrupt_cancels_a_slow_request(mount):
    fs = dataset(cache="never", delay=10.0)
    m = mount(fs)
    proc = subprocess.Popen([sys.executable, "-c", f"import os; os.stat({m.p('hello.txt')!r})"],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while fs.cold_calls() == 0:  # the request is in the fs, waiting on its slow store
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(8) != 0
    assert time.monotonic() - started < 5  # not the 10 s the store would take
    assert m.counts[P.INTERRUPT] >= 1
    fs.delay = 0
    assert os.stat(m.p("hello.txt")).st_size == 13


# --------------------------------------------------------------------------- read-write

def rwfs() -> MemFS:
    fs = MemFS(read_only=False)
    fs.add_file("existing.txt", b"old contents")
    fs.add_dir("dir")
    return fs


def test_rw_create_write_read_rename_unlink(mount):
    fs = rwfs()
    m = mount(fs)
    path = m.p("dir", "new.bin")
    payload = os.urandom(3 * 1024 * 1024 + 123)
    with open(path, "wb") as f:
        f.write(payload)
    assert os.stat(path).st_size == len(payload)
    with open(path, "rb") as f:
        assert f.read() == payload
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"XYZ", 10)
        assert os.pread(fd, 5, 9) == payload[9:10] + b"XYZ" + payload[13:14]
        os.fsync(fd)
    finally:
        os.close(fd)
    assert fs.calls["write"] >= 4 and fs.calls["release"] >= 2 and fs.calls["fsync"] == 1

    # O_TRUNC via ATOMIC_O_TRUNC, append
    with open(m.p("existing.txt"), "w") as f:
        f.write("new")
    assert open(m.p("existing.txt")).read() == "new"
    with open(m.p("existing.txt"), "a") as f:
        f.write("+more")
    assert open(m.p("existing.txt")).read() == "new+more"

    os.rename(path, m.p("moved.bin"))
    assert sorted(os.listdir(m.path)) == ["dir", "existing.txt", "moved.bin"]
    assert os.listdir(m.p("dir")) == []
    assert os.stat(m.p("moved.bin")).st_size == len(payload)
    with pytest.raises(FileNotFoundError):
        os.stat(path)
    os.unlink(m.p("moved.bin"))
    with pytest.raises(FileNotFoundError):
        os.stat(m.p("moved.bin"))
    with pytest.raises(FileExistsError):
        os.open(m.p("existing.txt"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def test_rw_directories_links_attrs_xattrs(mount):
    fs = rwfs()
    m = mount(fs)
    os.mkdir(m.p("d2"), 0o750)
    assert stat.S_IMODE(os.stat(m.p("d2")).st_mode) == 0o750 & ~_umask()
    with open(m.p("d2", "f"), "w") as f:
        f.write("x")
    with pytest.raises(OSError) as info:
        os.rmdir(m.p("d2"))
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(IsADirectoryError):
        os.unlink(m.p("d2"))
    with pytest.raises(NotADirectoryError):
        os.rmdir(m.p("d2", "f"))
    os.unlink(m.p("d2", "f"))
    os.rmdir(m.p("d2"))
    assert "d2" not in os.listdir(m.path)

    os.symlink("existing.txt", m.p("link"))
    assert os.readlink(m.p("link")) == "existing.txt"
    assert stat.S_ISLNK(os.lstat(m.p("link")).st_mode)
    assert open(m.p("link")).read() == "old contents"
    with pytest.raises(OSError) as info:
        os.link(m.p("existing.txt"), m.p("hard"))
    assert info.value.errno == errno.EOPNOTSUPP

    f = m.p("existing.txt")
    os.chmod(f, 0o600)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    os.utime(f, (1_600_000_000.5, 1_600_000_001.75))
    assert os.stat(f).st_mtime == 1_600_000_001.75
    before = time.time()
    os.utime(f)  # FATTR_MTIME_NOW
    assert os.stat(f).st_mtime >= before - 1
    os.truncate(f, 3)
    assert open(f, "rb").read() == b"old"
    os.truncate(f, 5)
    assert open(f, "rb").read() == b"old\0\0"

    os.setxattr(f, "user.color", b"blue")
    assert os.getxattr(f, "user.color") == b"blue"
    assert os.listxattr(f) == ["user.color"]
    os.removexattr(f, "user.color")
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.color")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.removexattr(f, "user.color")
    assert info.value.errno == errno.ENODATA

    os.mknod(m.p("plain"), stat.S_IFREG | 0o644)
    assert os.stat(m.p("plain")).st_size == 0
    with pytest.raises(PermissionError):
        os.mkfifo(m.p("fifo"))

    # renameat2(RENAME_NOREPLACE) -> RENAME2 with flags
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):
        AT_FDCWD = -100
        rc = libc.renameat2(AT_FDCWD, m.p("plain").encode(), AT_FDCWD, f.encode(), 1)
        assert rc == -1 and ctypes.get_errno() == errno.EEXIST
    assert os.statvfs(m.path).f_bavail == 400
    assert m.counts[P.OPENDIR] >= 1 and m.counts[P.OPEN] >= 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- lifecycle

def test_unmount_ends_serve(tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    fs = dataset()
    server = FuseServer(fs, str(mp))
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, args=(ready.set,), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        assert fmount.find_mount(str(mp)).fstype == "fuse.pailfs"
        assert open(mp / "hello.txt", "rb").read() == b"hello, world\n"
        fmount.unmount(str(mp))
        thread.join(10)
        assert not thread.is_alive()
        assert fmount.find_mount(str(mp)) is None
    finally:
        server.stop()
        thread.join(10)


def test_lazy_umount_with_open_file_ends_serve_after_close(tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    fs = dataset(cache="lazy")
    server = FuseServer(fs, str(mp))
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.serve(ready.set)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        fd = os.open(mp / "sub" / "big.bin", os.O_RDONLY)
        subprocess.run(["umount", "-l", str(mp)], check=True)
        assert fmount.find_mount(str(mp)) is None
        assert len(os.read(fd, 100000)) == 100000  # still served for the open file
        assert len(os.pread(fd, 100000, 200000)) == 100000  # and still, after the detach settled
        assert thread.is_alive()
        os.close(fd)
        thread.join(10)
        assert not thread.is_alive() and not errors
    finally:
        server.stop()
        thread.join(10)


def test_stop_unmounts(tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    server = FuseServer(dataset(), str(mp))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while server.session is None or not server.session.initialized.is_set():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.stop()
    thread.join(10)
    assert not thread.is_alive() and fmount.find_mount(str(mp)) is None
    assert os.listdir(mp) == []


def test_fusermount3_path(mount):
    assert fmount.shutil.which("fusermount3"), "fusermount3 missing: `make setup` installs Debian fuse3"
    m = mount(dataset(), use_fusermount=True)
    assert open(m.p("hello.txt"), "rb").read() == b"hello, world\n"
    info = fmount.find_mount(m.path)
    assert info is not None and info.fstype == "fuse.pailfs" and "ro" in info.mount_options.split(",")


def test_mount_checks(tmp_path):
    with pytest.raises(MountError, match="does not exist"):
        fmount.mount(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(MountError, match="not a directory"):
        fmount.mount(str(tmp_path / "file"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(MountError, match="not empty"):
        fmount.mount(str(full))
    with pytest.raises(MountError, match="not mounted"):
        fmount.unmount(str(full))


def test_already_mounted_and_stale_mount(tmp_path, mount):
    m = mount(dataset())
    with pytest.raises(MountError, match="already a mount point"):
        fmount.mount(m.path)
    assert not fmount.is_stale(m.path)

    # A server that dies without unmounting leaves a stale mount (ENOTCONN).
    mp = tmp_path / "stale"
    mp.mkdir()
    fd = fmount.mount(str(mp))
    os.close(fd)
    try:
        assert fmount.is_stale(str(mp))
        with pytest.raises(MountError, match="stale"):
            fmount.check_mountpoint(str(mp))
    finally:
        fmount.unmount(str(mp), lazy=True)
    assert not fmount.is_stale(str(mp)) and fmount.find_mount(str(mp)) is None


def test_init_negotiation(mount):
    m = mount(dataset())
    s = m.server.session
    assert s.proto_minor == P.KERNEL_MINOR_VERSION
    assert s.init_flags & P.DO_READDIRPLUS and not s.init_flags & P.READDIRPLUS_AUTO
    assert not s.init_flags & P.AUTO_INVAL_DATA  # read-only: keep pages from epoch to epoch
    m2 = mount(rwfs())
    assert m2.server.session.init_flags & P.AUTO_INVAL_DATA
    assert m2.server.session.init_flags & P.ATOMIC_O_TRUNC
    info = fmount.find_mount(m.path)
    assert set(info.mount_options.split(",")) >= {"ro", "nosuid", "nodev", "noatime"}


def test_invalidation_notifications(mount):
    fs = dataset()
    m = mount(fs)
    path = m.p("hello.txt")
    assert open(path, "rb").read() == b"hello, world\n"
    ino = os.stat(path).st_ino
    fs.nodes[ino].data = b"HELLO, WORLD\n"  # changed behind the kernel's back
    assert open(path, "rb").read() == b"hello, world\n"  # the page cache is kept
    m.server.session.invalidate_inode(ino)
    deadline = time.monotonic() + 5
    while open(path, "rb").read() != b"HELLO, WORLD\n":
        assert time.monotonic() < deadline
        time.sleep(0.02)

    del fs.nodes[1].children["hello.txt"]
    fs._entries.clear()
    assert os.path.exists(path)  # the kernel still has the entry
    m.server.session.invalidate_entry(1, "hello.txt")
    deadline = time.monotonic() + 5
    while os.path.exists(path):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_stop_with_open_file_returns_after_grace(tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    server = FuseServer(dataset(), str(mp), stop_grace=0.5)
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, args=(ready.set,), daemon=True)
    thread.start()
    assert ready.wait(10)
    fd = os.open(mp / "hello.txt", os.O_RDONLY)
    try:
        started = time.monotonic()
        server.stop()
        thread.join(10)
        assert not thread.is_alive() and time.monotonic() - started < 5
        assert fmount.find_mount(str(mp)) is None
    finally:
        os.close(fd)
    assert server.session.finished.wait(10)  # the last close ended the connection
