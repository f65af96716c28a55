"""Fault injection: what a user sees when the object store misbehaves.

A FaultProxy (tests/faultproxy.py) sits between pailfs and the real SeaweedFS.
For the read-only mount, the read-write mount, `pailfs cp` and the
Checkpointer, each fault must give the documented outcome:

* fewer 503/500 answers (or broken transfers) than `retries`: the operation
  succeeds after retrying, with the right bytes;
* more, or a store that stops answering: EIO / one clear line / a failed
  save within the configured timeout (`readwrite_timeout=3,retries=2`), and
  the bucket holds the old object or none — never a partial one;
* every byte read is checked by sha256 against the source, and every byte in
  the bucket is checked through a direct store (not through the proxy).

Each scenario records faults injected / survived / bytes lost; the table is
written to reliability-results.json (pytest's base temp dir, or the path in
$PAILFS_RELIABILITY_OUT) and is what docs/reliability.md reports.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import make_bucket
from faultproxy import GET_OBJECT, LIST, PUT, FaultProxy, kill9, restart
from mounts import get_object, get_object_after_restart, list_keys, mounted, pailfs, put_objects
from pailfs import Checkpointer
from pailfs.errors import CheckpointError

MiB = 1024 * 1024
TIMEOUTS = "readwrite_timeout=3,connect_timeout=2,retries=2"
# the documented bound of a failing operation: (retries + 1) attempts of readwrite_timeout, plus slack
BOUND = 3 * 3 + 6
RO = "ro,kernel_cache,max_stat_cache_size=10000," + TIMEOUTS
RW = "stat_cache_expire=60,multipart_size=5," + TIMEOUTS
CP_OPTS = ["-o", TIMEOUTS + ",multipart_size=5"]

pytestmark = pytest.mark.timeout(120)


def blob(seed: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def file_sha(path: str | Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, MiB):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def bytes_lost(expected: bytes | None, found: bytes | None) -> int:
    """Bytes that should be in the bucket and are not (or differ)."""
    if expected is None:
        return 0 if found is None else 0  # an absent key had nothing to lose
    if found == expected:
        return 0
    return len(expected)


# --- results ---------------------------------------------------------------------
class Results:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def record(self, surface: str, scenario: str, expected: str, injected: int, lost: int,
               seconds: float, observed: str) -> None:
        assert injected > 0, f"{surface} / {scenario}: no fault was injected"
        assert lost == 0, f"{surface} / {scenario}: {lost} bytes lost"
        self.rows.append({"surface": surface, "scenario": scenario, "expected": expected,
                          "faults_injected": injected, "survived": injected, "bytes_lost": lost,
                          "seconds": round(seconds, 2), "observed": observed})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    res = Results()
    yield res
    out = Path(os.environ.get("PAILFS_RELIABILITY_OUT") or
               tmp_path_factory.getbasetemp() / "reliability-results.json")
    previous = []
    if out.exists():  # several modules/runs may add to one file; keep the newest row per scenario
        try:
            previous = json.loads(out.read_text()).get("scenarios", [])
        except ValueError:
            previous = []
    mine = {(r["surface"], r["scenario"]) for r in res.rows}
    rows = [r for r in previous if (r["surface"], r["scenario"]) not in mine] + res.rows
    totals = {k: sum(r[k] for r in rows) for k in ("faults_injected", "survived", "bytes_lost")}
    out.write_text(json.dumps({"scenarios": rows, "totals": totals}, indent=2))
    print(f"\nreliability results: {out} ({len(rows)} scenarios, {totals})")


@pytest.fixture(scope="module")
def proxy(seaweed):
    with FaultProxy(seaweed.state().s3_port) as p:
        yield p


@pytest.fixture(autouse=True)
def _reset(request):
    yield
    if "proxy" in request.fixturenames:
        request.getfixturevalue("proxy").passthrough()


def proxy_env(seaweed, proxy) -> dict[str, str]:
    return {**os.environ, **seaweed.env(), "PAILFS_ENDPOINT": proxy.endpoint}


# ==================================================================================
# read-only mount
# ==================================================================================
RO_CASES = [
    # id, fault, expected outcome
    ("503 SlowDown x2 on GET", lambda p: p.error(503, "SlowDown", times=2, match=GET_OBJECT), "ok"),
    ("500 InternalError x2 on GET", lambda p: p.error(500, "InternalError", times=2, match=GET_OBJECT), "ok"),
    ("503 SlowDown x2 on LIST", lambda p: p.error(503, "SlowDown", times=2, match=LIST), "ok"),
    ("delay 500 ms", lambda p: p.delay(500), "ok"),
    ("cut mid-body x1", lambda p: p.cut_response(after=200_000, times=1), "ok"),
    ("cut LIST mid-body x1", lambda p: p.cut_response(after=200, times=1, match=LIST), "ok"),
    ("503 SlowDown on every GET", lambda p: p.error(503, "SlowDown", times=None, match=GET_OBJECT), "EIO"),
    ("delay 5 s > readwrite_timeout", lambda p: p.delay(5000, match=GET_OBJECT), "EIO"),
    ("cut mid-body every time", lambda p: p.cut_response(after=200_000, times=None), "EIO"),
    ("black hole (accept, never answer)", lambda p: p.blackhole(match=GET_OBJECT), "EIO"),
    ("black hole on LIST", lambda p: p.blackhole(match=LIST), "EIO"),
]
RO_FILES = {"small.bin": 300_000, "big.bin": 3 * MiB + 12345}  # fetched whole / ranged prefetch


@pytest.fixture(scope="module")
def ro_data(seaweed):
    bucket = make_bucket(seaweed)
    objects = {f"case{i}/{name}": blob(i * 10 + n, size)
               for i in range(len(RO_CASES)) for n, (name, size) in enumerate(RO_FILES.items())}
    old = dict(os.environ)
    os.environ.update(seaweed.env())
    try:
        put_objects(f"s3://{bucket}", objects)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return bucket, objects


@pytest.fixture(scope="module")
def ro_mount(ro_data, seaweed, proxy, tmp_path_factory):
    bucket, objects = ro_data
    with mounted(bucket, tmp_path_factory.mktemp("ro") / "mnt", RO, env=proxy_env(seaweed, proxy)) as mnt:
        yield mnt, objects


@pytest.mark.parametrize("case", range(len(RO_CASES)), ids=[c[0] for c in RO_CASES])
def test_ro_mount(case, ro_mount, proxy, results, s3_env):
    name, fault, expected = RO_CASES[case]
    mnt, objects = ro_mount
    listed_by_fault = "LIST" in name
    if not listed_by_fault:
        assert sorted(os.listdir(mnt / f"case{case}")) == sorted(RO_FILES)  # lookups answered from here on
    fault(proxy)
    started = time.monotonic()
    if expected == "ok":
        if listed_by_fault:
            assert sorted(os.listdir(mnt / f"case{case}")) == sorted(RO_FILES)
        for fname in RO_FILES:
            assert file_sha(mnt / f"case{case}/{fname}") == sha(objects[f"case{case}/{fname}"])
        observed = "read succeeded, sha256 equal"
    else:
        with pytest.raises(OSError) as info:
            if listed_by_fault:
                os.listdir(mnt / f"case{case}")
            else:
                for fname in RO_FILES:
                    file_sha(mnt / f"case{case}/{fname}")
        assert info.value.errno == errno.EIO, info.value
        observed = f"EIO after {time.monotonic() - started:.1f}s"
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, f"{name}: took {elapsed:.1f}s"
    injected = proxy.fired
    proxy.passthrough()
    if expected != "ok":  # the mount works again as soon as the store answers
        for fname in RO_FILES:
            assert file_sha(mnt / f"case{case}/{fname}") == sha(objects[f"case{case}/{fname}"])
        observed += ", then reads correct again"
    results.record("ro mount", name, expected, injected, 0, elapsed, observed)


# ==================================================================================
# read-write mount
# ==================================================================================
RW_CASES = [
    ("503 SlowDown x2 on PUT", lambda p: p.error(503, "SlowDown", times=2, match=PUT), 1 * MiB, "ok"),
    ("500 InternalError x2 on PUT", lambda p: p.error(500, "InternalError", times=2, match=PUT), 1 * MiB, "ok"),
    ("upload cut mid-body x1", lambda p: p.cut_request(after=300_000, times=1), 2 * MiB, "ok"),
    ("multipart part cut mid-body x1", lambda p: p.cut_request(after=1 * MiB, times=1), 12 * MiB, "ok"),
    ("delay 500 ms", lambda p: p.delay(500), 1 * MiB, "ok"),
    ("503 SlowDown on every PUT", lambda p: p.error(503, "SlowDown", times=None, match=PUT), 1 * MiB, "EIO"),
    ("upload cut mid-body every time", lambda p: p.cut_request(after=300_000, times=None), 2 * MiB, "EIO"),
    ("multipart parts cut every time", lambda p: p.cut_request(after=1 * MiB, times=None), 12 * MiB, "EIO"),
    ("black hole on PUT", lambda p: p.blackhole(match=PUT), 1 * MiB, "EIO"),
]


@pytest.fixture(scope="module")
def rw_mount(seaweed, proxy, tmp_path_factory):
    bucket = make_bucket(seaweed)
    with mounted(bucket, tmp_path_factory.mktemp("rw") / "mnt", RW, env=proxy_env(seaweed, proxy)) as mnt:
        yield mnt, f"s3://{bucket}"


@pytest.mark.parametrize("case", range(len(RW_CASES)), ids=[c[0] for c in RW_CASES])
def test_rw_mount(case, rw_mount, proxy, results, s3_env):
    name, fault, size, expected = RW_CASES[case]
    mnt, url = rw_mount
    key = f"case{case}.bin"
    old, new = blob(1000 + case, 5000), blob(2000 + case, size)
    path = mnt / key
    path.write_bytes(old)  # the previous version, written through the mount (no fault yet)
    assert get_object(url, key) == old
    fault(proxy)
    started = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    for off in range(0, size, MiB):
        os.write(fd, new[off:off + MiB])
    if expected == "ok":
        os.close(fd)  # uploads
        want = new
        observed = "close() succeeded; the bucket holds the new bytes"
    else:
        with pytest.raises(OSError) as info:
            os.close(fd)
        assert info.value.errno == errno.EIO, info.value
        want = old
        observed = f"close() EIO after {time.monotonic() - started:.1f}s; the bucket holds the old bytes"
    elapsed = time.monotonic() - started
    assert elapsed < BOUND + (6 if size > 5 * MiB else 0), f"{name}: took {elapsed:.1f}s"
    injected = proxy.fired
    proxy.passthrough()
    found = get_object(url, key)
    assert sha(found) == sha(want), f"{name}: the bucket holds {len(found or b'')} bytes of something else"
    lost = bytes_lost(want, found)
    if expected != "ok":  # the mount works again: write the new bytes once more
        with open(path, "wb") as f:
            f.write(new)
        assert sha(get_object(url, key)) == sha(new)
        assert file_sha(path) == sha(new)
        observed += "; a second try succeeds"
    results.record("rw mount", name, expected, injected, lost, elapsed, observed)


# ==================================================================================
# pailfs cp
# ==================================================================================
CP_CASES = [
    ("upload: 503 SlowDown x2", "up", lambda p: p.error(503, "SlowDown", times=2, match=PUT), 1 * MiB, "ok"),
    ("upload: multipart part cut x1", "up", lambda p: p.cut_request(after=1 * MiB, times=1), 12 * MiB, "ok"),
    ("download: 500 InternalError x2", "down", lambda p: p.error(500, "InternalError", times=2, match=GET_OBJECT),
     1 * MiB, "ok"),
    ("download: cut mid-body x1", "down", lambda p: p.cut_response(after=1 * MiB, times=1), 12 * MiB, "ok"),
    ("upload: 503 SlowDown on every PUT", "up", lambda p: p.error(503, "SlowDown", times=None, match=PUT),
     1 * MiB, "error"),
    ("upload: multipart parts cut every time", "up", lambda p: p.cut_request(after=1 * MiB, times=None),
     12 * MiB, "error"),
    ("upload: black hole", "up", lambda p: p.blackhole(match=PUT), 1 * MiB, "error"),
    ("download: cut mid-body every time", "down", lambda p: p.cut_response(after=1 * MiB, times=None),
     12 * MiB, "error"),
    ("download: black hole", "down", lambda p: p.blackhole(match=GET_OBJECT), 1 * MiB, "error"),
]


@pytest.fixture(scope="module")
def cp_bucket(seaweed):
    return make_bucket(seaweed)


@pytest.mark.parametrize("case", range(len(CP_CASES)), ids=[c[0] for c in CP_CASES])
def test_cp(case, cp_bucket, seaweed, proxy, results, s3_env, tmp_path):
    name, direction, fault, size, expected = CP_CASES[case]
    url = f"s3://{cp_bucket}"
    key = f"case{case}.bin"
    old, new = blob(3000 + case, 4000), blob(4000 + case, size)
    local = tmp_path / "dl" / "file.bin"
    if direction == "up":
        put_objects(url, {key: old})
        src = tmp_path / "up.bin"
        src.write_bytes(new)
        args = ["cp", str(src), f"{url}/{key}", *CP_OPTS]
    else:
        put_objects(url, {key: new})
        local.parent.mkdir()
        args = ["cp", f"{url}/{key}", str(local), *CP_OPTS]
    fault(proxy)
    started = time.monotonic()
    proc = pailfs(*args, env=proxy_env(seaweed, proxy), timeout=BOUND + 30)
    elapsed = time.monotonic() - started
    injected = proxy.fired
    proxy.passthrough()
    err = proc.stderr.decode()
    if expected == "ok":
        assert proc.returncode == 0, err
        observed = "exit 0, sha256 equal"
    else:
        assert proc.returncode == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pailfs: "), err
        assert "Traceback" not in err
        observed = f"exit 1 after {elapsed:.1f}s: {lines[0][:150]}"
    assert elapsed < BOUND + 6, f"{name}: took {elapsed:.1f}s"
    lost = 0
    if direction == "up":
        found = get_object(url, key)
        want = new if expected == "ok" else old
        assert sha(found) == sha(want), f"{name}: the bucket holds {len(found or b'')} bytes of something else"
        lost = bytes_lost(want, found)
    else:
        if expected == "ok":
            assert file_sha(local) == sha(new)
        else:  # no partial download left behind, under its name or a temp name
            assert list(local.parent.iterdir()) == []
        lost = bytes_lost(new, get_object(url, key))
    results.record("pailfs cp", name, expected, injected, lost, elapsed, observed)


def test_cp_error_names_the_cause(cp_bucket, seaweed, proxy, s3_env, tmp_path):
    """The one line says what happened: SlowDown, timed out, broken mid-transfer."""
    url = f"s3://{cp_bucket}"
    put_objects(url, {"x.bin": blob(7, 2 * MiB)})
    env = proxy_env(seaweed, proxy)
    expect = {
        "SlowDown": lambda: proxy.error(503, "SlowDown", times=None, match=GET_OBJECT),
        "InternalError": lambda: proxy.error(500, "InternalError", times=None, match=GET_OBJECT),
        "timed out": lambda: proxy.blackhole(match=GET_OBJECT),
        "broken mid-transfer": lambda: proxy.cut_response(after=100_000, times=None),
    }
    for words, fault in expect.items():
        fault()
        proc = pailfs("cp", f"{url}/x.bin", str(tmp_path / "x.bin"), *CP_OPTS, env=env, timeout=60)
        proxy.passthrough()
        err = proc.stderr.decode().strip()
        assert proc.returncode == 1 and words in err and proxy.endpoint in err, err
        assert f"s3://{cp_bucket}/x.bin" in err, err


def test_cp_failure_exits_1_not_sigabrt(cp_bucket, seaweed, proxy, s3_env, tmp_path):
    """Regression: after a failed multipart download, obstore's tokio threads still
    resolved the cancelled parts while the interpreter finalized, and about one run
    in ten died of SIGABRT (exit 134) after printing its error line."""
    import subprocess
    import sys

    url = f"s3://{cp_bucket}"
    put_objects(url, {"abort.bin": blob(9, 12 * MiB)})
    proxy.cut_response(after=1 * MiB, times=None)
    env = proxy_env(seaweed, proxy)
    procs = [subprocess.Popen([sys.executable, "-m", "pailfs", "cp", f"{url}/abort.bin", str(tmp_path / f"{i}.bin"),
                               *CP_OPTS], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(8)]
    codes = []
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        codes.append((proc.returncode, err.decode().strip()))
    assert all(code == 1 and "broken mid-transfer" in err for code, err in codes), codes


# ==================================================================================
# Checkpointer
# ==================================================================================
CK_CASES = [
    ("503 SlowDown x2 on PUT", lambda p: p.error(503, "SlowDown", times=2, match=PUT), "ok"),
    ("upload cut mid-body x1", lambda p: p.cut_request(after=200_000, times=1), "ok"),
    ("503 SlowDown x2 on LIST", lambda p: p.error(503, "SlowDown", times=2, match=LIST), "ok"),
    ("delay 300 ms", lambda p: p.delay(300), "ok"),
    ("503 SlowDown on every PUT", lambda p: p.error(503, "SlowDown", times=None, match=PUT), "fail"),
    ("upload cut mid-body every time", lambda p: p.cut_request(after=200_000, times=None), "fail"),
    ("black hole on PUT", lambda p: p.blackhole(match=PUT), "fail"),
]
CK_FILES = {"model.bin": 3 * MiB + 7, "optimizer.bin": 600_000, "meta.json": 200}


@pytest.fixture(scope="module")
def ck_bucket(seaweed):
    return make_bucket(seaweed)


def ckpt_files(root: Path, seed: int) -> dict[str, bytes]:
    root.mkdir(parents=True, exist_ok=True)
    files = {name: blob(seed * 10 + n, size) for n, (name, size) in enumerate(CK_FILES.items())}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


@pytest.mark.parametrize("case", range(len(CK_CASES)), ids=[c[0] for c in CK_CASES])
def test_checkpointer(case, ck_bucket, seaweed, proxy, results, s3_env, tmp_path):
    name, fault, expected = CK_CASES[case]
    url = f"s3://{ck_bucket}/case{case}"
    ckpt = Checkpointer(url, max_to_keep=None, options=f"url={proxy.endpoint},{TIMEOUTS}")
    try:
        first = ckpt_files(tmp_path / "s1", case * 100 + 1)
        ckpt.save(1, tmp_path / "s1").result(30)
        second = ckpt_files(tmp_path / "s2", case * 100 + 2)
        fault(proxy)
        started = time.monotonic()
        fut = ckpt.save(2, tmp_path / "s2")
        if expected == "ok":
            fut.result(BOUND)
            observed = "save committed; restore() verifies every sha256"
        else:
            with pytest.raises(CheckpointError) as info:
                fut.result(BOUND + 10)
            assert "\n" not in str(info.value)
            cause = str(info.value).rsplit("(", 1)[-1].rstrip(")")
            observed = f"save failed after {time.monotonic() - started:.1f}s: CheckpointError (... {cause})"
            with pytest.raises(CheckpointError):
                ckpt.wait(30)  # raised once more, as documented
        elapsed = time.monotonic() - started
        injected = proxy.fired
        proxy.passthrough()
        assert ckpt.latest() == (2 if expected == "ok" else 1)
        want, step = (second, 2) if expected == "ok" else (first, 1)
        out = ckpt.restore(tmp_path / "restored", step)
        assert out.step == step
        lost = sum(bytes_lost(data, (tmp_path / "restored" / n).read_bytes()) for n, data in want.items())
        if expected != "ok":
            # the failed step is invisible: no manifest in the bucket (checked directly)
            assert f"case{case}/{2:010d}/pailfs-checkpoint.json" not in list_keys(f"s3://{ck_bucket}",
                                                                                  f"case{case}/")
            ckpt.save(3, tmp_path / "s2").result(30)  # and the next save works
            assert ckpt.latest() == 3
            observed += "; latest() stays 1, the next save commits"
        results.record("Checkpointer", name, expected, injected, lost, elapsed, observed)
    finally:
        proxy.passthrough()
        ckpt.close(timeout=30)


def test_checkpoint_restore_survives_a_cut_download(ck_bucket, proxy, results, s3_env, tmp_path):
    url = f"s3://{ck_bucket}/restore"
    with Checkpointer(url, options=f"url={proxy.endpoint},{TIMEOUTS}") as ckpt:
        files = ckpt_files(tmp_path / "src", 77)
        ckpt.save(5, tmp_path / "src").result(30)
        proxy.cut_response(after=500_000, times=2)
        started = time.monotonic()
        ckpt.restore(tmp_path / "dst")
        elapsed = time.monotonic() - started
        injected = proxy.fired
        for name, data in files.items():
            assert sha((tmp_path / "dst" / name).read_bytes()) == sha(data)
    results.record("Checkpointer", "restore: download cut mid-body x2", "ok", injected, 0, elapsed,
                   "restore() retried and verified every sha256")


# ==================================================================================
# kill -9 of SeaweedFS, then a restart on the same port
# ==================================================================================
@pytest.mark.mount
def test_kill9_and_restart(tmp_path, monkeypatch, results):
    """One server, all four surfaces: kill -9 while they are live, then restart it.

    The rw mount's upload is slowed by a delaying proxy so that the kill lands
    while it is in flight; the outcome must be EIO with the old bytes, or
    success with the new ones — never anything in between."""
    from pailfs.server import SeaweedServer

    data_dir = tmp_path / "srv"
    srv = SeaweedServer(data_dir)
    state = srv.start()
    ro_mnt, rw_mnt = tmp_path / "ro", tmp_path / "rw"
    ckpt = None
    try:
        bucket = make_bucket(srv)
        for var, value in srv.env().items():
            monkeypatch.setenv(var, value)
        url = f"s3://{bucket}"
        objects = {"data/a.bin": blob(1, 200_000), "data/b.bin": blob(2, 2 * MiB), "model.bin": blob(3, 5000)}
        put_objects(url, objects)
        new_model = blob(4, 12 * MiB)
        with FaultProxy(state.s3_port) as slow, \
                mounted(bucket, ro_mnt, RO) as ro, \
                mounted(bucket, rw_mnt, RW, env={**os.environ, "PAILFS_ENDPOINT": slow.endpoint}) as rw:
            ckpt = Checkpointer(f"{url}/ckpt", options=TIMEOUTS)
            ckpt.save(1, {"w.bin": blob(5, 100_000)}).result(30)
            assert file_sha(ro / "data/a.bin") == sha(objects["data/a.bin"])  # cached from now on
            assert sorted(os.listdir(ro / "data")) == ["a.bin", "b.bin"]

            # the rw upload is in flight (each request delayed) when the server dies
            fd = os.open(rw / "model.bin", os.O_WRONLY | os.O_TRUNC)
            os.write(fd, new_model)
            slow.delay(400)
            close_result: list[object] = []

            def close() -> None:
                try:
                    os.close(fd)
                    close_result.append("ok")
                except OSError as exc:
                    close_result.append(exc)

            closer = threading.Thread(target=close)
            closer.start()
            time.sleep(0.6)
            started = time.monotonic()
            kill9(srv)
            closer.join(BOUND + 10)
            assert not closer.is_alive(), "close() hung after kill -9"
            slow.passthrough()
            rw_outcome = close_result[0]
            assert rw_outcome == "ok" or (isinstance(rw_outcome, OSError) and rw_outcome.errno == errno.EIO)

            # while the server is dead
            with pytest.raises(OSError) as info:
                file_sha(ro / "data/b.bin")
            assert info.value.errno == errno.EIO
            assert file_sha(ro / "data/a.bin") == sha(objects["data/a.bin"])  # cached data still served
            proc = pailfs("cp", f"{url}/data/b.bin", str(tmp_path / "b.bin"), *CP_OPTS, timeout=60)
            err = proc.stderr.decode().strip()
            assert proc.returncode == 1 and len(err.splitlines()) == 1 and "connection refused" in err, err
            fut = ckpt.save(2, {"w.bin": blob(6, 100_000)})
            with pytest.raises(CheckpointError):
                fut.result(BOUND + 10)
            with pytest.raises(CheckpointError):
                ckpt.wait(10)
            dead_for = time.monotonic() - started

            srv = restart(data_dir, state.s3_port)
            # everything works again, and nothing was lost
            found = get_object_after_restart(url, "model.bin")
            want = new_model if rw_outcome == "ok" else objects["model.bin"]
            assert sha(found) == sha(want)
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert file_sha(ro / "data/b.bin") == sha(objects["data/b.bin"])
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            with open(rw / "model.bin", "wb") as f:
                f.write(new_model)
            assert sha(get_object(url, "model.bin")) == sha(new_model)
            assert ckpt.latest() == 1
            ckpt.save(3, {"w.bin": blob(7, 100_000)}).result(30)
            assert ckpt.latest() == 3
            proc = pailfs("cp", f"{url}/data/b.bin", str(tmp_path / "b.bin"), *CP_OPTS, timeout=60)
            assert proc.returncode == 0 and file_sha(tmp_path / "b.bin") == sha(objects["data/b.bin"])
            lost = sum(bytes_lost(data, get_object(url, key)) for key, data in objects.items() if key != "model.bin")
            lost += bytes_lost(want, found)
            outcome = "EIO, old bytes kept" if rw_outcome != "ok" else "upload had finished, new bytes"
            results.record("all four", "kill -9 of SeaweedFS, restart on the same port", "EIO/error, then recovery",
                           4, lost, dead_for,
                           f"ro: EIO for uncached data, cached data served; rw close: {outcome}; cp: exit 1 "
                           "'connection refused'; Checkpointer: save failed, latest() kept; all recovered")
    finally:
        if ckpt is not None:
            ckpt.close(timeout=10)
        SeaweedServer(data_dir).stop(timeout=3)


# ==================================================================================
# regression: a file reopened while its failed upload is retried on release
# ==================================================================================
@pytest.mark.parametrize("reopen", ["open, write", "truncate(0), open, write"])
def test_reopen_while_release_retries_a_failed_upload(reopen, tmp_path):
    """close() → FLUSH fails (EIO) → the kernel's RELEASE retries the upload in the
    background; a writer that reopens the file meanwhile shares its staged file.
    The failed retry used to close that staged file under the new writer (EBADF;
    a reused fd number could even have sent its bytes into another file)."""
    import asyncio

    from pailfs.config import parse_options
    from pailfs.errors import StoreUnavailable
    from pailfs.fs.core import ObjectFileSystem
    from pailfs.fs.types import ROOT_INO, SetAttr
    from pailfs.store import open_store

    (tmp_path / "bucket").mkdir()

    async def main() -> bytes:
        opts = parse_options(["stat_cache_expire=60"], env={})
        store = open_store(f"file://{tmp_path / 'bucket'}", opts)
        real_put_file = store.put_file
        gate = asyncio.Event()
        failing = True

        async def put_file(key, path, metadata=None, progress=None, **kwargs):
            if failing:
                await gate.wait()
                raise StoreUnavailable(f"write {key}: cannot reach the store (injected)")
            return await real_put_file(key, path, metadata, progress, **kwargs)

        store.put_file = put_file  # type: ignore[method-assign]
        fs = ObjectFileSystem(store, opts)
        fs.attach(asyncio.get_running_loop())
        try:
            node, fh1 = await fs.create(ROOT_INO, "model.bin", 0o644, os.O_WRONLY | os.O_CREAT)
            await fs.write(node.ino, fh1, 0, b"first version")
            release = asyncio.ensure_future(fs.release(node.ino, fh1))  # its upload waits at the gate
            await asyncio.sleep(0.05)
            truncate = None
            if reopen.startswith("truncate"):  # what open(O_TRUNC) becomes without atomic_o_trunc
                truncate = asyncio.ensure_future(fs.setattr(node.ino, None, SetAttr(size=0)))
                await asyncio.sleep(0.05)
            fh2 = await fs.open(node.ino, os.O_WRONLY)
            write = asyncio.ensure_future(fs.write(node.ino, fh2, 0, b"SECOND"))  # waits for the upload
            await asyncio.sleep(0.05)
            gate.set()
            await release  # the retry fails
            failing = False
            if truncate is not None:
                await truncate
            assert await write == 6  # EBADF before the fix
            await fs.flush(node.ino, fh2)
            await fs.release(node.ino, fh2)
            return await store.get("model.bin")
        finally:
            await fs.close()
            await store.close()

    want = b"SECONDversion" if reopen == "open, write" else b"SECOND"
    assert asyncio.run(main()) == want


# ==================================================================================
# issue 14: a failed write poisons the file; a failed upload shows the bucket again
# ==================================================================================
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 20 MiB tmpfs (root only) for staging_dir: the staging disk fills up."""
    import subprocess

    path = tmp_path / "tmpfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("diskfree", [0, 5], ids=["full disk", "ensure_diskfree=5"])
