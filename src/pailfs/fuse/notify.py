"""Invalidation notices to the kernel, written from a thread of their own.

A notice may wait for a page lock held by a request whose reply the reader or
the loop has yet to send, so neither of them writes one. A reply that must not
overtake the notices queued before it (an OPEN after its open() found the
object changed) goes through the same queue while any are pending."""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from typing import Callable

from pailfs.fuse import protocol as P

log = logging.getLogger(__name__)


class Notifier:
    """`send(message) -> bool` writes a reply now (the session's)."""

    def __init__(self, fd: int, send: Callable[[bytes], bool]) -> None:
        self.fd = fd
        self._send = send
        self._lock = threading.Lock()  # starts the thread once; guards _pending
        self._queue: queue.SimpleQueue | None = None
        self._pending = 0  # notices and replies queued, not yet written

    def invalidate_inode(self, ino: int, offset: int = 0, length: int = 0) -> None:
        self._put(P.OUT_HEADER.pack(16 + 24, P.NOTIFY_INVAL_INODE_CODE, 0)
                  + P.NOTIFY_INVAL_INODE.pack(ino, offset, length))

    def invalidate_entry(self, parent: int, name: str) -> None:
        raw = name.encode("utf-8", "surrogateescape")
        body = P.NOTIFY_INVAL_ENTRY.pack(parent, len(raw), 0) + raw + b"\0"
        self._put(P.OUT_HEADER.pack(16 + len(body), P.NOTIFY_INVAL_ENTRY_CODE, 0) + body)

    def store(self, ino: int, data: bytes) -> None:
        """Put data into the kernel's page cache of ino, from offset 0."""
        self._put(b"".join((P.OUT_HEADER.pack(16 + P.NOTIFY_STORE.size + len(data), P.NOTIFY_STORE_CODE, 0),
                            P.NOTIFY_STORE.pack(ino, 0, len(data), 0), data)))

    def _put(self, message: bytes) -> None:
        with self._lock:
            if self._queue is None:
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._write_all, name="pailfs-fuse-notify", daemon=True).start()
            self._pending += 1
            self._queue.put((message, None))

    def send_after(self, reply: bytes, failed: Callable[[], None]) -> None:
        """Send a reply now, or, while notices are queued, behind them (failed() is
        called if the kernel no longer waits for it)."""
        with self._lock:
            if self._pending and self._queue is not None:
                self._pending += 1
                self._queue.put((reply, failed))
                return
        if not self._send(reply):
            failed()

    def wait_written(self, timeout: float) -> None:
        """Return once everything queued so far was written (or timeout)."""
        with self._lock:
            q = self._queue
        if q is not None:
            written = threading.Event()
            q.put(written)
            written.wait(timeout)

    def close(self) -> None:
        with self._lock:
            if self._queue is not None:
                self._queue.put(None)

    def _write_all(self) -> None:
        q = self._queue
        assert q is not None
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, threading.Event):  # everything queued before it is written
                item.set()
                continue
            message, failed = item
            try:
                os.write(self.fd, message)
            except OSError as exc:
                if failed is not None:
                    failed()  # a queued reply the kernel no longer waits for
                # ENOENT: the kernel does not know that inode/entry (nothing to drop)
                elif exc.errno not in (errno.ENOENT, errno.ENODEV, errno.ENOTDIR):
                    log.warning("FUSE notification failed: %s", exc)
            finally:
                with self._lock:
                    self._pending -= 1
