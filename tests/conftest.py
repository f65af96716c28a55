"""Shared fixtures: one real SeaweedFS server per test session (free ports, temp dir),
a fresh bucket per test, and environment pointing pailfs at it."""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import uuid

import pytest

from pailfs.server import REGION, SeaweedServer
from pailfs.store.s3api import S3Api


# Fixtures that start or use a real SeaweedFS: a test that uses one is a `server` test.
SERVER_FIXTURES = frozenset({"seaweed", "private_server", "cloud"})


def pytest_collection_modifyitems(config, items):
    """Every test gets a layer marker (docs/architecture.md, "Tests"): `mount` is set
    by the test modules that mount; `server` here for a test that uses a server
    fixture; `unit` for the rest, which must need neither (mounts.mounted checks)."""
    for item in items:
        if item.get_closest_marker("mount") or item.get_closest_marker("server"):
            continue
        if SERVER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.server)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _layer_guard(request):
    """Lets mounts.mounted refuse to run in a test marked `unit`."""
    import mounts

    mounts.CURRENT_TEST = request.node
    yield
    mounts.CURRENT_TEST = None


@pytest.fixture(scope="session", autouse=True)
def private_tmpdir(tmp_path_factory):
    """pailfs and its mount daemons make their temp files (staging dirs, which a mount
    killed on purpose leaves behind) under pytest's tmp dir instead of /tmp."""
    path = tmp_path_factory.mktemp("tmpdir")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(path)
    tempfile.tempdir = None
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old
        tempfile.tempdir = None


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A running SeaweedFS with S3 auth on; stopped at the end of the session."""
    srv = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(timeout=3)  # its data is thrown away: no need to wait for a slow flush


@pytest.fixture(scope="session")
def s3_endpoint(seaweed) -> str:
    return seaweed.state().endpoint


@pytest.fixture(scope="session")
def s3_credentials(seaweed):
    return seaweed.credentials()


@pytest.fixture
def s3_env(seaweed, monkeypatch) -> dict[str, str]:
    """Environment pointing pailfs (and its subprocesses) at the test server."""
    env = seaweed.env()
    for var in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "URL", "BUCKET", "PAILFS_REGION"):
        monkeypatch.delenv(var, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


_counter = itertools.count()


def make_bucket(seaweed, name: str | None = None) -> str:
    name = name or f"t{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        api = S3Api(seaweed.state().endpoint, seaweed.credentials(), REGION)
        try:
            resp = await api.create_bucket(name)
            assert resp.status_code == 200, resp.text
        finally:
            await api.aclose()

    asyncio.run(create())
    return name


def drop_bucket(seaweed, name: str) -> None:
    """Delete a test's bucket with everything in it (SeaweedFS deletes a non-empty
    bucket and its collection): each bucket holds volume slots of the shared server,
    and a whole run's worth of them would exhaust it."""

    async def drop() -> None:
        api = S3Api(seaweed.state().endpoint, seaweed.credentials(), REGION)
        try:
            resp = await api.delete_bucket(name)
            assert resp.status_code in (204, 404), resp.text
        finally:
            await api.aclose()

    asyncio.run(drop())


@pytest.fixture
def bucket(seaweed) -> str:
    """A fresh, empty bucket for one test, deleted after it."""
    name = make_bucket(seaweed)
    yield name
    drop_bucket(seaweed, name)


@pytest.fixture
def private_server(tmp_path, monkeypatch):
    """A SeaweedFS of this test's own (to kill and restart), one bucket in it, and the
    environment pointing pailfs at it. Yields (server, state, bucket)."""
    srv = SeaweedServer(tmp_path / "private-srv")
    state = srv.start()
    try:
        bucket = make_bucket(srv)
        for name, value in srv.env().items():
            monkeypatch.setenv(name, value)
        yield srv, state, bucket
    finally:
        SeaweedServer(tmp_path / "private-srv").stop(timeout=3)


def restart(server_state, tmp_path) -> None:
    """Start the private server again on the same endpoint."""
    SeaweedServer(tmp_path / "private-srv", s3_port=server_state.s3_port).start()


# --- SeaweedFS as a cloud endpoint: domain names, https, STS (tests/weedcloud.py) ----------
@pytest.fixture(scope="session")
def cloud(tmp_path_factory):
    """One CloudWeed for the session: virtual-hosted domains, https with a test CA, STS
    with 4-second sessions and an OIDC issuer on 127.0.0.1."""
    from weedcloud import CloudWeed, OidcIssuer, TestCA

    base = tmp_path_factory.mktemp("cloud")
    issuer = OidcIssuer(base / "oidc")
    weed = CloudWeed(base, TestCA(base / "ca"), issuer)
    try:
        yield weed.start()
    finally:
        weed.stop()
        issuer.close()


@pytest.fixture
def cloud_bucket(cloud) -> str:
    """A fresh bucket on the cloud server."""
    return make_bucket(cloud.server)
