"""The FUSE front end: pailfs speaks the kernel protocol over /dev/fuse itself.

What the CLI calls::

    server = FuseServer(fs, mountpoint, loop=loop, fs_name="bucket:/prefix",
                        allow_other=..., nonempty=..., readahead_kib=16384, poll_us=50)
    # SIGTERM/SIGINT handler (any thread):  server.stop()
    server.serve(ready_callback=...)   # blocks: mount, serve, always unmount

`loop` is the running asyncio loop (in another thread) the fs's coroutines run
on; without one, serve() runs a loop of its own for the life of the mount.

serve() returns when the kernel ends the connection (`umount`, `fusermount3
-u`, `umount -l` once the last file closes) or after stop(). The mount is
always gone when it returns — unless it was handed over to a successor process
(pailfs.fuse.handover; `control_path` names the socket a successor asks at),
which `serve_taken_over()` is: it serves a mount it did not make.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Callable

from pailfs.aio import LoopThread
from pailfs.errors import MountError
from pailfs.fs.types import FileSystemOps
from pailfs.fuse import handover
from pailfs.fuse import mount as _mount
from pailfs.fuse.mount import abort_connection, find_mount, is_stale, set_readahead, unmount
from pailfs.fuse.session import FuseSession

__all__ = ["FuseServer", "FuseSession", "unmount", "is_stale", "find_mount"]

log = logging.getLogger(__name__)

INIT_TIMEOUT = 10.0   # seconds to wait for the kernel's INIT after mount(2)
STOP_GRACE = 5.0      # seconds stop() lets open files finish before aborting the connection


class FuseServer:
    """Mount fs at mountpoint and serve it until unmounted or stopped."""

    def __init__(self, fs: FileSystemOps, mountpoint: str, *, loop: asyncio.AbstractEventLoop | None = None,
                 fs_name: str = "pailfs", subtype: str = "pailfs", read_only: bool | None = None,
                 allow_other: bool = False, default_permissions: bool = True, noatime: bool = True,
                 uid: int | None = None, gid: int | None = None, nonempty: bool = False,
                 use_fusermount: bool | None = None,
                 stop_grace: float = STOP_GRACE, readahead_kib: int = 0, poll_us: int = 0,
                 control_path: str | None = None, description: dict | None = None) -> None:
        self.fs = fs
        self.control_path = control_path
        self.description = description or {}
        self.gone_to_successor = False
        self.readahead_kib = readahead_kib
        self.poll_us = poll_us
        self.mountpoint = mountpoint
        self.loop = loop
        self.read_only = bool(fs.read_only) if read_only is None else read_only
        self.mount_options = dict(fs_name=fs_name, subtype=subtype, read_only=self.read_only,
                                  allow_other=allow_other, default_permissions=default_permissions,
                                  noatime=noatime, uid=uid, gid=gid, nonempty=nonempty,
                                  use_fusermount=use_fusermount)
        self.use_fusermount = use_fusermount
        self.stop_grace = stop_grace
        self.session: FuseSession | None = None
        self.device: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._unmounted = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public
    def serve(self, ready_callback: Callable[[], None] | None = None) -> None:
        """Mount, serve until the connection ends, unmount. Raises MountError."""
        own_loop = LoopThread("pailfs-loop") if self.loop is None else None
        try:
            self._serve(self.loop or own_loop.loop, ready_callback)  # type: ignore[union-attr]
        finally:
            if own_loop is not None:
                own_loop.stop(timeout=5)

    def stop(self) -> None:
        """Unmount and end serve() (thread-safe, idempotent; never blocks on the mount)."""
        if self._stop.is_set():
            return
        self._stop.set()
        threading.Thread(target=self._unmount_quietly, name="pailfs-unmount", daemon=True).start()

    # ------------------------------------------------------------------ internals
    def serve_taken_over(self, predecessor: handover.Predecessor,
                         ready_callback: Callable[[], None] | None = None) -> None:
        """Serve the mount a predecessor process hands over (see pailfs.fuse.handover)."""
        own_loop = LoopThread("pailfs-loop") if self.loop is None else None
        loop = self.loop or own_loop.loop  # type: ignore[union-attr]
        try:
            fd, init, state, fds, paused_at = predecessor.take()
            try:
                asyncio.run_coroutine_threadsafe(self._import(state, fds), loop).result(60)
                session = self.session = FuseSession(self.fs, fd, loop, poll_us=self.poll_us)
                handover.adopt_init(session, init)
                predecessor.confirm()
            except BaseException:
                os.close(fd)  # the predecessor's descriptor keeps the connection; it reads again
                raise

            def ready() -> None:
                log.info("took %s over: its readers waited %.0f ms", self.mountpoint,
                         (time.time() - paused_at) * 1000)
                if ready_callback is not None:
                    ready_callback()

            self._attend(session, fd, loop, ready)
        finally:
            predecessor.close()
            if own_loop is not None:
                own_loop.stop(timeout=5)

    async def _import(self, state: dict, fds: list[int]) -> None:
        self.fs.import_state(state, fds)

    def handed_over(self) -> None:
        """A successor serves the mount now: stop without unmounting (handover.give)."""
        self.gone_to_successor = True
        session = self.session
        if session is not None:
            session.fd = -1  # late replies fail (EBADF) instead of reaching a reused descriptor
            session.finished.set()

    def _serve(self, loop: asyncio.AbstractEventLoop, ready_callback: Callable[[], None] | None) -> None:
        fd = _mount.mount(self.mountpoint, **self.mount_options)
        self._attend(FuseSession(self.fs, fd, loop, poll_us=self.poll_us), fd, loop, ready_callback)

    def _attend(self, session: FuseSession, fd: int, loop: asyncio.AbstractEventLoop,
                ready_callback: Callable[[], None] | None) -> None:
        """Serve session until the connection ends, stop() or a handover; always unmount
        unless handed over."""
        info = find_mount(self.mountpoint)
        self.device = info.device if info is not None else None
        self.session = session
        service = None
        try:
            self.fs.attach(loop, session)
            session.start()
            if not self._wait_init(session):
                raise MountError(f"the kernel did not initialize the mount at {self.mountpoint}")
            if self._stop.is_set():
                return
            if self.readahead_kib and self.device is not None:
                set_readahead(self.device, self.readahead_kib)
            service = self._offer_handover()
            if ready_callback is not None:
                ready_callback()
            # Wait in short steps so the main thread still runs signal handlers.
            while not session.finished.wait(0.25):
                if self._stop.is_set() and self._stop_waited():
                    break
        finally:
            if service is not None:
                service.close()
            if self.gone_to_successor:
                os.close(fd)
                return
            self._unmount_quietly()
            if not session.finished.wait(1.0) and self.device is not None:
                abort_connection(self.device)
                session.finished.wait(1.0)
            if session.finished.is_set():
                os.close(fd)
            else:
                # A reader is still blocked in read(2) on fd; closing it now could hand the
                # number to a new file the reader would then read. Process exit closes it.
                log.warning("FUSE connection at %s did not end; leaving it to process exit", self.mountpoint)

    def _offer_handover(self) -> handover.HandoverService | None:
        if not self.control_path:
            return None
        service = handover.HandoverService(self, self.control_path, {
            **self.description, "mountpoint": self.mountpoint, "read_only": self.read_only,
            "device": list(self.device) if self.device else None})
        try:
            service.start()
        except OSError as exc:
            log.warning("no handover socket for %s (%s): an upgrade will need a remount", self.mountpoint, exc)
            return None
        return service

    def _wait_init(self, session: FuseSession) -> bool:
        for _ in range(int(INIT_TIMEOUT / 0.25)):
            if session.initialized.wait(0.25):
                return True
            if session.finished.is_set() or self._stop.is_set():
                return session.initialized.is_set()
        return False

    def _stop_waited(self) -> bool:
        """After stop(): give open files stop_grace seconds, then abort the connection."""
        session = self.session
        assert session is not None
        if session.finished.wait(self.stop_grace):
            return True
        if self.device is not None and abort_connection(self.device):
            session.finished.wait(2.0)
        return True

    def _unmount_quietly(self) -> None:
        """Lazy-unmount our mount if it is still there (never someone else's)."""
        with self._lock:
            if self._unmounted:
                return
            info = find_mount(self.mountpoint)
            if info is None or (self.device is not None and info.device != self.device):
                self._unmounted = True
                return
            try:
                unmount(self.mountpoint, lazy=True, use_fusermount=self.use_fusermount)
                self._unmounted = True
            except MountError as exc:
                log.warning("%s", exc)

