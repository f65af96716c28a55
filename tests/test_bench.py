"""`pailfs bench`: the end-to-end run on a tiny data set (structure, not speed),
plus the pieces that can be checked on their own (data set, latency proxy)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pailfs.bench.dataset import MNIST, DatasetSpec, generate
from pailfs.bench.proxy import LatencyProxy

SYSTEMS = ("pailfs-ro", "pailfs-ro-half", "pailfs-rw", "s3fs", "rclone", "sdk", "local")
READS = ("mnist", "walk", "read1", "read1-open", "read8", "big", "big-ranged", "loader", "imagefolder", "warmup")
WRITES = ("create", "write-big")
WRITABLE = ("pailfs-rw", "s3fs", "sdk", "local")


def _runs(system: str, workload: str) -> bool:
    """Which cells the bench runs: writes on writable systems, open() not on the SDK,
    the ranged download on the SDK only, the half-size stat cache on ImageFolder only."""
    if system == "pailfs-ro-half":
        return workload == "imagefolder"
    if workload == "big-ranged":
        return system == "sdk"
    return (workload in READS or system in WRITABLE) and not (system == "sdk" and workload == "read1-open")


def _fuse_mounts_under(path: str) -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(path)]


@pytest.mark.mount
@pytest.mark.timeout(240)
def test_bench_quick_end_to_end(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the bench's work dir (mounts, server) lands here
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pailfs", "bench", "--quick", "--files", "60", "--big-mib", "2", "--budget", "1",
         "--repeat", "1", "--latency-ms", "1", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=230, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _fuse_mounts_under(str(tmp_path)), "a mount was left behind"

    # stdout: the markdown tables
    assert "### Seconds (median; lower is better)" in proc.stdout
    assert "### Ratio to s3fs-fuse" in proc.stdout and "### Ratio to local disk" in proc.stdout

    # the three files
    results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    png = (out / "chart.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    # a row per system, workload and pass
    assert [s["name"] for s in results["systems"]] == list(SYSTEMS)
    assert all(s["verified"] == "ok" for s in results["systems"])
    rows = {(r["system"], r["workload"], r["phase"]): r for r in results["results"]}
    for system in SYSTEMS:
        for wl in READS + WRITES:
            for phase in ("cold", "warm"):
                row = rows[(system, wl, phase)]
                runs = _runs(system, wl)
                assert row["status"] == ("ok" if runs else "n/a"), row
                if runs:
                    assert row["seconds"]["median"] > 0 and row["seconds"]["n"] == 1
                    assert row["fs_cpu"] >= 0
                    assert row["proxy_cpu"] >= 0  # the latency proxy's own CPU, per pass
    for wl in results["workloads"]:
        assert wl["title"] in md
    # pailfs's own count of store requests: the ImageFolder case with half the stat cache
    # lists each directory about once (folder/ and its 10 classes; walked ahead by the kernel)
    half = rows[("pailfs-ro-half", "imagefolder", "cold")]["store"]
    assert half["get"] >= 60 and half["list"] <= 14, half
    assert "### pailfs's store requests per pass" in md and "### CPU seconds of the latency proxy" in md
    # metadata memory for every mount
    assert {m["system"] for m in results["memory"]} == {"pailfs-ro", "pailfs-rw", "s3fs", "rclone"}
    # the checkpoint row: numbers, or an explicit "not available"
    ck = results["checkpoint"]
    if ck["available"]:
        assert ck["stall"]["median"] > 0 and ck["sync"]["median"] > 0 and ck["total"]["median"] > 0
    else:
        assert ck["reason"].startswith("not available")
    assert "### Checkpoint" in md
    assert results["machine"]["nproc"] >= 1 and "seaweedfs" in results["machine"]["versions"]
    assert elapsed < 200


def test_cli_defaults_are_the_bench_defaults():
    """The CLI spells the defaults out (importing the bench would slow every command)."""
    from pailfs.bench.systems import DEFAULT_SYSTEMS
    from pailfs.bench.workloads import DEFAULT_WORKLOADS
    from pailfs.cli import bench

    assert bench.DEFAULT_SYSTEMS.split(",") == list(DEFAULT_SYSTEMS)
    assert bench.DEFAULT_WORKLOADS.split(",") == list(DEFAULT_WORKLOADS)


def test_unknown_system_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pailfs", "bench", "--systems", "s3fs,nfs", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "unknown system(s) nfs" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dataset_is_deterministic():
    spec = DatasetSpec(files=30, big_bytes=1 << 20, seed=7)
    first = [(k, len(d), hash(d)) for k, d in generate(spec)]
    again = [(k, len(d), hash(d)) for k, d in generate(spec)]
    assert first == again
    keys = [k for k, _, _ in first]
    assert keys[:4] == [f"mnist/{name}" for name, _ in MNIST]
    assert [n for _, n, _ in first[:4]] == [size for _, size in MNIST]
    folder = [(k, n) for k, n, _ in first if k.startswith("folder/")]
    assert len(folder) == 30 and len({k.split("/")[1] for k, _ in folder}) == 10
    assert all(2048 <= n <= 4096 for _, n in folder)
    assert first[-1][:2] == ("big/big.bin", 1 << 20)
    other = [(k, len(d), hash(d)) for k, d in generate(DatasetSpec(files=30, big_bytes=1 << 20, seed=8))]
    assert other != first


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_latency_proxy_delays_each_direction_and_keeps_bytes():
    srv, port = _echo_server()
    try:
        with LatencyProxy("127.0.0.1", port, delay_ms=40) as proxy:
            async def round_trip() -> tuple[float, bytes, float]:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                t0 = time.perf_counter()
                writer.write(b"ping")
                await writer.drain()
                first = await reader.readexactly(4)
                rtt = time.perf_counter() - t0
                payload = os.urandom(4 << 20)  # bandwidth is kept: 4 MiB does not cost 4 MiB / chunk x delay
                t0 = time.perf_counter()
                writer.write(payload)
                await writer.drain()
                back = await reader.readexactly(len(payload))
                bulk = time.perf_counter() - t0
                writer.close()
                assert back == payload
                return rtt, first, bulk

            rtt, first, bulk = asyncio.run(round_trip())
        assert first == b"ping"
        assert 0.08 <= rtt < 1.0  # 40 ms there + 40 ms back
        assert bulk < 2.0
    finally:
        srv.close()
