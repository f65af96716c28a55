"""An asyncio loop of its own, in a daemon thread, for code that is not async.

The mount runs the file system on one, the blocking SyncStore and the
Checkpointer run their store on one, the benchmark's delay proxy too:

    loop = LoopThread("pailfs-loop")
    result = loop.run(coro, timeout=10)   # from any other thread: wait for it
    future = loop.submit(coro)            # concurrent.futures.Future
    loop.stop()                           # idempotent; joins the thread, closes the loop

Below every layer (like config and errors): it knows nothing of pailfs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Coroutine, TypeVar

T = TypeVar("T")


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
