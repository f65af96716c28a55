"""Handing a live mount to a new pailfs process — an upgrade — with no error for readers.

A serving daemon listens on a unix socket of its own, one per mount point, in
its control directory (`control_path`). A successor (`pailfs mount --takeover
MNT`, or the CSI plugin's daemons after a plugin upgrade) connects and asks what
is mounted ("describe": source, options, the mount's device); it builds its own
store and file system, then asks for the mount ("handover"). The predecessor

1. stops reading /dev/fuse — the kernel queues new requests meanwhile;
2. lets the requests it has read finish (an upload in a close() included) and
   the invalidations it queued reach the kernel;
3. exports the file system's state on its loop (pailfs.fs.state: the inodes
   the kernel holds, handles, staged writes);
4. sends it, the INIT result and the /dev/fuse descriptor (with the staging
   files' descriptors) over the socket, SCM_RIGHTS;
5. waits for "serving", answers "ack" and exits without unmounting. Without a
   "serving" in time it shuts the socket — a successor only starts reading after
   the ack, so two processes never serve one mount — and reads again.

The kernel sees one connection throughout, and the successor never sends INIT:
it adopts the negotiated protocol minor, flags and max_write. Only the same
user (or root) may connect: the directory is 0700 and the peer's uid is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from pailfs.errors import MountError

if TYPE_CHECKING:
    from pailfs.fuse import FuseServer
    from pailfs.fuse.session import FuseSession

log = logging.getLogger(__name__)

VERSION = 1
DRAIN_TIMEOUT = 120.0   # requests in flight (a close() uploading) may take this long
ANSWER_TIMEOUT = 60.0   # a successor that does not confirm in time is refused
_HEADER = struct.Struct("!Q")
_MAX_FDS = 4096


def default_control_dir() -> str:
    if os.geteuid() == 0:
        return "/run/pailfs/mounts"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "pailfs", "mounts") if runtime else f"/tmp/pailfs-{os.geteuid()}/mounts"


def control_path(control_dir: str, mountpoint: str) -> str:
    """The socket of the daemon serving mountpoint (short: unix socket paths hold 108 bytes)."""
    path = os.path.abspath(mountpoint)  # the parent's symlinks resolved: stat on the mount may hang
    path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:24]
    return os.path.join(control_dir, f"{digest}.sock")


# ---------------------------------------------------------------- messages
def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    payload = json.dumps(message).encode()
    data = _HEADER.pack(len(payload)) + payload
    first, rest = data[:65536], data[65536:]
    if fds:
        socket.send_fds(sock, [first], list(fds))
    else:
        sock.sendall(first)
    if rest:
        sock.sendall(rest)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors that came with it; ConnectionError when the peer is gone."""
    data, fds, flags, _ = socket.recv_fds(sock, 65536, _MAX_FDS)
    if flags & socket.MSG_CTRUNC:
        _close_all(fds)
        raise ConnectionError("too many descriptors in one message")
    buf = bytearray(data)
    while len(buf) < _HEADER.size or len(buf) < _HEADER.size + _HEADER.unpack_from(buf)[0]:
        chunk = sock.recv(1 << 20)
        if not chunk:
            _close_all(fds)
            raise ConnectionError("the other side closed the connection")
        buf += chunk
    size = _HEADER.unpack_from(buf)[0]
    return json.loads(buf[_HEADER.size:_HEADER.size + size]), fds


def check_private(directory: str) -> None:
    """A control directory must be ours and private: whoever can write there could
    stand in for a daemon (or a successor). Raises PermissionError otherwise."""
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise PermissionError(f"{directory} is not a private directory of uid {os.geteuid()}")


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return uid


