"""Checkpointer against the real SeaweedFS: commit by manifest, retention, crash
safety, snapshots, integrity checks, commit order, failures, backpressure."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from pailfs import Checkpointer
from pailfs.errors import CheckpointError, StoreUnavailable
from pailfs.store.base import ObjectStore
from conftest import make_bucket

MANIFEST = "pailfs-checkpoint.json"


class WrapStore(ObjectStore):
    """The real store with hooks: `before_put(key)` runs (on the loop) before each write."""

    def __init__(self, inner: ObjectStore, before_put=None) -> None:
        super().__init__()
        self.inner = inner
        self.url = inner.url
        self.before_put = before_put
        self.puts: list[str] = []

    async def _hook(self, key: str) -> None:
        if self.before_put is not None:
            await self.before_put(key)
        self.puts.append(key)

    async def head(self, key):
        return await self.inner.head(key)

    async def get(self, key, start=None, end=None):
        return await self.inner.get(key, start, end)

    def list_pages(self, prefix="", delimiter=None):
        return self.inner.list_pages(prefix, delimiter)

    async def put(self, key, data, metadata=None):
        await self._hook(key)
        return await self.inner.put(key, data, metadata)

    async def put_file(self, key, path, metadata=None, progress=None):
        await self._hook(key)
        return await self.inner.put_file(key, path, metadata, progress)

    async def delete(self, key):
        return await self.inner.delete(key)

    async def delete_many(self, keys):
        return await self.inner.delete_many(keys)

    async def copy(self, src, dst, metadata=None):
        return await self.inner.copy(src, dst, metadata)

    async def close(self):
        await self.inner.close()


def open_raw(url: str) -> ObjectStore:
    from pailfs.store import open_store

    return open_store(url)


def bucket_keys(url: str, prefix: str = "") -> list[str]:
    async def run():
        store = open_raw(url)
        try:
            return sorted(o.key for o in (await store.list(prefix)).objects)
        finally:
            await store.close()

    return asyncio.run(run())


def put_object(url: str, key: str, data: bytes) -> None:
    async def run():
        store = open_raw(url)
        try:
            await store.put(key, data)
        finally:
            await store.close()

    asyncio.run(run())


def wrapped(url: str, before_put) -> WrapStore:
    return WrapStore(open_raw(url), before_put)


def gate_on(predicate):
    """A before_put hook that blocks matching keys until the returned Event is set."""
    gate = threading.Event()

    async def hook(key: str) -> None:
        if predicate(key):
            await asyncio.to_thread(gate.wait, 30)

    return gate, hook


@pytest.fixture(scope="module")
def ckpt_bucket(seaweed) -> str:
    # one bucket for the module, a prefix per test: every SeaweedFS bucket is a
    # collection that takes several volumes, and a test session has few to spare
    return make_bucket(seaweed)


@pytest.fixture
def url(s3_env, ckpt_bucket) -> str:
    return f"s3://{ckpt_bucket}/{uuid.uuid4().hex[:10]}/run1"


def steps_of(keys: list[str]) -> list[int]:
    return sorted({int(k.split("/", 1)[0]) for k in keys})


# --- retention --------------------------------------------------------------------
@pytest.mark.parametrize("keep,expected", [(1, [5]), (3, [3, 4, 5]), (0, [0, 1, 2, 3, 4, 5])])
def test_retention_keeps_the_newest(url, keep, expected):
    with Checkpointer(url, max_to_keep=keep) as ck:
        for step in range(6):
            ck.save(step, {"weights.bin": os.urandom(1000 + step), "meta/opt.bin": b"o" * step},
                    metadata={"loss": 1.0 / (step + 1)})
        ck.wait()
        infos = ck.list()
        assert [i.step for i in infos] == expected
        assert ck.latest() == 5
        assert infos[-1].metadata == {"loss": 1.0 / 6}
        assert sorted(f.name for f in infos[-1].files) == ["meta/opt.bin", "weights.bin"]
    # deleted checkpoints leave nothing behind in the bucket
    assert steps_of(bucket_keys(url)) == expected


def test_keep_none_keeps_all(url):
    with Checkpointer(url, max_to_keep=None) as ck:
        for step in (10, 20, 30):
            ck.save(step, {"a": b"x"})
    with Checkpointer(url) as ck:
        assert [i.step for i in ck.list()] == [10, 20, 30]


# --- visibility ---------------------------------------------------------------------
def test_latest_never_returns_an_uncommitted_step(url):
    gate, hook = gate_on(lambda k: k == f"0000000002/{MANIFEST}")
    ck = Checkpointer(url, max_to_keep=0, store=wrapped(url, hook))
    try:
        ck.save(1, {"a.bin": b"one"}).result(30)
        fut = ck.save(2, {"a.bin": b"two" * 1000, "b.bin": os.urandom(20_000)})
        # wait until every data file of step 2 is in the bucket: only the manifest is missing
        deadline = time.monotonic() + 20
        while bucket_keys(url, "0000000002/") != ["0000000002/a.bin", "0000000002/b.bin"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with Checkpointer(url) as reader:
            assert reader.latest() == 1
            assert [i.step for i in reader.list()] == [1]
            with pytest.raises(CheckpointError, match="no committed checkpoint at step 2"):
                reader.verify(2)
        assert ck.latest() == 1
        gate.set()
        assert fut.result(30).step == 2
        assert ck.latest() == 2
    finally:
        gate.set()
        ck.close(30)


def test_killed_mid_upload_keeps_previous_and_next_checkpointer_cleans_up(url, tmp_path, seaweed):
    big = tmp_path / "src"
    big.mkdir()
    block = os.urandom(1 << 20)
    with open(big / "model.bin", "wb") as f:
        for _ in range(256):
            f.write(block)
    (big / "a-small.txt").write_text("small")
    script = textwrap.dedent(f"""
        import sys, time
        from pailfs import Checkpointer
        ck = Checkpointer({url!r}, max_to_keep=1)
        ck.save(1, {{"model.bin": b"committed"}}).result()
        print("step1", flush=True)
        ck.save(2, {str(big)!r})
        print("saving2", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "step1"
        assert proc.stdout.readline().strip() == "saving2"
        deadline = time.monotonic() + 30
        while "0000000002/a-small.txt" not in bucket_keys(url, "0000000002/"):
            assert time.monotonic() < deadline, "step 2 upload never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    leftovers = bucket_keys(url, "0000000002/")
    assert leftovers and f"0000000002/{MANIFEST}" not in leftovers, "kill came too late to test a crash"

    with Checkpointer(url, max_to_keep=1, grace_period=0) as ck:
        assert ck.latest() == 1
        assert ck.read("model.bin") == b"committed"
        ck.save(3, {"model.bin": b"three"})
        ck.wait()
        assert [i.step for i in ck.list()] == [3]
    assert steps_of(bucket_keys(url)) == [3]
    assert multipart_uploads(url, seaweed) == []  # the killed multipart upload was aborted
    # the killed process's staging links (which pin 256 MiB) went with the next save
    assert not [p for p in Path(tempfile.gettempdir()).glob(f".pailfs-ckpt-staging-{proc.pid}-*")]


def multipart_uploads(url: str, seaweed) -> list[str]:
    """Keys of unfinished multipart uploads under the URL's prefix (S3 ListMultipartUploads)."""
    from pailfs.server import REGION
    from pailfs.store.s3api import S3Api

    bucket, _, prefix = url[len("s3://"):].partition("/")

    async def run() -> list[str]:
        api = S3Api(seaweed.state().endpoint, seaweed.credentials(), REGION)
        try:
            resp = await api.request("GET", bucket, query={"uploads": "", "prefix": prefix + "/"})
            assert resp.status_code == 200, resp.text
            return re.findall(r"<Key>([^<]*)</Key>", resp.text)
        finally:
            await api.aclose()

    return asyncio.run(run())


def test_script_that_exits_without_close_still_commits_its_last_save(url, tmp_path):
    src = tmp_path / "last"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # multipart, takes a moment
    script = textwrap.dedent(f"""
        from pailfs import Checkpointer
        ck = Checkpointer({url!r})
        ck.save(99, {str(src)!r})
    """)  # no wait(), no close(): the interpreter exits right after save() returns
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    with Checkpointer(url) as ck:
        assert ck.latest() == 99
        ck.verify(99)


def test_leftovers_younger_than_grace_period_are_kept(url):
    put_object(url, "0000000007/partial.bin", b"in flight elsewhere")
    with Checkpointer(url, max_to_keep=1) as ck:  # grace_period 1 h
        ck.save(8, {"a": b"a"})
    assert steps_of(bucket_keys(url)) == [7, 8]
    with Checkpointer(url, max_to_keep=1) as ck:
        assert ck.prune(1, grace_period=0) == ([], [7])
    assert steps_of(bucket_keys(url)) == [8]


# --- snapshots ------------------------------------------------------------------------
def test_source_deleted_right_after_save_still_uploads_its_bytes(url, tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    small, large = os.urandom(5000), os.urandom(12 * 1024 * 1024 + 17)  # large: multipart path
    (src / "index.json").write_bytes(small)
    (src / "sub" / "shard-0.bin").write_bytes(large)
    files = tmp_path / "list.bin"
    listed = os.urandom(3000)
    files.write_bytes(listed)
    buf = bytearray(b"mutable" * 100)
    with Checkpointer(url, max_to_keep=0) as ck:
        f1 = ck.save(1, src)
        shutil.rmtree(src)
        src.mkdir()
        (src / "index.json").write_bytes(b"newer")  # a trainer reusing the same names
        f2 = ck.save(2, [files])
        (tmp_path / "new.bin").write_bytes(b"overwritten")
        os.replace(tmp_path / "new.bin", files)  # write-new-then-rename, as TF's Saver does
        f3 = ck.save(3, {"buf": buf})
        buf[:] = b"changed"
        ck.wait()
        assert {f.name: f.size for f in f1.result().files} == {"index.json": 5000, "sub/shard-0.bin": len(large)}
        out = tmp_path / "restored"
        ck.restore(out, step=1)
        assert (out / "index.json").read_bytes() == small
        assert (out / "sub" / "shard-0.bin").read_bytes() == large
        assert ck.read("list.bin", step=2) == listed
        assert ck.read("buf", step=3) == b"mutable" * 100
        manifest = f1.result()
        assert {f.name: f.sha256 for f in manifest.files}["sub/shard-0.bin"] == hashlib.sha256(large).hexdigest()
        assert f2.result().step == 2 and f3.result().step == 3


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_snapshot_on_another_file_system_and_from_many_threads(url, tmp_path, where):
    base = tmp_path if where == "tmp" else Path(tempfile.mkdtemp(dir="/dev/shm"))  # tmpfs: another device
    try:
        src = base / "ckpt"
        src.mkdir()
        payload = {step: os.urandom(1000 + step) for step in range(8)}

        def trainer(steps):
            for step in steps:
                d = src / str(step)
                d.mkdir()
                (d / "w.bin").write_bytes(payload[step])
                ck.save(step, d)
                shutil.rmtree(d)

        with Checkpointer(url, max_to_keep=0, max_pending=2) as ck:
            threads = [threading.Thread(target=trainer, args=(range(i, 8, 4),)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ck.wait()
            assert [i.step for i in ck.list()] == list(range(8))
            assert all(ck.read("w.bin", step) == payload[step] for step in range(8))
        # staging directories are gone once the Checkpointer is closed
        assert [p.name for p in base.iterdir()] == ["ckpt"]
        assert list(src.iterdir()) == []
    finally:
        if where == "shm":
            shutil.rmtree(base)


def test_in_place_rewrite_during_upload_is_refused_unless_copying(url, tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(b"A" * 10_000)
    gate, hook = gate_on(lambda k: k.endswith("w.bin"))
    ck = Checkpointer(url, store=wrapped(url, hook))
    try:
        fut = ck.save(1, [src])
        with open(src, "r+b") as f:  # torch.save(path) style: same inode, new bytes
            f.write(b"B" * 10_000)
        os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
        gate.set()
        with pytest.raises(CheckpointError, match="rewritten in place"):
            fut.result(30)
        with pytest.raises(CheckpointError, match="rewritten in place"):
            ck.wait()
        assert ck.latest() is None
    finally:
        gate.set()
        ck.close(30)
    gate2, hook2 = gate_on(lambda k: k.endswith("w.bin"))
    ck2 = Checkpointer(url, store=wrapped(url, hook2), snapshot="copy")
    try:
        fut = ck2.save(2, [src])
        src.write_bytes(b"C" * 10_000)
        gate2.set()
        fut.result(30)
        assert ck2.read("w.bin") == b"B" * 10_000
    finally:
        gate2.set()
        ck2.close(30)


# --- integrity --------------------------------------------------------------------------
@pytest.mark.parametrize("damage,message", [
    (b"X" * 4096, "fails its sha256 check"),
    (b"short", "is 5 bytes in the store, the manifest says 4096"),
    (None, "is missing from the store"),
])
def test_damaged_object_fails_verify_and_restore(url, tmp_path, damage, message):
    with Checkpointer(url) as ck:
        ck.save(4, {"weights.bin": os.urandom(4096), "other.bin": b"fine"}).result(30)
        assert ck.verify(4).step == 4
        if damage is None:
            asyncio.run(_delete(url, "0000000004/weights.bin"))
        else:
            put_object(url, "0000000004/weights.bin", damage)
        with pytest.raises(CheckpointError, match=f"step 4 is damaged: weights.bin {message}"):
            ck.verify(4)
        dest = tmp_path / "dest"
        with pytest.raises(CheckpointError, match="weights.bin"):
            ck.restore(dest)
        assert not dest.exists()
        # an existing destination is left untouched too
        dest.mkdir()
        (dest / "other.bin").write_bytes(b"mine")
        with pytest.raises(CheckpointError):
            ck.restore(dest)
        assert sorted(p.name for p in dest.iterdir()) == ["other.bin"]
        assert (dest / "other.bin").read_bytes() == b"mine"


async def _delete(url: str, key: str) -> None:
    store = open_raw(url)
    try:
        await store.delete(key)
    finally:
        await store.close()


def test_restore_into_existing_dir_replaces_only_checkpoint_files(url, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    (dest / "a.bin").write_text("old")
    with Checkpointer(url) as ck:
        ck.save(1, {"a.bin": b"new", "nested/deep/b.bin": b"bb"}).result(30)
        info = ck.restore(dest)
    assert info.step == 1
    assert (dest / "keep.txt").read_text() == "mine"
    assert (dest / "a.bin").read_bytes() == b"new"
    assert (dest / "nested" / "deep" / "b.bin").read_bytes() == b"bb"
    assert not [p for p in dest.iterdir() if p.name.startswith(".pailfs")]


# --- ordering, failures, backpressure ------------------------------------------------------
def test_concurrent_saves_commit_in_step_order(url):
    gate, hook = gate_on(lambda k: k == "0000000001/slow.bin")
    store = wrapped(url, hook)
    ck = Checkpointer(url, max_to_keep=0, max_pending=3, store=store)
    try:
        futs = [ck.save(1, {"slow.bin": b"1"}), ck.save(2, {"f.bin": b"2"}), ck.save(3, {"f.bin": b"3"})]
        deadline = time.monotonic() + 20
        while "0000000003/f.bin" not in bucket_keys(url, "0000000003/"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ck.latest() is None  # 2 and 3 are uploaded but wait for 1 (the manifests' order below)
        gate.set()
        assert [f.result(30).step for f in futs] == [1, 2, 3]
        manifests = [k.split("/")[0] for k in store.puts if k.endswith(MANIFEST)]
        assert manifests == ["0000000001", "0000000002", "0000000003"]
    finally:
        gate.set()
        ck.close(30)


def test_failing_store_surfaces_from_future_and_next_save(url):
    async def hook(key: str) -> None:
        if key.startswith("0000000002/"):
            raise StoreUnavailable("upload s3://b/0000000002/x: connection refused (injected)")

    ck = Checkpointer(url, max_to_keep=0, store=wrapped(url, hook))
    try:
        ck.save(1, {"x": b"1"}).result(30)
        fut = ck.save(2, {"x": b"2", "y": b"22"})
        with pytest.raises(CheckpointError, match="checkpoint step 2 was not saved: .*injected"):
            fut.result(30)
        with pytest.raises(CheckpointError, match="step 2 was not saved"):
            ck.save(3, {"x": b"3"})
        # reported once: the next save goes through
        ck.save(3, {"x": b"3"}).result(30)
        ck.wait()
        assert [i.step for i in ck.list()] == [1, 3]
    finally:
        ck.close(30)
    assert steps_of(bucket_keys(url)) == [1, 3]  # the failed step left nothing


def test_close_reports_failed_and_unfinished_saves(url):
    gate, hook = gate_on(lambda k: k.startswith("0000000005/"))
    ck = Checkpointer(url, store=wrapped(url, hook))
    fut = ck.save(5, {"x": b"5"})
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match=r"steps \[5\] did not finish within 0.5s"):
        ck.close(timeout=0.5)
    assert time.monotonic() - t0 < 10
    gate.set()
    assert fut.cancelled()
    ck.close()  # twice is harmless
    with pytest.raises(CheckpointError, match="closed"):
        ck.save(6, {"x": b"6"})
    with Checkpointer(url) as reader:
        assert reader.latest() is None


def test_save_blocks_beyond_max_pending(url):
    gate, hook = gate_on(lambda k: k.startswith("0000000001/"))
    ck = Checkpointer(url, max_to_keep=0, max_pending=1, store=wrapped(url, hook))
    try:
        ck.save(1, {"x": b"1"})
        returned = threading.Event()
        t = threading.Thread(target=lambda: (ck.save(2, {"x": b"2"}), returned.set()))
        t.start()
        assert not returned.wait(0.5), "save() should block while max_pending saves are in flight"
        gate.set()
        assert returned.wait(30)
        t.join()
        ck.wait()
        assert ck.latest() == 2
    finally:
        gate.set()
        ck.close(30)


# --- input errors ------------------------------------------------------------------------------
def test_bad_inputs_fail_at_save(url, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("1")
    (tmp_path / "b" / "x").write_text("2")
    with Checkpointer(url) as ck:
        with pytest.raises(ValueError, match="step"):
            ck.save(-1, {"x": b""})
        with pytest.raises(CheckpointError, match="same name.*x"):
            ck.save(1, [tmp_path / "a" / "x", tmp_path / "b" / "x"])
        with pytest.raises(CheckpointError, match="reserved"):
            ck.save(1, {MANIFEST: b"{}"})
        with pytest.raises(CheckpointError, match="bad file name"):
            ck.save(1, {"../escape": b""})
        with pytest.raises(CheckpointError, match="not found"):
            ck.save(1, tmp_path / "missing")
        with pytest.raises(TypeError, match="JSON"):
            ck.save(1, {"x": b""}, metadata={"f": object()})
        with pytest.raises(CheckpointError, match="no committed checkpoint"):
            ck.restore(tmp_path / "r")
        assert ck.list() == [] and ck.latest() is None


def test_missing_bucket_fails_at_construction(s3_env):
    with pytest.raises(Exception) as info:
        Checkpointer("s3://no-such-bucket-pailfs/x")
    assert "no-such-bucket-pailfs" in str(info.value)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in str(info.value)


# --- state dicts: save_state / load_state (#20.3) ------------------------------------------------
def test_save_state_and_load_state_round_trip_a_state_dict_without_torch(url, monkeypatch):
    """A flat state dict of numpy arrays needs no torch: it is saved as state.npz in the
    background and comes back verified, array for array (dtype and shape too)."""
    import numpy as np

    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without PyTorch
    rng = np.random.default_rng(0)
    state = {"fc1.weight": rng.standard_normal((256, 784)).astype(np.float32),
             "fc1.bias": np.zeros(256, np.float32), "step": np.int64(100), "lr": np.float64(0.05)}
    with Checkpointer(url, max_to_keep=2) as ck:
        fut = ck.save_state(100, state, metadata={"epoch": 3})
        state["fc1.bias"] += 1  # the caller goes on training: the checkpoint keeps step 100's bytes
        info = fut.result(60)
        assert [f.name for f in info.files] == ["state.npz"] and info.metadata == {"epoch": 3}
        back = ck.load_state()
        assert sorted(back) == sorted(state)
        assert back["fc1.weight"].dtype == np.float32 and np.array_equal(back["fc1.weight"], state["fc1.weight"])
        assert np.array_equal(back["fc1.bias"], np.zeros(256, np.float32))
        assert int(back["step"]) == 100 and float(back["lr"]) == 0.05
        # what load_state reads is verified first, like restore()
        put_object(url, "0000000100/state.npz", b"X" * info.files[0].size)
        with pytest.raises(CheckpointError, match="state.npz fails its sha256 check"):
            ck.load_state(100)
        # anything but a flat mapping of arrays needs torch, and says so
        with pytest.raises(CheckpointError, match=r"needs PyTorch \(pip install torch\)"):
            ck.save_state(101, {"optimizer": {"state": {}}})


def test_leftover_staging_dirs_removed_are_only_this_users_own(url, tmp_path):
    """A killed process leaves `.pailfs-ckpt-staging-<pid>-*` behind and the next
    Checkpointer removes it; a directory of that name that another user owns, or a
    symbolic link planted under that name, is left alone."""
    from pailfs.checkpoint.snapshot import STAGING_PREFIX

    base = tmp_path / "staging"
    base.mkdir()
    dead = 2**22 + 12345  # above the largest pid Linux allows (2**22): no process has it
    ours = base / f"{STAGING_PREFIX}{dead}-ours"
    ours.mkdir(mode=0o700)
    (ours / "leftover").write_bytes(b"x")
    theirs = base / f"{STAGING_PREFIX}{dead}-theirs"
    theirs.mkdir(mode=0o700)
    (theirs / "their-file").write_bytes(b"y")
    os.chown(theirs, 65534, 65534)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "precious").write_bytes(b"z")
    (base / f"{STAGING_PREFIX}{dead}-link").symlink_to(victim)
    with Checkpointer(url, staging_dir=base) as ck:
        ck.save(1, {"w.bin": b"w"}).result(30)
    assert not ours.exists()
    assert (theirs / "their-file").read_bytes() == b"y"
    assert (victim / "precious").read_bytes() == b"z" and (base / f"{STAGING_PREFIX}{dead}-link").is_symlink()