def test_full_staging_dir_poisons_the_write(diskfree, small_tmpfs, bucket, s3_env, tmp_path, results):
    """50 MiB written with O_TRUNC over an object through a 20 MiB staging disk: write()
    fails with ENOSPC, every later write and close() report it, nothing is uploaded."""
    import shutil

    url = f"s3://{bucket}"
    old = blob(40, 100_000)
    put_objects(url, {"big.bin": old})
    opts = f"stat_cache_expire=60,staging_dir={small_tmpfs}" + (f",ensure_diskfree={diskfree}" if diskfree else "")
    new = blob(41, MiB)
    with mounted(bucket, tmp_path / "mnt", opts) as mnt:
        started = time.monotonic()
        fd = os.open(mnt / "big.bin", os.O_WRONLY | os.O_TRUNC)
        written, failure = 0, None
        try:
            for _ in range(50):
                try:
                    written += os.write(fd, new)
                except OSError as exc:
                    failure = exc
                    break
            with pytest.raises(OSError) as again:
                os.write(fd, b"x")  # poisoned: even a byte that would fit
        finally:
            with pytest.raises(OSError) as closed:
                os.close(fd)
        elapsed = time.monotonic() - started
        assert failure is not None and failure.errno == errno.ENOSPC, failure
        assert written < (20 - diskfree) * MiB
        assert again.value.errno == errno.ENOSPC and closed.value.errno == errno.ENOSPC
        assert get_object(url, "big.bin") == old  # nothing was uploaded
        assert os.stat(mnt / "big.bin").st_size == len(old)  # the mount shows the bucket again
        assert (mnt / "big.bin").read_bytes() == old
        assert shutil.disk_usage(small_tmpfs).used < MiB  # the partial staged file is gone
        (mnt / "after.bin").write_bytes(b"still works")
        assert get_object(url, "after.bin") == b"still works"
    results.record("rw mount", "staging_dir full (20 MiB tmpfs" + (", ensure_diskfree=5" if diskfree else "")
                   + "), 50 MiB O_TRUNC write over an object", "ENOSPC, old object kept", 1, 0, elapsed,
                   f"write() ENOSPC after {written // MiB} MiB, later writes and close() ENOSPC; "
                   "the bucket and stat show the old object; staged data dropped")