# ---------------------------------------------------------------- the serving side
class HandoverService:
    """The control socket of a serving daemon: answers describe and hands the mount over."""

    def __init__(self, server: "FuseServer", path: str, description: dict[str, Any]) -> None:
        self.server = server
        self.path = path
        self.description = {"version": VERSION, "pid": os.getpid(), **description}
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None

    def start(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        check_private(directory)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(self.path)  # a predecessor's, or one left by a daemon that was killed
        except FileNotFoundError:
            pass
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(4)
        st = os.stat(self.path)
        self._sock, self._inode = sock, (st.st_dev, st.st_ino)
        threading.Thread(target=self._accept, name="pailfs-handover", daemon=True).start()

    def close(self) -> None:
        """Stop listening; the socket file goes only if it is still ours (not a successor's)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    if _peer_uid(conn) not in (0, os.geteuid()):
                        continue
                    self._converse(conn)
                except (OSError, ValueError) as exc:
                    log.warning("handover request failed: %s", exc)

    def _converse(self, conn: socket.socket) -> None:
        while True:
            try:
                message, fds = receive(conn)
            except ConnectionError:
                return  # the asker went away (a launcher only asks what is mounted)
            _close_all(fds)
            if message.get("op") == "describe":
                send(conn, self.description)
            elif message.get("op") == "handover":
                if give(self.server, conn):
                    self.close()
                return
            else:
                return


def give(server: "FuseServer", conn: socket.socket) -> bool:
    """Hand server's mount to the successor on conn; True when it serves (we are done)."""
    session = server.session
    if session is None or session.reader is None:
        return False
    started = time.monotonic()
    paused_at = time.time()
    os.write(session.wake_w, b"x")
    session.reader.join(DRAIN_TIMEOUT)
    if session.reader.is_alive() or session.finished.is_set():
        return False  # the connection ended meanwhile: nothing to hand over
    try:
        while True:
            os.read(session.wake_r, 4096)
    except BlockingIOError:
        pass
    try:
        _drain(session)
        state, fds = asyncio.run_coroutine_threadsafe(server.fs.export_state(), session.loop).result(DRAIN_TIMEOUT)
        init = {"minor": session.proto_minor, "kernel_flags": session.kernel_flags,
                "flags": session.init_flags, "max_write": session.max_write}
        send(conn, {"op": "state", "init": init, "fs": state, "paused_at": paused_at}, [session.fd, *fds])
        conn.settimeout(ANSWER_TIMEOUT)
        answer, extra = receive(conn)
        _close_all(extra)
        if answer.get("op") != "serving":
            raise ConnectionError(f"the successor answered {answer.get('op')!r}")
        send(conn, {"op": "ack"})
    except (OSError, ValueError, TimeoutError, asyncio.TimeoutError) as exc:
        log.warning("handover of %s failed (%s); serving it again", server.mountpoint, exc)
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        session.start()
        return False
    asyncio.run_coroutine_threadsafe(_forget(server), session.loop).result(30)
    log.info("handed %s over to pid %s after %.0f ms", server.mountpoint, _peer_pid(conn),
             (time.monotonic() - started) * 1000)
    server.handed_over()
    return True


async def _forget(server: "FuseServer") -> None:
    server.fs.forget_exported()


def _peer_pid(conn: socket.socket) -> int:
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]


def _drain(session: "FuseSession") -> None:
    """Wait until every request read has been answered and queued invalidations written."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while session.cold_done != session.cold_dispatched:
        if time.monotonic() > deadline:
            raise TimeoutError("requests still in flight")
        time.sleep(0.001)
    session.notifier.wait_written(10)


# ---------------------------------------------------------------- the successor
class Predecessor:
    """The daemon serving a mount, seen by the process about to take it over."""

    def __init__(self, mountpoint: str, control_dir: str) -> None:
        self.mountpoint = mountpoint
        path = control_path(control_dir, mountpoint)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            check_private(control_dir)
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise MountError(f"no pailfs daemon to take over at {mountpoint} ({path}: {exc.strerror or exc}); "
                             "was it mounted by a pailfs with handover support?") from None
        self.sock.settimeout(DRAIN_TIMEOUT + ANSWER_TIMEOUT)
        send(self.sock, {"op": "describe"})
        self.description, fds = receive(self.sock)
        _close_all(fds)
        if self.description.get("version") != VERSION:
            raise MountError(f"the daemon at {mountpoint} speaks handover version "
                             f"{self.description.get('version')}, this pailfs {VERSION}: remount instead")

    def take(self) -> tuple[int, dict[str, Any], dict[str, Any], list[int], float]:
        """(fuse fd, INIT result, fs state, staging fds, when the predecessor stopped reading)."""
        send(self.sock, {"op": "handover"})
        message, fds = receive(self.sock)
        if message.get("op") != "state" or not fds:
            _close_all(fds)
            raise MountError(f"the daemon at {self.mountpoint} did not hand the mount over")
        return fds[0], message["init"], message["fs"], fds[1:], message["paused_at"]

    def confirm(self) -> None:
        """Tell the predecessor we serve, and wait for its ack: only then may we read."""
        send(self.sock, {"op": "serving"})
        answer, fds = receive(self.sock)
        _close_all(fds)
        if answer.get("op") != "ack":
            raise MountError("the predecessor did not acknowledge the handover")

    def close(self) -> None:
        self.sock.close()


def adopt_init(session: "FuseSession", init: dict[str, Any]) -> None:
    """The predecessor's INIT result: the kernel will not send INIT again."""
    session.proto_minor = init["minor"]
    session.kernel_flags = init["kernel_flags"]
    session.init_flags = init["flags"]
    session.max_write = init["max_write"]
    session.buffer_size = session.max_write + 4096
    session.initialized.set()
