"""`pailfs server`: the embedded SeaweedFS leaves nothing behind outside its data dir."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mounts import pailfs

# every test here starts (or means to start) a SeaweedFS of its own through `pailfs server`
pytestmark = pytest.mark.server


def _weed_files_in_tmp() -> set[str]:
    return {p.name for p in Path("/tmp").iterdir() if p.name.startswith(("seaweedfs-", "weed."))}


def test_server_start_and_stop_leave_nothing_in_tmp(tmp_path):
    data = tmp_path / "srv"
    before = _weed_files_in_tmp()
    started = time.time()
    pailfs("server", "start", "--data-dir", str(data), check=True)
    try:
        ports = json.loads((data / "server.json").read_text())["ports"]
        status = pailfs("server", "status", "--data-dir", str(data), check=True)
        assert "127.0.0.1" in status.stdout.decode()
    finally:
        stop = pailfs("server", "stop", "--data-dir", str(data))
    assert stop.returncode == 0, stop.stderr.decode()
    assert pailfs("server", "status", "--data-dir", str(data)).returncode == 3
    left = _weed_files_in_tmp() - before
    # only files of other servers started meanwhile (other tests) may appear, never ours
    ours = {f"seaweedfs-{kind}-grpc-{ports[f'{kind}_grpc']}.sock" for kind in ("master", "volume", "filer", "s3")}
    assert not left & ours
    assert not [n for n in left if n.startswith("weed.") and os.stat(f"/tmp/{n}").st_mtime >= started]
    assert (data / "weed.log").stat().st_size > 0  # weed's log went to the data dir instead


def test_a_killed_server_leaves_nothing_once_started_again(tmp_path):
    """kill -9 gives weed no chance to clean up; the next start removes its sockets."""
    import signal

    data = tmp_path / "srv"
    pailfs("server", "start", "--data-dir", str(data), check=True)
    try:
        old = json.loads((data / "server.json").read_text())
        os.killpg(old["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pailfs("server", "status", "--data-dir", str(data)).returncode != 3:
            assert time.monotonic() < deadline, "the killed server still shows as running"
            time.sleep(0.2)
        pailfs("server", "start", "--data-dir", str(data), check=True)
    finally:
        pailfs("server", "stop", "--data-dir", str(data))
    for kind in ("master", "volume", "filer", "s3"):
        assert not Path(f"/tmp/seaweedfs-{kind}-grpc-{old['ports'][f'{kind}_grpc']}.sock").exists()


def _one_line_error(proc) -> str:
    err = proc.stderr.decode()
    assert proc.returncode != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pailfs: "), err
    return lines[0]


def _weed_of(data: Path) -> list[int]:
    """Running weed processes serving the data dir `data`."""
    from pailfs.procs import argv_of, pid_running

    wanted = {f"-dir={data / 'data'}", f"-dir={data.resolve() / 'data'}"}
    return [int(e) for e in os.listdir("/proc") if e.isdigit()
            and wanted & set(argv_of(int(e)) or []) and pid_running(int(e))]


# ==================================================================================
# the data dir: never chmodded, refused when shared or not pailfs's (#14.6)
# ==================================================================================
def test_a_shared_or_foreign_data_dir_is_refused_and_keeps_its_mode(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    line = _one_line_error(pailfs("server", "start", "--data-dir", str(shared)))
    assert "can be written by other users (mode 1777)" in line and "give a new path" in line
    assert shared.stat().st_mode & 0o7777 == 0o1777 and os.listdir(shared) == []
    assert not _weed_of(shared)

    busy = tmp_path / "busy"
    busy.mkdir(mode=0o755)
    (busy / "notes.txt").write_text("the user's")
    line = _one_line_error(pailfs("server", "start", "--data-dir", str(busy)))
    assert "not empty and was not created by pailfs" in line
    assert os.listdir(busy) == ["notes.txt"] and busy.stat().st_mode & 0o7777 == 0o755

    # an empty directory of the user's that nobody else can write to is taken as it is
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o750)
    pailfs("server", "start", "--data-dir", str(empty), check=True)
    try:
        assert empty.stat().st_mode & 0o7777 == 0o750
        assert (empty / ".pailfs-server").is_file()
        for name in ("credentials.json", "security.toml", "tls/node.key", "server.json"):
            assert (empty / name).stat().st_mode & 0o077 == 0, name
        assert (empty / "data").stat().st_mode & 0o077 == 0
    finally:
        pailfs("server", "stop", "--data-dir", str(empty), check=True)
    # the path the message suggests: status creates nothing there, start makes it 0700
    fresh = shared / "pailfs-seaweedfs"
    assert pailfs("server", "status", "--data-dir", str(fresh)).returncode == 3
    assert not fresh.exists()
    from pailfs.server import SeaweedServer

    SeaweedServer(fresh).claim_data_dir()
    assert fresh.stat().st_mode & 0o7777 == 0o700 and (fresh / ".pailfs-server").is_file()
    assert shared.stat().st_mode & 0o7777 == 0o1777


# ==================================================================================
# stop kills only the weed this data dir started (#14.7)
# ==================================================================================
def test_stop_never_kills_a_process_that_took_the_recorded_pid(tmp_path):
    """A server that died leaves server.json behind; its pid may now be another
    process. `stop` must see that and kill nothing."""
    import subprocess
    import sys

    data = tmp_path / "srv"
    pailfs("server", "start", "--data-dir", str(data), check=True)
    pailfs("server", "stop", "--data-dir", str(data), check=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        # what an earlier server left: the bystander's pid, and then also its start time
        from pailfs.procs import start_time

        for started in (None, start_time(bystander.pid)):
            (data / "server.json").write_text(json.dumps({
                "pid": bystander.pid, "endpoint": "http://127.0.0.1:1", "s3_port": 1, "ports": {},
                "started": started, "data": str(data / "data")}))
            proc = pailfs("server", "stop", "--data-dir", str(data))
            assert proc.returncode == 0 and proc.stdout.decode().strip() == "not running", proc.stderr
            assert bystander.poll() is None, "pailfs server stop killed a process it did not start"
            assert not (data / "server.json").exists()  # the stale state is gone
    finally:
        bystander.kill()
        bystander.wait()


# ==================================================================================
# bad input starts nothing (#20.4, #14.13)
# ==================================================================================
@pytest.mark.parametrize("args, expected", [
    (["--bucket", "ml"], "bucket name 'ml' is not valid: S3 bucket names are 3-63 characters"),
    (["--bucket", "Data_Set"], "bucket name 'Data_Set' is not valid"),
    (["--bucket", "xn--abc"], "bucket name 'xn--abc' is not valid"),
    (["--bucket", "192.168.1.2"], "bucket name '192.168.1.2' is not valid"),
    (["--port", "99999"], "port 99999 is out of range (1-65535)"),
    (["--port", "0"], "port 0 is out of range (1-65535)"),
    (["--port", "http"], "Invalid value for '--port'"),
])
def test_bad_start_arguments_start_nothing(args, expected, tmp_path):
    """`--bucket ml` printed "HTTP 400" and left the server running."""
    data = tmp_path / "srv"
    assert expected in _one_line_error(pailfs("server", "start", "--data-dir", str(data), *args))
    assert not _weed_of(data)
    assert pailfs("server", "status", "--data-dir", str(data)).returncode == 3


def test_a_taken_port_is_one_line_and_starts_nothing(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        data = tmp_path / "srv"
        line = _one_line_error(pailfs("server", "start", "--data-dir", str(data), "--port", str(port)))
        assert f"port {port} on 127.0.0.1 cannot be used" in line
        assert not _weed_of(data)


# ==================================================================================
# no port of the server lets another local user in (#14.10)
# ==================================================================================
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def _server_listeners(pgid: int) -> tuple[set[int], set[str]]:
    """TCP ports and unix socket paths the processes of a process group listen on
    (their socket inodes in /proc/PID/fd, matched in /proc/net/tcp{,6} and unix)."""
    inodes: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    sockets = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[6] in inodes and int(cols[3], 16) & 0x10000:  # __SO_ACCEPTCON
            sockets.add(cols[7])
    return ports, sockets


def _hs256(key: str, claims: dict) -> str:
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    return (head + b"." + b64(hmac.new(key.encode(), head, hashlib.sha256).digest())).decode()


def _file_id_as_owner(srv, state, bucket: str, key: str) -> str:
    """The volume file id of an object, asked from the filer with the owner's client
    certificate and a filer read token signed with the key of security.toml."""
    import http.client
    import ssl
    import tomllib

    path = f"/buckets/{bucket}/{key}?metadata=true"
    security = srv.data_dir / "security.toml"
    if security.exists():
        read_key = tomllib.loads(security.read_text())["jwt"]["filer_signing"]["read"]["key"]
        ctx = ssl.create_default_context(cafile=str(srv.data_dir / "tls" / "ca.crt"))
        ctx.check_hostname = False
        ctx.load_cert_chain(srv.data_dir / "tls" / "node.crt", srv.data_dir / "tls" / "node.key")
        conn = http.client.HTTPSConnection(BIND, state.ports["filer"], context=ctx, timeout=10)
        headers = {"Authorization": "Bearer " + _hs256(read_key, {"exp": int(time.time()) + 60})}
    else:  # a server without security.toml (before this test's fix) answers anyone
        conn = http.client.HTTPConnection(BIND, state.ports["filer"], timeout=10)
        headers = {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, (resp.status, body[:200])
    return json.loads(body)["chunks"][0]["file_id"]


def _python_for_nobody() -> str:
    import shutil
    import subprocess
    import sys

    for cand in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if cand and subprocess.run([*NOBODY, cand, "-c", "import ssl, http.client"],
                                   capture_output=True).returncode == 0:
            return cand
    raise AssertionError("no Python interpreter that uid 65534 can run")


BIND = "127.0.0.1"


def test_no_port_of_the_server_lets_another_local_user_in(private_server):
    """Every TCP port and unix socket the server's processes listen on, tried as uid
    65534 with HTTP GET/PUT/POST/DELETE (filer, S3, volume and master paths:
    /dir/assign, /dir/lookup, direct volume reads of the object's real file id,
    /col/delete) over plain HTTP and over TLS without a client certificate, and a
    gRPC (HTTP/2) connect plain and over TLS: nothing is read, changed or handed out.
    pailfs, through signed S3 requests, still reads and writes."""
    import asyncio
    import secrets
    import subprocess

    from mounts import get_object, list_keys, put_objects

    srv, state, bucket = private_server
    url = f"s3://{bucket}"
    marker = "secret-" + secrets.token_hex(16)
    data = (marker.encode() + b"\n") * (1024 * 1024 // (len(marker) + 1))  # 1 MiB: stored in volume chunks
    put_objects(url, {"dir/model.bin": data})
    fid = _file_id_as_owner(srv, state, bucket, "dir/model.bin")  # the owner can find it

    ports, sockets = _server_listeners(state.pid)
    expected = {state.s3_port, *state.ports.values()}
    assert ports == expected, f"unexpected listening ports: {sorted(ports - expected)}"
    assert sockets, "the server has unix sockets (filer, s3, gRPC) that must be tried too"
    probe = Path(__file__).with_name("portprobe.py").read_text()
    args = {"ports": sorted(ports), "sockets": sorted(sockets), "bucket": bucket, "key": "dir/model.bin",
            "fid": fid, "marker": marker}
    proc = subprocess.run([*NOBODY, _python_for_nobody(), "-c", probe, json.dumps(args)],
                          capture_output=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr.decode()
    results = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(results) >= len(ports) * 34 + len(sockets) * 17  # every attempt reported
    leaks = [r for r in results if r["leak"]]
    assert not leaks, f"another user got in: {leaks[:5]}"
    admitted = [r for r in results if r["status"] is not None and 200 <= r["status"] < 300]
    assert not admitted, f"another user was answered 2xx: {admitted[:5]}"
    assert all(r["status"] is None for r in results if r["where"] in sockets), "a unix socket let uid 65534 connect"
    # what the attempts would have changed is intact, and pailfs itself still works
    assert get_object(url, "dir/model.bin") == data
    assert list_keys(url) == ["dir/model.bin"]
    put_objects(url, {"after.txt": b"still works"})
    assert get_object(url, "after.txt") == b"still works"
    assert asyncio.run(asyncio.sleep(0)) is None


def test_a_failure_after_the_launch_stops_the_server_it_started(tmp_path, monkeypatch):
    """Whatever fails once weed runs (here: bucket creation, made to fail), the server
    this call started does not stay behind."""
    from pailfs.server import SeaweedServer, ServerError

    srv = SeaweedServer(tmp_path / "srv")

    async def refuse(state, buckets):
        raise ServerError("bucket creation failed (injected)")

    monkeypatch.setattr(srv, "_create_buckets", refuse)
    with pytest.raises(ServerError, match="injected"):
        srv.start(["good-name"])
    assert not _weed_of(tmp_path / "srv")
    assert SeaweedServer(tmp_path / "srv").state() is None


def test_the_new_secrets_stay_in_private_files(private_server):
    """The JWT keys and the node key exist only in 0600 files of the 0700 data dir:
    not in weed's argv (`ps`), not in weed.log, not in the environment weed got."""
    import tomllib

    from pailfs.procs import argv_of

    srv, state, _bucket = private_server
    security = tomllib.loads((srv.data_dir / "security.toml").read_text())
    keys = [security["jwt"]["signing"]["key"], security["jwt"]["signing"]["read"]["key"],
            security["jwt"]["filer_signing"]["key"], security["jwt"]["filer_signing"]["read"]["key"]]
    assert len(set(keys)) == 4 and all(len(k) == 64 for k in keys)
    node_key = (srv.data_dir / "tls" / "node.key").read_text().splitlines()[1]
    public = " ".join(argv_of(state.pid)) + Path(f"/proc/{state.pid}/environ").read_bytes().decode(errors="replace")
    public += srv.log_file.read_text(errors="replace")
    assert not [k for k in [*keys, node_key] if k in public]
    for path in [srv.data_dir / "security.toml", *(srv.data_dir / "tls").iterdir()]:
        assert path.stat().st_mode & 0o077 == 0, path
    assert not (srv.data_dir / "tls" / "ca.key").exists()  # the CA signs once and is forgotten


@pytest.mark.unit
def test_a_process_whose_main_thread_exited_runs_until_its_last_thread_does():
    """weed's main thread turns zombie before its other threads let go of the gRPC
    sockets; `server stop` must wait for those threads, or the sockets stay bound
    when it removes them (seen in CI: three weed sockets left in /tmp)."""
    import subprocess
    import sys

    from pailfs.procs import pid_running

    # the main thread leaves through the exit syscall (not exit_group): the worker
    # thread keeps the process alive until it reads a line from stdin
    script = (
        "import ctypes, sys, threading\n"
        "threading.Thread(target=sys.stdin.readline).start()\n"
        "print('ready', flush=True)\n"
        "ctypes.CDLL(None).syscall(60, 0)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the main thread did not exit"
            time.sleep(0.01)
        assert pid_running(proc.pid)  # the leader is a zombie, its worker thread is not
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        while pid_running(proc.pid):
            assert time.monotonic() < deadline, "the process did not finish"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
