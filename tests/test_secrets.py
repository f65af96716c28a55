"""Secrets never show: not in logs at any level, not in the command line of any
process pailfs starts, not in exception text.

Covered elsewhere: the CSI plugin's mount subprocess gets a 0600 passwd file,
never the key in argv (test_csi.py::test_credentials_file_is_private_and_not_in_argv,
::test_publish_errors_never_show_secrets); `pailfs ls/cp` with a wrong secret or an
unsafe passwd file (test_cli_objects.py::test_wrong_credentials_never_show_the_secret);
passwd-file parse errors name the line, not the secret (test_credentials.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from mounts import mounted, pailfs, put_objects
from pailfs import Checkpointer
from pailfs.errors import AccessDenied, PailfsError
from pailfs.procs import pids_with_argument
from pailfs.store import open_store

pytestmark = pytest.mark.timeout(180)
WRONG = "Wr0ngSecretValue/For+Tests-0123456789abcdefXYZ"


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def leaks(text: str, *secrets: str) -> list[str]:
    return [s for s in secrets if s and s in text]


def test_mount_debug_log_and_argv_hold_no_secret(bucket, s3_env, tmp_path):
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    put_objects(f"s3://{bucket}", {"data/a.txt": b"alpha", "data/big.bin": os.urandom(3 * 1024 * 1024)})
    log = tmp_path / "mount.log"
    with mounted(bucket, tmp_path / "mnt", f"debug,logfile={log},stat_cache_expire=1") as mnt:
        daemons = pids_with_argument(str(mnt), words=("mount", "-f"))
        assert daemons, "no mount process found"
        for pid in daemons:
            assert not leaks(cmdline(pid), secret), "the secret is in the mount process's argv"
        # reads, writes, a failure and the stats: every code path that logs
        assert (mnt / "data/a.txt").read_bytes() == b"alpha"
        assert len((mnt / "data/big.bin").read_bytes()) == 3 * 1024 * 1024
        (mnt / "data/new.txt").write_bytes(b"new")
        os.rename(mnt / "data/new.txt", mnt / "data/moved.txt")
        with pytest.raises(FileNotFoundError):
            (mnt / "data/absent").read_bytes()
        stats = pailfs("stats", str(mnt), "--json", check=True)
        assert not leaks(stats.stdout.decode(), secret)
    text = log.read_text(errors="replace")
    assert "DEBUG" in text and "GET" in text, "the debug log is not what this test thinks it is"
    assert not leaks(text, secret), "the secret is in the mount's debug log"


def test_cli_debug_logging_holds_no_secret(bucket, s3_env, tmp_path):
    """`pailfs cp` has no verbosity flag; run its main() under a DEBUG root logger so
    every library (httpx, httpcore, pailfs) logs everything, once failing and once
    succeeding."""
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(12 * 1024 * 1024))  # multipart at multipart_size=5
    runner = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
        from pailfs.cli import main
        sys.argv = ["pailfs", *sys.argv[1:]]
        main()
    """)

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", runner, *args], capture_output=True, timeout=120,
                              env={**os.environ, **(env or {})})

    ok = run("cp", str(src), f"s3://{bucket}/f.bin", "-o", "multipart_size=5")
    down = run("cp", f"s3://{bucket}/f.bin", str(tmp_path / "back.bin"), "-o", "multipart_size=5")
    bad = run("cp", str(src), f"s3://{bucket}/g.bin", env={"AWS_SECRET_ACCESS_KEY": WRONG})
    missing = run("ls", "s3://no-such-bucket-secrets")
    assert ok.returncode == 0 and down.returncode == 0, ok.stderr.decode()[-2000:]
    assert bad.returncode == 1 and b"access denied" in bad.stderr
    assert missing.returncode == 1
    debug = b"".join(p.stdout + p.stderr for p in (ok, down, bad, missing)).decode(errors="replace")
    assert "DEBUG httpcore" in debug, "the libraries did not log at DEBUG"
    assert not leaks(debug, secret, WRONG)


def test_weed_argv_and_log_hold_no_secret(seaweed):
    secret = seaweed.credentials().secret_key
    state = seaweed.state()
    assert not leaks(cmdline(state.pid), secret)
    assert not leaks(seaweed.log_file.read_text(errors="replace"), secret)


def test_exception_text_never_holds_the_secret(bucket, s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG)

    async def check() -> AccessDenied:
        store = open_store(f"s3://{bucket}")
        try:
            with pytest.raises(AccessDenied) as info:
                await store.put("k", b"x")
            assert not leaks(repr(store.__dict__.get("_credentials")), WRONG)
            return info.value
        finally:
            await store.close()

    exc = asyncio.run(check())
    texts = [str(exc), repr(exc)]
    with pytest.raises(PailfsError) as info:
        Checkpointer(f"s3://{bucket}/ckpt")
    texts += [str(info.value), repr(info.value)]
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{bucket}:{s3_env['AWS_ACCESS_KEY_ID']}:{WRONG}\n")
    passwd.chmod(0o644)
    with pytest.raises(PailfsError) as info:
        open_store(f"s3://{bucket}", passwd_file=str(passwd))
    texts += [str(info.value)]
    passwd.write_text(f"{bucket}:{s3_env['AWS_ACCESS_KEY_ID']}:{WRONG}:extra:fields\n")
    passwd.chmod(0o600)
    with pytest.raises(PailfsError) as info:
        open_store(f"s3://{bucket}", passwd_file=str(passwd))
    texts += [str(info.value)]
    for text in texts:
        assert "\n" not in text.strip()
        assert not leaks(text, WRONG), text