def test_failed_part_upload_poisons_a_streamed_write(seaweed, proxy, bucket, s3_env, tmp_path, results):
    """Data beyond max_dirty_data streams into a multipart upload; a part that cannot be
    uploaded fails the next write and close() (EIO), and the upload is aborted."""
    from mounts import uploads_in_progress, wait_for

    url = f"s3://{bucket}"
    old = blob(42, 5000)
    put_objects(url, {"stream.bin": old})
    opts = "stat_cache_expire=60,max_dirty_data=5,multipart_size=5," + TIMEOUTS
    with mounted(bucket, tmp_path / "mnt", opts, env=proxy_env(seaweed, proxy)) as mnt:
        fd = os.open(mnt / "stream.bin", os.O_WRONLY | os.O_TRUNC)
        chunk = blob(43, MiB)
        for _ in range(6):
            os.write(fd, chunk)
        proxy.error(503, "SlowDown", times=None, match=PUT)  # every part from now on
        started = time.monotonic()
        failure = None
        try:
            for _ in range(5):  # fills part 2, which goes up in the background and fails
                os.write(fd, chunk)
            while failure is None and time.monotonic() - started < BOUND:
                try:  # the writer learns it at its next write
                    os.write(fd, b"x")
                except OSError as exc:
                    failure = exc
        finally:
            with pytest.raises(OSError) as closed:
                os.close(fd)
        elapsed = time.monotonic() - started
        injected = proxy.fired
        proxy.passthrough()
        assert failure is not None and failure.errno == errno.EIO
        assert closed.value.errno == errno.EIO
        assert elapsed < BOUND
        assert get_object(url, "stream.bin") == old
        wait_for(lambda: uploads_in_progress(url, bucket, "stream.bin") == {})  # aborted
        assert (mnt / "stream.bin").read_bytes() == old
    results.record("rw mount", "part upload fails mid-stream (503 on every PUT, max_dirty_data=5)",
                   "EIO, old object kept", injected, 0, elapsed,
                   "the next write() and close() EIO; multipart upload aborted; old object kept")


