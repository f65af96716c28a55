"""What S3Store sends and how it retries, seen on the wire: one retry rule for both
clients (S3Api for LIST/HEAD, obstore for GET/PUT), timeouts included; uploads
without aws-chunked encoding; and obstore kept from AWS_* variables S3Api does
not follow. Real SeaweedFS behind tests/faultproxy.py, or a real socket."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from faultproxy import GET_OBJECT, LIST, PUT, FaultProxy
from pailfs.errors import StoreUnavailable
from pailfs.store import open_store

MiB = 1024 * 1024
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def proxy(seaweed):
    with FaultProxy(seaweed.state().s3_port) as p:
        yield p


def run(store_url: str, body, **options):
    async def main():
        store = open_store(store_url, **options)
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


def test_server_errors_are_retried_alike_by_both_clients(s3_env, bucket, proxy):
    async def body(store):
        await store.put("k", b"value")
        proxy.error(503, "SlowDown", times=2, match=LIST)
        listed = [o.key for o in (await store.list()).objects]       # S3Api
        list_fired = proxy.fired
        proxy.error(503, "SlowDown", times=2, match=GET_OBJECT)
        got = await store.get("k")                                   # obstore
        get_fired = proxy.fired
        proxy.error(500, "InternalError", times=2, match=PUT)
        await store.put("k2", b"again")                              # obstore PUT
        put_fired = proxy.fired
        proxy.error(503, "SlowDown", times=3, match=GET_OBJECT)      # one more than retries=2
        with pytest.raises(StoreUnavailable, match="SlowDown"):
            await store.get("k")
        return listed, list_fired, got, get_fired, put_fired

    listed, list_fired, got, get_fired, put_fired = run(f"s3://{bucket}", body, url=proxy.endpoint, retries=2)
    assert (listed, got) == (["k"], b"value")
    assert (list_fired, get_fired, put_fired) == (2, 2, 2)


def test_timeouts_are_retried_alike_by_both_clients(s3_env):
    """A host whose listen backlog is full drops the SYNs: each attempt ends in a
    connect timeout (1 s) inside the 10 s request window, so both clients retry it
    `retries` times — S3Api (LIST) used to give up after the first."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port))  # takes the one backlog slot
        try:
            def timed(call_name: str) -> float:
                async def body(store):
                    started = time.monotonic()
                    with pytest.raises(StoreUnavailable, match="timed out"):
                        await (store.check() if call_name == "list" else
                               store.get("k") if call_name == "get" else store.put("k", b"v"))
                    return time.monotonic() - started
                return run("s3://somebucket", body, url=f"http://127.0.0.1:{port}", connect_timeout="1",
                           readwrite_timeout="10", retries=2)

            elapsed = {name: timed(name) for name in ("list", "get", "put")}
        finally:
            filler.close()
    for name, seconds in elapsed.items():
        assert 3.0 <= seconds < 8, (name, seconds)  # 3 connect timeouts + backoff, for every client


def test_uploads_never_use_aws_chunked_encoding(s3_env, bucket, proxy, tmp_path):
    """OSS rejects aws-chunked uploads: every PUT (single and multipart parts) is a
    plain body with Content-Length and a real payload hash."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MiB))

    async def body(store):
        await store.put("small", b"x" * 1000)
        await store.put_file("big", big)
        await store.put("ctl/\ttab", b"through S3Api")  # a key only S3Api can spell
        return await store.get("big")

    assert run(f"s3://{bucket}", body, url=proxy.endpoint, multipart_size=5) == big.read_bytes()
    uploads = [(m, t, h) for m, t, h in proxy.request_heads if m == "PUT" and "x-amz-copy-source" not in h]
    assert len(uploads) >= 5  # small, three parts, the S3Api key
    assert any("partNumber=" in t for _, t, _ in uploads)
    for method, target, headers in uploads:
        assert "aws-chunked" not in headers.get("content-encoding", ""), target
        assert not headers.get("x-amz-content-sha256", "").startswith("STREAMING-"), target
        assert "x-amz-decoded-content-length" not in headers, target
        assert "chunked" not in headers.get("transfer-encoding", ""), target
        assert headers.get("content-length", "").isdigit(), target


def test_obstore_does_not_follow_aws_variables_s3api_ignores(s3_env, bucket, monkeypatch):
    """obstore reads AWS_* from the environment on its own: AWS_ENDPOINT_URL_S3 sent
    its requests elsewhere while S3Api used the configured endpoint."""
    with socket.socket() as nowhere:
        nowhere.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{nowhere.getsockname()[1]}")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{nowhere.getsockname()[1]}")
        monkeypatch.setenv("AWS_SKIP_SIGNATURE", "true")

        async def body(store):
            await store.put("env/k", b"to the configured endpoint")
            return await store.get("env/k"), [o.key for o in (await store.list("env/")).objects]

        got, listed = run(f"s3://{bucket}", body, retries=0)
    assert got == b"to the configured endpoint" and listed == ["env/k"]
