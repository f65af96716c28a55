"""An asyncio loop of its own, in a daemon thread, for code that is not async.

The mount runs the file system on one, the blocking SyncStore and the
Checkpointer run their store on one, the benchmark's delay proxy too:

    loop = LoopThread("pailfs-loop")
    result = loop.run(coro, timeout=10)   # from any other thread: wait for it
    future = loop.submit(coro)            # concurrent.futures.Future
    loop.stop()                           # idempotent; joins the thread, closes the loop

`DaemonPool` is an executor of daemon threads for blocking file work that must
go on while the interpreter exits.

Below every layer (like config and errors): it knows nothing of pailfs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from typing import Any, Awaitable, Coroutine, TypeVar

T = TypeVar("T")


async def gather_or_cancel(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coros concurrently; the first failure cancels the others (and waits for
    them to end) and is raised. Results in order."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    if failed:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise failed[0].exception()  # type: ignore[misc]
    return [t.result() for t in tasks]


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T] | Awaitable[T]) -> concurrent.futures.Future[T]:
        if self.closed:
            raise RuntimeError(f"the {self.thread.name} loop is stopped")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Coroutine[Any, Any, T] | Awaitable[T], timeout: float | None = None) -> T:
        """Run coro on the loop and wait for its result (never call from the loop itself)."""
        return self.submit(coro).result(timeout)

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def on_loop(self) -> bool:
        return threading.current_thread() is self.thread

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop and join its thread; a loop that does not stop within timeout
        is left to process exit (a daemon thread)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


class DaemonPool(concurrent.futures.Executor):
    """Daemon worker threads for file reads and hashing.

    Not a ThreadPoolExecutor: that one refuses work once interpreter exit has
    begun, which is exactly when an unclosed Checkpointer still uploads the
    last checkpoint; and close() must not have to join a stuck worker.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fut, fn, args, kwargs))
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                fut.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join()
