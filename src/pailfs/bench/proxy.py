"""A TCP proxy on 127.0.0.1 that delays each direction by a fixed time.

It models a far-away object store for every system alike (`--latency-ms`). Each
chunk is stamped when it arrives and forwarded `delay` later by a separate writer
task, so the link gets latency but keeps its bandwidth (a chunk never waits for
the delay of the one before it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from pailfs.aio import LoopThread

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


class LoopbackProxy:
    """A TCP proxy on 127.0.0.1 running its own asyncio loop in a thread: the
    lifecycle shared by the latency proxy here and the fault proxy of the tests.
    Subclasses implement `_accept(reader, writer)` and register its task in
    `_conns` so stop() can cancel it."""

    thread_name = "proxy"
    stream_limit = 2 ** 16

    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self._loop_thread: LoopThread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task] = set()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cpu_seconds(self) -> float:
        """user + system CPU seconds of the proxy's thread (it shares the machine's
        cores with the systems it measures: the bench reports it per pass)."""
        try:
            with open(f"/proc/self/task/{self._loop_thread.thread.native_id}/stat") as f:  # type: ignore[union-attr]
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, TypeError, AttributeError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self):
        self._loop_thread = LoopThread(self.thread_name)
        self._server = self._loop_thread.run(
            asyncio.start_server(self._accept, self.host, 0, limit=self.stream_limit), 10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._loop_thread is None or self._loop_thread.closed:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._loop_thread.run(shutdown(), 10)
        self._loop_thread.stop(timeout=10)

    def run(self, coro, timeout: float = 10):  # noqa: ANN001, ANN201
        """Run a coroutine on the proxy's loop (subclasses changing live connections)."""
        return self._loop_thread.run(coro, timeout)  # type: ignore[union-attr]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class LatencyProxy(LoopbackProxy):
    """`with LatencyProxy(upstream_host, upstream_port, delay_ms) as proxy: proxy.endpoint`."""

    thread_name = "bench-proxy"

    def __init__(self, upstream_host: str, upstream_port: int, delay_ms: float, host: str = "127.0.0.1") -> None:
        super().__init__(upstream_host, upstream_port, host)
        self.delay = delay_ms / 1000.0

    def start(self) -> "LatencyProxy":
        super().start()
        log.info("latency proxy %s -> %s:%d, %.1f ms each way", self.endpoint, *self.upstream, self.delay * 1000)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("proxy: upstream %s:%d unreachable: %s", *self.upstream, exc)
            writer.close()
            self._conns.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._conns.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # EOF: half-close so the other side sees it too
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(forward())
        try:
            while not sender.done():  # a dead writer ends the pipe
                data = await reader.read(CHUNK)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