def test_failed_upload_then_stat_shows_the_bucket(private_server, tmp_path, results):
    """The server stops during a 100 MiB write: close() gives EIO and the staged data is
    kept; once the server is back, stat/ls/read on the mount show what the bucket holds
    (the old object; a file that never reached the bucket is gone)."""
    from conftest import restart as restart_private

    srv, state, bucket = private_server
    url = f"s3://{bucket}"
    old = blob(44, 3000)
    put_objects(url, {"model.bin": old})
    staging = tmp_path / "staging"
    opts = f"stat_cache_expire=60,readwrite_timeout=3,connect_timeout=2,retries=0,staging_dir={staging}"
    chunk = blob(45, MiB)
    with mounted(bucket, tmp_path / "mnt", opts) as mnt:
        assert os.stat(mnt / "model.bin").st_size == len(old)
        fd = os.open(mnt / "model.bin", os.O_WRONLY | os.O_TRUNC)
        fresh_fd = os.open(mnt / "fresh.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        for i in range(100):
            if i == 50:
                srv.stop(timeout=3)  # mid-write
            os.write(fd, chunk)
        os.write(fresh_fd, b"never uploaded")
        started = time.monotonic()
        for handle in (fd, fresh_fd):
            with pytest.raises(OSError) as info:
                os.close(handle)
            assert info.value.errno == errno.EIO
        elapsed = time.monotonic() - started
        restart_private(state, tmp_path)
        deadline = time.monotonic() + 30
        while True:  # SeaweedFS answers 500 for a moment while it loads its volumes
            try:  # (its filer answers HEAD and LIST before its volume server answers GET)
                st = os.stat(mnt / "model.bin")
                content = (mnt / "model.bin").read_bytes()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert st.st_size == len(old)
        assert content == old
        assert {e.name: e.stat().st_size for e in os.scandir(mnt)} == {"model.bin": len(old)}
        kept = sorted(p.stat().st_size for p in staging.rglob("ino*"))
        assert kept == [len(b"never uploaded"), 100 * MiB]  # the staged data was kept, whole
    assert get_object_after_restart(url, "model.bin") == old and get_object(url, "fresh.bin") is None
    results.record("rw mount", "server stopped during a 100 MiB write", "EIO; stat shows the bucket", 1, 0, elapsed,
                   "close() EIO, staged data kept; after the restart stat/ls/read show the old object, "
                   "the never-uploaded file is gone")


def test_metadata_change_that_cannot_be_stored_is_undone(seaweed, proxy, bucket, s3_env, tmp_path, results):
    """chmod/utime/setxattr whose copy onto itself fails: EIO, and the mount shows what
    the bucket holds (never EIO with a changed result)."""
    url = f"s3://{bucket}"
    with mounted(bucket, tmp_path / "mnt", "stat_cache_expire=60," + TIMEOUTS, env=proxy_env(seaweed, proxy)) as mnt:
        (mnt / "f").write_bytes(b"data")
        os.mkdir(mnt / "d")
        before = {n: os.stat(mnt / n) for n in ("f", "d")}
        proxy.error(503, "SlowDown", times=None, match=PUT)  # a copy is a PUT, so is a metadata object
        started = time.monotonic()
        for call in (lambda: os.chmod(mnt / "f", 0o600), lambda: os.utime(mnt / "f", (1, 1)),
                     lambda: os.setxattr(mnt / "f", "user.k", b"v"), lambda: os.chmod(mnt / "d", 0o700)):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EIO
        elapsed = time.monotonic() - started
        injected = proxy.fired
        proxy.passthrough()
        for name, st in before.items():
            again = os.stat(mnt / name)
            assert (again.st_mode, again.st_mtime_ns, again.st_ctime_ns) == (st.st_mode, st.st_mtime_ns, st.st_ctime_ns)
        assert os.listxattr(mnt / "f") == []
        assert get_object(url, "f") == b"data"
    results.record("rw mount", "chmod/utime/setxattr while every PUT fails", "EIO, nothing changed", injected, 0,
                   elapsed, "EIO; stat and listxattr show the unchanged inode")
