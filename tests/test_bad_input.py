"""Bad input: fuzzed `-o` strings and URLs, odd key names through `pailfs cp` and
both mounts, unsafe passwd files, stale mountpoints, a sparse 5 GiB file.

Already covered elsewhere (not repeated here): a wrong secret, a missing bucket,
a missing / non-directory / non-empty / already-mounted mountpoint and bad -o
values for `pailfs mount` (test_mount_ro.py::test_mount_failures_are_one_clear_line,
::test_already_mounted_mountpoint_is_refused); a wrong secret, an unsafe passwd
file, usage errors and a dead endpoint for `pailfs cp/ls`
(test_cli_objects.py); passwd file parsing (test_credentials.py).
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import time

import pytest
from hypothesis import example, given, settings, strategies as st

from mounts import get_object, is_mounted, list_keys, mounted, pailfs, put_objects
from pailfs.config import GENERIC_MOUNT_FLAGS, OPTIONS, parse_options
from pailfs.errors import BadCredentials, BadOption
from pailfs.store import open_store, parse_url
from pailfs.store.base import ObjectStore
from pailfs.store.url import StoreURL

pytestmark = pytest.mark.timeout(180)
MiB = 1024 * 1024
GiB = 1024 * MiB


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pailfs: "), err
    return lines[0]


# ==================================================================================
# fuzzing: -o option strings and URLs
# ==================================================================================
NAMES = sorted({n for o in OPTIONS for n in (o.name, *o.aliases)} | set(GENERIC_MOUNT_FLAGS))
VALUES = ["", "0", "1", "-1", "-0", "022", "0777", "0888", "true", "off", "nan", "inf", "-inf", "1e309", "1e-300",
          "1e20", "99999999999999999999", "2147483648", "0x10", "1_000", "١٢", " 5 ", "5 MB", "http://127.0.0.1:1",
          "https://h:99999", "ftp://x", "=", "a=b", "\x00", "\u202e", "/tmp/x", "~/f", "é" * 3]
token = st.one_of(
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from(NAMES), st.one_of(st.sampled_from(VALUES), st.text(max_size=12))),
    st.sampled_from(NAMES),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=15),
)
spec = st.lists(token, max_size=6).map(",".join)


@settings(max_examples=400, deadline=None)
@given(specs=st.lists(spec, max_size=3))
@example(specs=["ca_file=0"])  # was a FileNotFoundError from obstore's client options
@example(specs=["ca_file=/"])
def test_option_strings_parse_or_fail_with_one_line_bad_option(specs):
    """parse_options: Options or BadOption (one line); and parsed options build a store
    (open_store: a store or BadOption/BadCredentials, never another exception)."""
    try:
        opts = parse_options(["url=http://127.0.0.1:9", *specs], env={})
    except BadOption as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    try:
        store = open_store("s3://bucket/prefix", opts)
    except (BadOption, BadCredentials) as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(store, ObjectStore)


@pytest.mark.parametrize("spec", ["readwrite_timeout=nan", "connect_timeout=inf", "readwrite_timeout=1e309",
                                  "readwrite_timeout=1e20", "parallel_count=99999999999999999999",
                                  "multipart_size=2147483648", "retries=1e3"])
def test_absurd_numbers_are_bad_options_not_crashes(spec, s3_env):
    """Found by the fuzzer: these parsed, then crashed the store with OverflowError/ValueError
    (a traceback from `pailfs ls`, 'OverflowError: ...' from `pailfs mount`)."""
    with pytest.raises(BadOption, match="bad value for option"):
        parse_options([spec], env={})
    line = one_line_error(pailfs("ls", "s3://bucket", "-o", spec, timeout=60))
    assert "bad value for option" in line


@pytest.mark.parametrize("text, bucket, path", [
    ("data", "data", ""), ("data/", "data", ""), ("data/train/x.bin", "data", "train/x.bin"),
    ("data:/train", "data", "train"), ("s3://data/train/", "data", "train/"),
])
def test_bucket_forms_users_type(text, bucket, path):
    """What `pailfs ls` prints (bucket/prefix) can be pasted back into any command."""
    assert parse_url(text) == StoreURL("s3", bucket, path)


url_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.builds(lambda s, b, p: f"{s}{b}{p}",
              st.sampled_from(["s3://", "S3://", "oss://", "file://", "gs://", "", "s3:/", "://"]),
              st.text(alphabet="abcXYZ019.-_:/@%?# é", max_size=12),
              st.text(alphabet="ab/..%2e \\?#é\t", max_size=12)),
)


@settings(max_examples=400, deadline=None)
@given(text=url_text)
def test_urls_parse_or_fail_with_one_line_bad_option(text):
    try:
        loc = parse_url(text)
    except BadOption as exc:
        assert "\n" not in str(exc)
        loc = None
    else:
        assert isinstance(loc, StoreURL) and loc.scheme in ("s3", "file")
    try:
        store = open_store(text, url="http://127.0.0.1:9")  # nothing is sent
    except (BadOption, BadCredentials) as exc:
        assert "\n" not in str(exc)
        assert loc is None or isinstance(exc, BadCredentials)
        return
    assert isinstance(store, ObjectStore) and loc is not None


# ==================================================================================
# key names through `pailfs cp` and the mounts
# ==================================================================================
LONG_KEY = "/".join(["d" * 200] * 5)
LONG_KEY += "/" + "e" * (1024 - len(LONG_KEY) - 1)  # 1,024 bytes, no name over 255 bytes
assert len(LONG_KEY.encode()) == 1024
GOOD_KEYS = {
    "with space/ünïcödé 数据.txt": b"unicode and spaces",
    "q?x=1#frag": b"query-like",
    "%2e%2e/pct": b"percent-encoded dots are just characters",
    "a..b/...": b"dots that are not a segment of their own",
    LONG_KEY: b"a key of 1024 bytes",
}


@pytest.fixture(scope="module")
def keys_bucket(seaweed, tmp_path_factory):
    """Every GOOD_KEY uploaded with `pailfs cp` (checked in the test below)."""
    from conftest import make_bucket
    return make_bucket(seaweed)


def test_cp_odd_key_names(keys_bucket, s3_env, tmp_path):
    url = f"s3://{keys_bucket}"
    src = tmp_path / "src.bin"
    for key, data in GOOD_KEYS.items():
        src.write_bytes(data)
        proc = pailfs("cp", "-q", str(src), f"{url}/{key}")
        assert proc.returncode == 0, (key, proc.stderr)
        down = tmp_path / "down.bin"
        assert pailfs("cp", "-q", f"{url}/{key}", str(down)).returncode == 0
        assert down.read_bytes() == data and get_object(url, key) == data
    assert sorted(list_keys(url)) == sorted(GOOD_KEYS)

    # a trailing '/' means "into this prefix", as in ossutil and aws s3 cp
    src.write_bytes(b"into a prefix")
    assert pailfs("cp", "-q", str(src), f"{url}/prefix/").returncode == 0
    assert get_object(url, "prefix/src.bin") == b"into a prefix"


@pytest.mark.parametrize("key, expected", [
    ("a/../b", "'.' or '..' path segment"),
    ("./x", "'.' or '..' path segment"),
    ("a/./b", "'.' or '..' path segment"),
    ("..", "'.' or '..' path segment"),
    (LONG_KEY + "x", "KeyTooLong"),               # 1,025 bytes
    ("n" * 256, "KeyTooLong"),                    # SeaweedFS: a name of more than 255 bytes
    ("ctl\x01char", "control characters"),
])
def test_cp_refuses_keys_that_cannot_be_stored(key, expected, keys_bucket, s3_env, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    before = list_keys(f"s3://{keys_bucket}")
    line = one_line_error(pailfs("cp", str(src), f"s3://{keys_bucket}/{key}"))
    assert expected in line
    assert list_keys(f"s3://{keys_bucket}") == before


@pytest.mark.parametrize("key, seaweed_key", [("a//b", "a/b"), ("back\\slash", "back/slash")])
def test_cp_keys_the_server_rewrites(key, seaweed_key, bucket, s3_env, tmp_path):
    """'a//b' and 'back\\slash' are valid S3 keys and pailfs sends them as they are
    (through S3Api where obstore would collapse '//'). SeaweedFS itself stores them
    as 'a/b' and 'back/slash'; AWS S3 keeps them. Mounts never show keys with empty
    segments (docs/semantics.md)."""
    src = tmp_path / "f"
    src.write_bytes(b"rewritten")
    assert pailfs("cp", "-q", str(src), f"s3://{bucket}/{key}").returncode == 0
    assert list_keys(f"s3://{bucket}") in ([key], [seaweed_key])


def test_ro_mount_shows_odd_names_with_the_right_bytes(keys_bucket, s3_env, tmp_path):
    url = f"s3://{keys_bucket}"
    put_objects(url, GOOD_KEYS)  # also when test_cp_odd_key_names did not run first
    with mounted(keys_bucket, tmp_path / "mnt", "ro,kernel_cache") as mnt:
        for key, data in GOOD_KEYS.items():
            assert (mnt / key).read_bytes() == data, key
        assert "ünïcödé 数据.txt" in os.listdir(mnt / "with space")
        with pytest.raises(OSError) as info:
            os.stat(os.path.join(bytes(mnt), b"bad\xff\xfe"))
        assert info.value.errno in (errno.EINVAL, errno.ENOENT)


def test_rw_mount_name_limits(bucket, s3_env, tmp_path):
    url = f"s3://{bucket}"
    with mounted(bucket, tmp_path / "mnt", "stat_cache_expire=60") as mnt:
        root = bytes(mnt)
        ok = {b"n" * 255: b"255 bytes", "ünï 数据 sp".encode(): b"utf-8", b"a..b": b"x", b"...": b"y"}
        for name, data in ok.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
            assert get_object(url, name.decode()) == data
        refused = {
            b"n" * 256: errno.ENAMETOOLONG,        # was: open() fine, close() EIO (the store refused the key)
            b"bad\xff\xfename": errno.EINVAL,      # names are UTF-8
        }
        for name, code in refused.items():
            with pytest.raises(OSError) as info:
                open(os.path.join(root, name), "wb").close()
            assert info.value.errno == code, (name, info.value)
        with pytest.raises(OSError) as info:
            os.mkdir(os.path.join(root, b"d" * 256))
        assert info.value.errno == errno.ENAMETOOLONG
        with pytest.raises(OSError) as info:
            os.rename(os.path.join(root, b"a..b"), os.path.join(root, b"r" * 256))
        assert info.value.errno == errno.ENAMETOOLONG
        assert sorted(list_keys(url)) == sorted(n.decode() for n in ok)
        assert get_object(url, "a..b") == b"x"


# ==================================================================================
# credentials files, stale mountpoints
# ==================================================================================
def test_mount_refuses_a_passwd_file_others_can_read(bucket, s3_env, tmp_path):
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    passwd = tmp_path / "passwd-pailfs"
    passwd.write_text(f"{bucket}:{s3_env['AWS_ACCESS_KEY_ID']}:{secret}\n")
    passwd.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = pailfs("mount", bucket, str(mnt), "-o", f"ro,passwd_file={passwd}", env=env, timeout=60)
    line = one_line_error(proc)
    assert "mode 0644" in line and f"chmod 600 {passwd}" in line
    assert secret not in proc.stderr.decode() + proc.stdout.decode()
    assert not is_mounted(mnt)
    passwd.chmod(0o600)  # the fix the message names works
    with mounted(bucket, mnt, f"ro,passwd_file={passwd}", env=env):
        assert os.listdir(mnt) == []


def test_stale_mountpoint_is_named_and_cleaned_by_umount(bucket, s3_env, tmp_path):
    """A mount whose process was killed answers ENOTCONN / ECONNABORTED to every call."""
    from pailfs.procs import pids_with_argument

    put_objects(f"s3://{bucket}", {"f": b"data"})
    mnt = tmp_path / "mnt"
    with mounted(bucket, mnt, "ro") as live:
        daemons = pids_with_argument(str(live), words=("mount", "-f"))
        assert daemons
        for pid in daemons:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pids_with_argument(str(live), words=("mount", "-f")) and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(OSError) as info:
            os.listdir(live)
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        line = one_line_error(pailfs("mount", bucket, str(mnt), "-o", "ro", timeout=60))
        assert "stale FUSE mount" in line and f"pailfs umount {mnt}" in line
    # mounted() ran `pailfs umount` on the dead mount: the directory is usable again
    assert not is_mounted(mnt)
    with mounted(bucket, mnt, "ro"):
        assert (mnt / "f").read_bytes() == b"data"


# ==================================================================================
# a sparse 5 GiB file on the read-write mount
# ==================================================================================
def test_sparse_5gib_file_is_staged_sparse(bucket, s3_env, tmp_path):
    """ftruncate to 5 GiB costs no local disk (the staging file is sparse) and reads
    back zeros; the object is uploaded at close with whatever size the file has then.
    (Closing at 5 GiB would upload 5 GiB of zeros: correct, but too slow for the suite.)"""
    staging = tmp_path / "staging"
    url = f"s3://{bucket}"
    with mounted(bucket, tmp_path / "mnt", f"stat_cache_expire=60,staging_dir={staging}") as mnt:
        path = mnt / "sparse.bin"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 5 * GiB)
            assert os.fstat(fd).st_size == 5 * GiB
            assert os.stat(path).st_size == 5 * GiB
            os.pwrite(fd, b"tail-bytes", 5 * GiB - 10)
            assert os.pread(fd, 10, 5 * GiB - 10) == b"tail-bytes"
            assert os.pread(fd, 4096, 3 * GiB) == bytes(4096)
            used = sum(p.stat().st_blocks * 512 for p in staging.rglob("*") if p.is_file())
            assert used < 16 * MiB, f"staging uses {used} bytes for a sparse 5 GiB file"
            os.pwrite(fd, b"head", 0)
            os.ftruncate(fd, MiB)
        finally:
            os.close(fd)
        data = get_object(url, "sparse.bin")
        assert data is not None and len(data) == MiB
        assert data[:4] == b"head" and data[4:] == bytes(MiB - 4)
    assert not list(staging.rglob("ino*"))  # nothing left staged


def test_full_staging_disk_is_enospc_not_a_partial_object(bucket, s3_env, tmp_path):
    """ensure_diskfree larger than the free space: writes fail with ENOSPC at once."""
    free_mb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize // MiB
    url = f"s3://{bucket}"
    put_objects(url, {"model.bin": b"old model"})
    opts = f"stat_cache_expire=60,staging_dir={tmp_path / 'st'},ensure_diskfree={free_mb + 1024}"
    with mounted(bucket, tmp_path / "mnt", opts) as mnt:
        with pytest.raises(OSError) as info:
            with open(mnt / "model.bin", "r+b") as f:
                f.write(b"new model bytes")
                f.flush()
        assert info.value.errno == errno.ENOSPC
    assert get_object(url, "model.bin") == b"old model"
    assert hashlib.sha256(get_object(url, "model.bin")).hexdigest()


# ==================================================================================
# one line, never a traceback: the sweep of every command (#14.13)
# ==================================================================================
@pytest.mark.parametrize("option, reason", [
    ("logfile=/nonexistent/x", "directory /nonexistent does not exist"),
    ("logfile={tmp}", "is a directory"),
    ("staging_dir={file}", "is not a directory"),
    ("use_cache={file}/sub", "which is not a directory"),
    ("url=http://[::1", "bad endpoint 'http://[::1'"),
    ("url=http://127.0.0.1:99999", "bad endpoint 'http://127.0.0.1:99999'"),
    ("url=ftp://host", "the scheme must be http or https"),
])
def test_mount_options_used_later_fail_before_the_mount_detaches(option, reason, bucket, s3_env, tmp_path):
    """logfile, staging_dir and use_cache are only used once the mount runs: a bad one
    was a traceback (logfile) or a raw FileExistsError / ValueError after the fork."""
    from pailfs.procs import pids_with_argument

    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    spec = option.format(tmp=tmp_path, file=afile)
    line = one_line_error(pailfs("mount", bucket, str(mnt), "-o", spec, timeout=60))
    assert reason in line
    assert not is_mounted(mnt) and not pids_with_argument(str(mnt), words=("mount", "-f"))
    assert afile.read_bytes() == b"x"


@pytest.mark.parametrize("args", [
    ["server", "start", "--port", "http"],
    ["server", "start", "--port", "99999"],
    ["cp", "-j", "0", "a", "s3://b/k"],
    ["ckpt", "latest"],
    ["ckpt", "prune", "s3://bucket/x", "--keep", "-1"],
    ["k8s", "manifests", "--bucket", "b"],
    ["bench", "--latency-ms", "-1"],
    ["warmup"],
    ["stats", "--no-such-flag", "/mnt"],
    ["mount", "bucket"],
    ["umount"],
    ["no-such-command"],
    ["ls", "-o"],
    ["demo", "--epochs", "0"],
])
def test_usage_errors_of_every_command_are_one_line(args, tmp_path):
    """Typer's usage errors were a framed box of 5+ lines on stderr."""
    proc = pailfs(*args, "--data-dir", str(tmp_path / "srv")) if args[:2] == ["server", "start"] else pailfs(*args)
    err = proc.stderr.decode()
    lines = err.strip().splitlines()
    assert proc.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("pailfs: "), err
    assert "Traceback" not in err


