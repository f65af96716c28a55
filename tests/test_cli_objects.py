"""`pailfs ls/stat/cp/rm/mb/rb` run as a user runs them: the installed command in a
subprocess, against the real SeaweedFS. Assertions are on exit codes, stdout,
stderr and the bytes that arrive."""

from __future__ import annotations

import asyncio
import filecmp
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_bucket

PAILFS = str(Path(sys.executable).parent / "pailfs")
MiB = 1024 * 1024
LS_OBJECT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +(\d+)  (.*)$")
LS_PREFIX = re.compile(r"^ +DIR  (.*)$")


def pailfs(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PAILFS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The failure contract: non-zero exit, exactly one 'pailfs: ...' line on stderr."""
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pailfs: "), proc.stderr
    return lines[0]


def ls_keys(stdout: str) -> dict[str, int]:
    out = {}
    for line in stdout.splitlines():
        match = LS_OBJECT.match(line)
        assert match, line
        out[match.group(2)] = int(match.group(1))
    return out


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "empty": b"",
        "sub/b.bin": os.urandom(3000),
        "sub/deeper/c d.txt": b"with a space",
        "sub/deeper/ünï 日本.txt": "unicode".encode(),
        "plus+percent%=.cfg": b"odd name",
        "big/large.bin": os.urandom(11 * MiB + 5),  # three parts at multipart_size=5
    }
    for i in range(40):
        files[f"many/f{i:03d}.dat"] = os.urandom(2048 + i)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_cp_tree_up_ls_and_back_down(s3_env, bucket, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)

    up = pailfs("cp", "-r", str(src), f"s3://{bucket}/data", "-j", "8", "-o", "multipart_size=5,parallel_count=4")
    assert up.returncode == 0, up.stderr
    assert f"copied {len(files)} files" in up.stderr

    listed = pailfs("ls", "-r", f"s3://{bucket}/data/")
    assert listed.returncode == 0, listed.stderr
    assert ls_keys(listed.stdout) == {f"data/{rel}": len(data) for rel, data in files.items()}

    top = pailfs("ls", f"s3://{bucket}/data/")
    assert top.returncode == 0
    prefixes = [m.group(1) for m in map(LS_PREFIX.match, top.stdout.splitlines()) if m]
    assert prefixes == ["data/big/", "data/many/", "data/sub/"]
    assert set(ls_keys("\n".join(l for l in top.stdout.splitlines() if not LS_PREFIX.match(l)))) == {
        "data/a.txt", "data/empty", "data/plus+percent%=.cfg"}

    down = tmp_path / "down"
    back = pailfs("cp", "-r", f"s3://{bucket}/data", str(down), "-o", "multipart_size=5")
    assert back.returncode == 0, back.stderr
    assert same_tree(src, down)
    assert not [p for p in down.rglob("*pailfs-*")]  # no temp files left


def test_single_file_cp_stat_rm(s3_env, bucket, tmp_path):
    src = tmp_path / "model.pt"
    src.write_bytes(b"weights" * 1000)

    assert pailfs("cp", str(src), f"s3://{bucket}/ckpt/").returncode == 0  # into a "directory"
    assert pailfs("cp", str(src), f"s3://{bucket}/ckpt/renamed.pt").returncode == 0

    stat = pailfs("stat", f"s3://{bucket}/ckpt/model.pt")
    assert stat.returncode == 0, stat.stderr
    assert f"s3://{bucket}/ckpt/model.pt" in stat.stdout and "size:     7000" in stat.stdout
    assert "prefix" in pailfs("stat", f"s3://{bucket}/ckpt").stdout

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert pailfs("cp", f"s3://{bucket}/ckpt/renamed.pt", str(out_dir)).returncode == 0
    assert (out_dir / "renamed.pt").read_bytes() == src.read_bytes()

    prefix_without_r = pailfs("cp", f"s3://{bucket}/ckpt", str(out_dir))
    assert "use cp -r" in one_line_error(prefix_without_r)

    assert pailfs("rm", f"s3://{bucket}/ckpt/model.pt").returncode == 0
    again = pailfs("rm", f"s3://{bucket}/ckpt/model.pt")
    assert "no such key" in one_line_error(again)
    assert pailfs("rm", "-r", f"s3://{bucket}/ckpt").returncode == 0
    assert pailfs("ls", "-r", f"s3://{bucket}").stdout == ""


def test_bucket_to_bucket_copy_and_bucket_commands(s3_env, seaweed, bucket, tmp_path):
    other = make_bucket(seaweed)
    (tmp_path / "t").mkdir()
    for i in range(5):
        (tmp_path / "t" / f"{i}.txt").write_text(f"file {i}")
    assert pailfs("cp", "-r", str(tmp_path / "t"), f"s3://{bucket}/p").returncode == 0

    one = pailfs("cp", f"s3://{bucket}/p/0.txt", f"s3://{other}/copied.txt")
    assert one.returncode == 0, one.stderr
    tree = pailfs("cp", "-r", f"s3://{bucket}/p", f"s3://{other}/q/")
    assert tree.returncode == 0, tree.stderr
    assert set(ls_keys(pailfs("ls", "-r", f"s3://{other}").stdout)) == {
        "copied.txt", *(f"q/{i}.txt" for i in range(5))}
    assert pailfs("cp", f"s3://{other}/q/3.txt", str(tmp_path / "3.txt")).returncode == 0
    assert (tmp_path / "3.txt").read_text() == "file 3"

    new = f"mb-{os.getpid()}-{int(time.time())}"
    assert pailfs("mb", f"s3://{new}").returncode == 0, "mb"
    assert f"s3://{new}" in pailfs("ls", "s3://").stdout
    assert "already exists" in one_line_error(pailfs("mb", f"s3://{new}"))
    assert pailfs("cp", str(tmp_path / "3.txt"), f"s3://{new}/x").returncode == 0
    assert "not empty" in one_line_error(pailfs("rb", f"s3://{new}"))
    assert pailfs("rb", "--force", f"s3://{new}").returncode == 0
    assert f"s3://{new}" not in pailfs("ls", "s3://").stdout


# --- failures: one clear line, non-zero exit, no secret -------------------------------
def test_missing_bucket_and_key(s3_env, bucket, tmp_path):
    assert "no such bucket 'no-such-bucket-cli'" in one_line_error(pailfs("ls", "s3://no-such-bucket-cli/x"))
    assert "no such key" in one_line_error(pailfs("cp", f"s3://{bucket}/absent.bin", str(tmp_path / "x")))
    assert "no such key" in one_line_error(pailfs("stat", f"s3://{bucket}/absent.bin"))
    assert not (tmp_path / "x").exists()


def test_wrong_credentials_never_show_the_secret(s3_env, bucket, tmp_path):
    secret = "NotTheRightSecret+abc/1234567890XYZ"
    proc = pailfs("ls", f"s3://{bucket}", env={"AWS_SECRET_ACCESS_KEY": secret})
    line = one_line_error(proc)
    assert "access denied" in line and "AWS_ACCESS_KEY_ID" in line
    assert secret not in proc.stderr + proc.stdout

    (tmp_path / "f").write_text("x")
    passwd = tmp_path / "passwd"
    passwd.write_text(f"# comment\n{bucket}:{s3_env['AWS_ACCESS_KEY_ID']}:{secret}\n")
    passwd.chmod(0o600)
    up = pailfs("cp", str(tmp_path / "f"), f"s3://{bucket}/f", "-o", f"passwd_file={passwd}")
    assert "access denied" in one_line_error(up) and str(passwd) in up.stderr
    assert secret not in up.stderr + up.stdout

    passwd.chmod(0o644)
    unsafe = one_line_error(pailfs("ls", f"s3://{bucket}", "-o", f"passwd_file={passwd}"))
    assert "mode 0644" in unsafe and "chmod 600" in unsafe and secret not in unsafe


def test_dead_endpoint_fails_within_the_timeout(s3_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    line = one_line_error(pailfs("ls", "s3://somebucket", "--endpoint", f"http://127.0.0.1:{port}"))
    assert "cannot reach" in line and str(port) in line
    assert time.monotonic() - started < 15

    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        proc = pailfs("cp", "s3://somebucket/k", "/tmp/never", "--endpoint",
                      f"http://127.0.0.1:{silent.getsockname()[1]}",
                      "-o", "connect_timeout=1,readwrite_timeout=2,retries=0")
        assert "timed out" in one_line_error(proc)
        assert time.monotonic() - started < 15


@pytest.mark.parametrize("args, expected", [
    (["ls", "s3://Bad_Bucket/x"], "malformed URL"),
    (["ls", "gs://bucket"], "unknown scheme"),
    (["cp", "a", "b"], "one side must be an s3://"),
    (["ls", "s3://bucket", "-o", "nosuchopt"], "unknown option 'nosuchopt'; valid options: url, region"),
    (["cp", "-r", "s3://bucket", ".", "-o", "parallel_count=0"], "bad value for option 'parallel_count'"),
    (["mb", "s3://bucket/with/key"], "give a bucket, not a key"),
])
def test_usage_errors_are_one_line(s3_env, args, expected):
    assert expected in one_line_error(pailfs(*args))


def test_local_source_errors(s3_env, bucket, tmp_path):
    assert "no such local file" in one_line_error(pailfs("cp", str(tmp_path / "nope"), f"s3://{bucket}/x"))
    (tmp_path / "d").mkdir()
    assert "use cp -r" in one_line_error(pailfs("cp", str(tmp_path / "d"), f"s3://{bucket}/x"))


def test_no_endpoint_configured(s3_env, bucket, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k not in ("PAILFS_ENDPOINT", "URL")}
    proc = subprocess.run([PAILFS, "ls", f"s3://{bucket}"], capture_output=True, text=True, env=env, timeout=60)
    assert "no endpoint" in one_line_error(proc)


# ==================================================================================
# hostile keys in listings: ls, cp -r (download, upload), rm -r (#14.14)
# ==================================================================================
HOSTILE = {  # object in the bucket -> the name the LIST answer gives it (the proxy renames)
    "t/h1": "t/../../escape.txt", "t/h2": "t/./dot", "t/h3": "t/a//b", "t/h4": "t//abs",
    "t/h5": "t/sub/..", "t/h6": "t/withdata/",
}
REAL = {"t/good.txt": b"good", "t/ctl\x1b[31mred": b"escape sequence in the name", "t/x": b"file x",
        "t/x/y": b"under x", **{k: b"hostile " + k.encode() for k in HOSTILE}}


@pytest.fixture
def hostile(s3_env, seaweed, bucket):
    """A bucket holding REAL, seen through a proxy whose listings show HOSTILE names
    (keys SeaweedFS would never store, an S3 server elsewhere may)."""
    from faultproxy import FaultProxy
    from mounts import put_objects

    put_objects(f"s3://{bucket}", REAL)
    with FaultProxy(seaweed.state().s3_port) as proxy:
        proxy.rename_listed({k: v for k, v in HOSTILE.items()})
        yield bucket, {"PAILFS_ENDPOINT": proxy.endpoint}


def test_ls_escapes_control_characters(hostile):
    bucket, env = hostile
    proc = pailfs("ls", "-r", f"s3://{bucket}/t/", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr
    assert "t/ctl\\x1b[31mred" in proc.stdout
    assert "t/../../escape.txt" in proc.stdout  # listed as the server names it


def test_cp_r_download_skips_hostile_keys_and_copies_the_rest(hostile, tmp_path):
    """Nothing is written outside the destination, no key is stored under another
    name than its own, and one bad key does not stop the batch (exit status 1)."""
    bucket, env = hostile
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "dest"
    proc = pailfs("cp", "-r", f"s3://{bucket}/t/", str(dest), env=env)
    assert proc.returncode == 1
    assert "\x1b" not in proc.stdout + proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("pailfs: skipping ")]
    for name, reason in (("t/../../escape.txt", "'.' or '..'"), ("t/./dot", "'.' or '..'"),
                         ("t/a//b", "empty path segment"), ("t//abs", "starts with '/'"),
                         ("t/sub/..", "'.' or '..'"), ("t/withdata/", "ending in '/'"),
                         ("t/x", "need a directory")):
        assert any(f"s3://{bucket}/{name}" in line and reason in line for line in skipped), (name, skipped)
    assert len(skipped) == 7
    assert proc.stderr.strip().splitlines()[-1] == "pailfs: 7 skipped (named above); 3 copied"
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == [
        "dest", "dest/ctl\x1b[31mred", "dest/good.txt", "dest/x", "dest/x/y"]
    assert (dest / "x" / "y").read_bytes() == b"under x" and (dest / "good.txt").read_bytes() == b"good"
    assert not list(tmp_path.rglob("escape.txt")) and not Path("/tmp/escape.txt").exists()


def test_rm_r_keeps_keys_a_request_could_not_name_and_removes_the_rest(hostile):
    from mounts import list_keys

    bucket, env = hostile
    proc = pailfs("rm", "-r", f"s3://{bucket}/t/", env=env)
    assert proc.returncode == 1
    assert "\x1b" not in proc.stdout + proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("pailfs: skipping ")]
    assert len(skipped) == 5  # the '.', '..' and empty-segment names; 't/withdata/' is a key like any
    left = set(list_keys(f"s3://{bucket}"))
    # a DELETE of 't//abs' or 't/sub/..' would have hit another key: none of the real objects went
    assert {"t/h1", "t/h2", "t/h3", "t/h4", "t/h5"} <= left
    assert not {"t/good.txt", "t/ctl\x1b[31mred", "t/x", "t/x/y"} & left


def test_cp_r_upload_skips_names_that_cannot_be_keys(s3_env, bucket, tmp_path):
    from mounts import list_keys

    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_bytes(b"good")
    with open(os.path.join(os.fsencode(src), b"latin1-\xe9t\xe9.txt"), "wb") as f:  # not UTF-8
        f.write(b"bytes")
    deep = src
    for _ in range(5):
        deep = deep / ("d" * 250)
    deep.mkdir(parents=True)
    (deep / "too-long-a-key.bin").write_bytes(b"x")
    (src / "esc\x1b[2J.txt").write_bytes(b"a control character is a valid key")
    proc = pailfs("cp", "-r", str(src), f"s3://{bucket}/u/")
    assert proc.returncode == 1
    assert "\x1b" not in proc.stdout + proc.stderr
    assert "not valid UTF-8" in proc.stderr and "longer than 1024 bytes" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "pailfs: 2 skipped (named above); 2 copied"
    assert sorted(list_keys(f"s3://{bucket}")) == ["u/esc\x1b[2J.txt", "u/good.txt"]


# ==================================================================================
# cp -r resumes (#20.4)
# ==================================================================================
def test_cp_r_resumes_an_interrupted_upload_and_download(s3_env, seaweed, bucket, tmp_path):
    """2,000 files: the upload is killed part way, the second run PUTs only what is
    missing (counted by a proxy), a third run PUTs nothing; the download resumes the
    same way and fetches a file whose bytes changed at the same size again."""
    import signal

    from faultproxy import GET_OBJECT, PUT, FaultProxy
    from mounts import list_keys, wait_for

    src = tmp_path / "src"
    for i in range(2000):
        d = src / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.bin").write_bytes(os.urandom(1000 + i % 500))
    url = f"s3://{bucket}/data/"
    first = subprocess.Popen([PAILFS, "cp", "-q", "-r", "-j", "2", str(src), url], env=os.environ,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def landed() -> bool:
            assert first.poll() is None, "the first upload ended before it could be interrupted"
            return len(list_keys(f"s3://{bucket}")) >= 300

        wait_for(landed, "300 uploaded files", timeout=120)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done = len(list_keys(f"s3://{bucket}"))
    assert 300 <= done < 2000

    with FaultProxy(seaweed.state().s3_port) as proxy:
        env = {"PAILFS_ENDPOINT": proxy.endpoint}
        second = pailfs("cp", "-r", str(src), url, env=env, timeout=300)
        assert second.returncode == 0, second.stderr
        puts = sum(1 for m, t in proxy.requests if PUT(m, t))
        # a PUT in flight at the kill may still have completed on the server: count what
        # the second run found there, at least what was listed after the kill
        found = re.search(r"copied (\d+) files.*; (\d+) already there, unchanged", second.stderr)
        assert found, second.stderr
        copied, present = int(found.group(1)), int(found.group(2))
        assert copied + present == 2000 and present >= done and puts == copied, (puts, copied, present, done)
        proxy.requests.clear()
        third = pailfs("cp", "-r", str(src), url, env=env, timeout=300)
        assert third.returncode == 0 and sum(1 for m, t in proxy.requests if PUT(m, t)) == 0
        print(f"\nresume: {present} of 2000 uploaded before the kill; second run {puts} PUTs; third run 0")

        dest = tmp_path / "dest"
        assert pailfs("cp", "-q", "-r", url, str(dest), env=env, timeout=300).returncode == 0
        files = sorted(p for p in dest.rglob("*.bin"))
        assert len(files) == 2000
        for p in files[:300]:
            p.unlink()
        changed = files[500]
        changed.write_bytes(bytes(len(changed.read_bytes())))  # same size, other bytes
        proxy.requests.clear()
        again = pailfs("cp", "-r", url, str(dest), env=env, timeout=300)
        assert again.returncode == 0, again.stderr
        assert sum(1 for m, t in proxy.requests if GET_OBJECT(m, t)) == 301
        assert changed.read_bytes() == (src / changed.relative_to(dest)).read_bytes()
        assert all(filecmp.cmp(p, src / p.relative_to(dest), shallow=False) for p in files[:300])
        proxy.requests.clear()
        forced = pailfs("cp", "-q", "-r", "--force", url, str(dest), env=env, timeout=300)
        assert forced.returncode == 0 and sum(1 for m, t in proxy.requests if GET_OBJECT(m, t)) == 2000


# --- incomplete multipart uploads -----------------------------------------------------------------
def _store(bucket: str):
    from pailfs.store import open_store
    return open_store(f"s3://{bucket}")


def _uploads(bucket: str, prefix: str = "") -> list[tuple[str, str]]:
    from mounts import list_uploads
    return list_uploads(f"s3://{bucket}", prefix)


def _begin_upload(bucket: str, key: str) -> str:
    """What another writer still at work (or killed) leaves: an upload with a part."""
    async def begin():
        store = _store(bucket)
        try:
            upload_id = await store.create_multipart(key)
            await store.upload_part(key, upload_id, 1, b"a part")
            return upload_id
        finally:
            await store.close()
    return asyncio.run(begin())


def test_uploads_lists_and_aborts_only_what_it_is_asked_to(s3_env, bucket, tmp_path):
    (tmp_path / "done.txt").write_bytes(b"complete")
    assert pailfs("cp", str(tmp_path / "done.txt"), f"s3://{bucket}/p/done.txt").returncode == 0
    first = _begin_upload(bucket, "p/a.bin")
    second = _begin_upload(bucket, "p/deeper/b.bin")
    outside = _begin_upload(bucket, "q/c.bin")

    listed = pailfs("uploads", f"s3://{bucket}/p/")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    rows = sorted(line.split("  ")[1:] for line in listed.stdout.splitlines())
    assert rows == [[first, f"s3://{bucket}/p/a.bin"], [second, f"s3://{bucket}/p/deeper/b.bin"]]

    young = pailfs("uploads", "--abort", f"s3://{bucket}/p/")  # default: begun 24h ago or more
    assert young.returncode == 0 and young.stdout == ""
    assert young.stderr.strip() == "aborted 0 uploads; 2 begun less than 24h ago left alone"
    assert len(_uploads(bucket)) == 3

    aborted = pailfs("uploads", "--abort", "--older-than", "0", f"s3://{bucket}/p/")
    assert aborted.returncode == 0 and aborted.stderr.strip() == "aborted 2 uploads", aborted.stderr
    assert len(aborted.stdout.splitlines()) == 2 and all(line.startswith("aborted ") for line in aborted.stdout.splitlines())
    assert _uploads(bucket) == [("q/c.bin", outside)]  # outside the prefix: untouched
    assert pailfs("stat", f"s3://{bucket}/p/done.txt").returncode == 0  # objects are never touched
    assert pailfs("uploads", f"s3://{bucket}/p/").stdout == ""


@pytest.mark.parametrize("args, expected", [
    (["uploads", "--abort", "--older-than", "1x", "s3://some-bucket/"], "--older-than: '1x' is not an age"),
    (["uploads", "s3://no-such-bucket-here/"], "no such bucket"),
    (["uploads", "/local/path"], "malformed URL '/local/path'"),
])
def test_uploads_bad_input_is_one_line(s3_env, args, expected):
    assert expected in one_line_error(pailfs(*args))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_an_interrupted_cp_frees_its_upload_and_only_its_own(s3_env, seaweed, bucket, tmp_path, sig):
    """A large cp stopped mid-upload by SIGTERM (kill, timeout(1), a pod stopping) or
    Ctrl-C aborts the multipart upload it began: no parts are left billed, the object
    already at the key is unchanged, another writer's upload of the same key is kept.
    SIGKILL leaves it (nothing can run), and `pailfs uploads --abort` frees it."""
    import signal

    from faultproxy import FaultProxy
    from mounts import wait_for

    key = "ckpt/model.bin"
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(30 * MiB))
    old = b"the previous model"
    (tmp_path / "old.bin").write_bytes(old)
    assert pailfs("cp", str(tmp_path / "old.bin"), f"s3://{bucket}/{key}").returncode == 0
    theirs = _begin_upload(bucket, key)  # another writer of the same key, at work already

    with FaultProxy(seaweed.state().s3_port) as proxy:
        proxy.blackhole(match=lambda method, target: method == "PUT" and "partNumber=" in target)
        cp = subprocess.Popen([PAILFS, "cp", "-q", str(src), f"s3://{bucket}/{key}", "-o", "multipart_size=5"],
                              env={**os.environ, "PAILFS_ENDPOINT": proxy.endpoint},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            mine = wait_for(lambda: [u for k, u in _uploads(bucket, key) if u != theirs], "the cp's upload", 60)
            cp.send_signal(getattr(signal, sig))
            _, stderr = cp.communicate(timeout=60)
        finally:
            if cp.poll() is None:
                cp.kill()
                cp.wait()
        proxy.passthrough()

    assert pailfs("cp", f"s3://{bucket}/{key}", str(tmp_path / "got.bin")).returncode == 0
    assert (tmp_path / "got.bin").read_bytes() == old  # the object at the key is untouched
    left = [u for _, u in _uploads(bucket, key)]
    if sig == "SIGKILL":
        assert cp.returncode == -signal.SIGKILL and sorted(left) == sorted([theirs, *mine])
        freed = pailfs("uploads", "--abort", "--older-than", "0", f"s3://{bucket}/{key}")
        assert freed.returncode == 0 and freed.stderr.strip() == "aborted 2 uploads", freed.stderr
        assert _uploads(bucket) == []
    else:
        # SIGTERM says why in one line; Ctrl-C ends quietly, as cp(1) does
        said = "pailfs: interrupted (SIGTERM)" if sig == "SIGTERM" else ""
        assert cp.returncode == 130 and stderr.strip() == said, (cp.returncode, stderr)
        assert left == [theirs]
