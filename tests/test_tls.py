"""TLS against SeaweedFS serving https with a certificate from a CA made in the test
(tests/weedcloud.py): verified against the system CAs by default, `ca_file=` and
AWS_CA_BUNDLE for a private CA, and one clear error — never a silent fallback to
no verification — when the certificate names another host or comes from an
unknown CA. Both clients are covered: S3Api (LIST, HEAD) and obstore (GET, PUT)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mounts import is_mounted, mounted
from pailfs import Checkpointer
from pailfs.errors import BadOption, StoreUnavailable
from pailfs.store import open_store

pytestmark = [pytest.mark.timeout(180), pytest.mark.mount]


def pailfs(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pailfs", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("pailfs: "), proc
    return lines[0]


@pytest.fixture
def env(cloud, monkeypatch) -> dict[str, str]:
    """The admin keys, no endpoint and no CA bundle from the caller's environment."""
    for var in ("PAILFS_ENDPOINT", "URL", "AWS_CA_BUNDLE", "PAILFS_CA_FILE", "OSS_ACCESS_KEY_ID",
                "OSS_ACCESS_KEY_SECRET", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    for name, value in cloud.admin_env().items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def test_private_ca_through_ca_file_and_aws_ca_bundle(cloud, cloud_bucket, env, tmp_path):
    ca = str(cloud.ca.cert)
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(12 * 1024 * 1024 + 7))  # multipart at multipart_size=5
    # no scheme: https (the https port of the server, path style for an IP address)
    up = pailfs("cp", str(src), f"s3://{cloud_bucket}/tls/model.bin", "--endpoint", f"127.0.0.1:{cloud.https_port}",
                "-o", f"ca_file={ca},multipart_size=5", "-q", env=env)
    assert up.returncode == 0, up.stderr
    bundle_env = {**env, "AWS_CA_BUNDLE": ca, "PAILFS_ENDPOINT": f"https://127.0.0.1:{cloud.https_port}"}
    down = pailfs("cp", f"s3://{cloud_bucket}/tls/model.bin", str(tmp_path / "back.bin"), "-q", env=bundle_env)
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    listed = pailfs("ls", f"s3://{cloud_bucket}/tls/", env=bundle_env)
    assert listed.returncode == 0 and "tls/model.bin" in listed.stdout, listed.stderr

    with mounted(f"{cloud_bucket}:/tls", tmp_path / "mnt", f"ro,url=127.0.0.1:{cloud.https_port},ca_file={ca}",
                 env=env) as mnt:
        assert (mnt / "model.bin").read_bytes() == src.read_bytes()

    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "weights.bin").write_bytes(b"w" * 100_000)
    with Checkpointer(f"s3://{cloud_bucket}/ckpt", options=f"url=127.0.0.1:{cloud.https_port},ca_file={ca}") as ckpt:
        ckpt.save(1, ckpt_dir).result(60)
        ckpt.restore(tmp_path / "restored")
    assert (tmp_path / "restored" / "weights.bin").read_bytes() == b"w" * 100_000


def test_certificate_for_another_host_is_one_clear_error(cloud, cloud_bucket, env, tmp_path):
    ca = str(cloud.ca.cert)
    (tmp_path / "f").write_bytes(b"x")
    # the certificate names 127.0.0.1 and the test domains, not localhost
    endpoint = f"https://localhost:{cloud.https_port}"
    for args in (["ls", f"s3://{cloud_bucket}"], ["cp", str(tmp_path / "f"), f"s3://{cloud_bucket}/f"]):
        line = one_line(pailfs(*args, "--endpoint", endpoint, "-o", f"ca_file={ca}", env=env))
        assert f"{endpoint} failed the TLS check: the certificate does not name this host" in line, line
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    proc = pailfs("mount", cloud_bucket, str(mountpoint), "-o", f"ro,url={endpoint},ca_file={ca}", env=env)
    assert proc.returncode != 0 and not is_mounted(mountpoint)
    assert "the certificate does not name this host" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unknown_ca_is_refused_never_a_silent_fallback(cloud, cloud_bucket, env, tmp_path):
    endpoint = f"https://127.0.0.1:{cloud.https_port}"
    line = one_line(pailfs("ls", f"s3://{cloud_bucket}", "--endpoint", endpoint, env=env))
    assert f"{endpoint} failed the TLS check: certificate not trusted" in line
    assert "ca_file=FILE" in line and "AWS_CA_BUNDLE" in line

    async def through_both_clients() -> list[str]:
        store = open_store(f"s3://{cloud_bucket}", url=endpoint, retries=2)
        messages = []
        try:
            for call in (store.check(), store.head("k"), store.get("k"), store.put("k", b"v")):
                with pytest.raises(StoreUnavailable) as caught:
                    await call
                messages.append(str(caught.value))
        finally:
            await store.close()
        return messages

    for message in asyncio.run(through_both_clients()):
        assert "failed the TLS check: certificate not trusted" in message, message
    with pytest.raises(StoreUnavailable, match="certificate not trusted"):
        Checkpointer(f"s3://{cloud_bucket}/ckpt", options=f"url={endpoint}")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    proc = pailfs("mount", cloud_bucket, str(mountpoint), "-o", f"ro,url={endpoint}", env=env)
    assert proc.returncode != 0 and not is_mounted(mountpoint) and "certificate not trusted" in proc.stderr


def test_bad_ca_file_is_bad_input(cloud, cloud_bucket, env, tmp_path):
    endpoint = f"https://127.0.0.1:{cloud.https_port}"
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    for path, reason in ((tmp_path / "absent.pem", "does not exist"), (not_pem, "holds no usable PEM certificate")):
        line = one_line(pailfs("ls", f"s3://{cloud_bucket}", "--endpoint", endpoint, "-o", f"ca_file={path}", env=env))
        assert f"ca_file {path} {reason}" in line
        with pytest.raises(BadOption, match=reason):
            open_store(f"s3://{cloud_bucket}", url=endpoint, ca_file=str(path))


def test_plain_http_needs_no_ca(cloud, cloud_bucket, env):
    async def body() -> bytes:
        store = open_store(f"s3://{cloud_bucket}", url=f"http://127.0.0.1:{cloud.http_port}",
                           ca_file=str(Path(cloud.ca.cert)))
        try:
            await store.put("plain", b"http")
            return await store.get("plain")
        finally:
            await store.close()

    assert asyncio.run(body()) == b"http"
