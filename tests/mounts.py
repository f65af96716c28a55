"""Helpers for tests that mount for real: run the `pailfs` CLI, always unmount."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

PAILFS = [sys.executable, "-m", "pailfs"]


def pailfs(*args: str, check: bool = False, timeout: float = 120, env: dict | None = None,
           input: bytes | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PAILFS, *args], capture_output=True, timeout=timeout, env=env, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"pailfs {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


def blob(seed: int, size: int) -> bytes:
    """Deterministic test bytes: a chain of sha256 digests."""
    import hashlib

    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def is_mounted(path: str | Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def force_unmount(path: str | Path) -> None:
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


CURRENT_TEST = None  # set by conftest: the running test's item


@contextlib.contextmanager
def mounted(source: str, mountpoint: Path, *options: str, env: dict | None = None):
    """Mount with `pailfs mount`, yield the mountpoint, and unmount even on failure."""
    if CURRENT_TEST is not None and CURRENT_TEST.get_closest_marker("unit"):
        raise AssertionError(f"{CURRENT_TEST.nodeid} mounts: mark it pytest.mark.mount")
    mountpoint.mkdir(parents=True, exist_ok=True)
    args = ["mount", source, str(mountpoint)]
    for opt in options:
        args += ["-o", opt]
    pailfs(*args, check=True, env=env)
    try:
        assert is_mounted(mountpoint)
        yield mountpoint
    finally:
        proc = pailfs("umount", str(mountpoint))
        if proc.returncode != 0:
            force_unmount(mountpoint)


def mount_stats(mountpoint: Path) -> dict:
    """`pailfs stats --json` of a live mount."""
    import json

    return json.loads(pailfs("stats", str(mountpoint), "--json", check=True).stdout)


def put_objects(url: str, objects: dict[str, bytes]) -> None:
    """Write objects through the store layer (env carries endpoint and keys)."""
    from pailfs.store import open_store

    async def run() -> None:
        store = open_store(url)
        try:
            await asyncio.gather(*(store.put(key, data) for key, data in objects.items()))
        finally:
            await store.close()

    asyncio.run(run())


def get_object(url: str, key: str) -> bytes | None:
    from pailfs.errors import NotFound
    from pailfs.store import open_store

    async def run() -> bytes | None:
        store = open_store(url)
        try:
            return await store.get(key)
        except NotFound:
            return None
        finally:
            await store.close()

    return asyncio.run(run())


def get_object_after_restart(url: str, key: str, timeout: float = 30.0) -> bytes | None:
    """get_object on a server just (re)started: SeaweedFS answers 500 InternalError for
    a moment while it loads its volumes, so retry those (only those) for a while."""
    import time

    from pailfs.errors import StoreError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return get_object(url, key)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def list_keys(url: str, prefix: str = "") -> list[str]:
    from pailfs.store import open_store

    async def run() -> list[str]:
        store = open_store(url)
        try:
            return [o.key for o in (await store.list(prefix)).objects]
        finally:
            await store.close()

    return asyncio.run(run())


def list_uploads(url: str, prefix: str = "") -> list[tuple[str, str]]:
    """(key, upload id) of the incomplete multipart uploads under prefix, sorted."""
    from pailfs.store import open_store

    async def run() -> list[tuple[str, str]]:
        store = open_store(url)
        try:
            return sorted([(up.key, up.upload_id) async for up in store.list_uploads(prefix)])
        finally:
            await store.close()

    return asyncio.run(run())


def uploads_in_progress(url: str, bucket: str, key: str) -> dict[str, int]:
    """upload id -> parts uploaded so far, of the multipart uploads of key (S3 API)."""
    from pailfs.store import open_store

    ids = [upload_id for k, upload_id in list_uploads(url, key) if k == key]

    async def run() -> dict[str, int]:
        store = open_store(url)
        try:
            out = {}
            for upload_id in ids:
                parts = await store.api.request("GET", bucket, key, query={"uploadId": upload_id})
                out[upload_id] = parts.text.count("<Part>")
            return out
        finally:
            await store.close()

    return asyncio.run(run())


def wait_for(condition, what: str = "condition", timeout: float = 60.0):
    """Poll condition() until it returns something true (returned), failing with
    "timed out waiting for WHAT" after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return result