def test_local_paths_that_cannot_be_written_are_one_line(bucket, s3_env, tmp_path):
    """/proc/x: a directory that exists and cannot hold anything; `ckpt restore` died
    with a traceback (FileNotFoundError from mkdir)."""
    from pailfs import Checkpointer

    url = f"s3://{bucket}"
    put_objects(url, {"dir/f.bin": b"data"})
    with Checkpointer(f"{url}/ckpt") as ck:
        ck.save(1, {"w.bin": b"weights"})
    for args in (["ckpt", "restore", f"{url}/ckpt", "/proc/x"], ["cp", f"{url}/dir/f.bin", "/proc/x"],
                 ["cp", "-r", f"{url}/dir", "/proc/x"], ["demo", "--out", "/proc/x/out"]):
        line = one_line_error(pailfs(*args, timeout=60))
        assert "/proc/x" in line and "No such file or directory" in line, (args, line)


@pytest.mark.parametrize("args, expected", [
    (["--bucket", "ml"], "bucket name 'ml' must be 3-63"),
    (["--url", "http://[::1"], "bad endpoint 'http://[::1'"),
    (["--command", "python 'train.py"], "bad value for --command"),
])
def test_k8s_manifests_refuse_bad_values(args, expected):
    base = {"--bucket": "tf-bucket", "--url": "https://oss-cn-beijing.aliyuncs.com", "--data-path": "/train/data",
            "--checkpoint-prefix": "logs", "--image": "trainer:1"}
    base.update(dict(zip(args[::2], args[1::2])))
    proc = pailfs("k8s", "manifests", *[x for kv in base.items() for x in kv])
    assert expected in one_line_error(proc)
    assert proc.stdout == b""


def test_endpoint_flag_is_checked_like_the_url_option(s3_env):
    line = one_line_error(pailfs("ls", "s3://bucket", "--endpoint", "http://[::1"))
    assert "bad endpoint 'http://[::1'" in line


# ==================================================================================
# umount unmounts only pailfs mounts (#14.7)
# ==================================================================================
@pytest.mark.mount  # mounts a tmpfs: root
def test_umount_refuses_what_is_not_a_pailfs_mount(tmp_path):
    import subprocess

    plain = tmp_path / "plain"
    plain.mkdir()
    assert "is not mounted" in one_line_error(pailfs("umount", str(plain)))
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "pailfs-test-tmpfs", str(other)], check=True)
    try:
        (other / "theirs.txt").write_text("someone else's mount")
        for args in (["umount", str(other)], ["umount", "-l", str(other)]):
            line = one_line_error(pailfs(*args))
            assert "is not a pailfs mount (it is tmpfs)" in line
            assert is_mounted(other) and (other / "theirs.txt").read_text() == "someone else's mount"
    finally:
        subprocess.run(["umount", str(other)], check=True)
