"""SyncStore: the store API for plain (non-async) code, like the OSS SDK's Bucket.

    import pailfs
    store = pailfs.open_store("s3://tf-train/checkpoints", url="http://127.0.0.1:8333")
    store.put_file("step-100/model.pt", "/tmp/model.pt")     # OSS: put_object_from_file
    store.get_file("step-100/model.pt", "/tmp/restored.pt")  # OSS: get_object_to_file
    for obj in store.list("step-100/").objects:
        print(obj.key, obj.size)
    store.close()                                            # or use `with`

Every method blocks until the async store's coroutine, run on a private event
loop in a daemon thread, completes, and raises the same pailfs.errors. One
SyncStore may be used from several threads at once; calls run concurrently on
its loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Mapping, TypeVar

from pailfs.aio import LoopThread
from pailfs.store.base import Listing, ObjectInfo, ObjectStore, ProgressFn

T = TypeVar("T")


class SyncStore:
    """Blocking facade over an ObjectStore (see the module docstring)."""

    def __init__(self, factory: Callable[[], Awaitable[ObjectStore]]) -> None:
        self._loop = LoopThread("pailfs-store")
        try:
            # built on its own loop: httpx clients bind to the loop that first uses them
            self.store: ObjectStore = self._run(factory())
        except BaseException:
            self._loop.stop()
            raise
        self.url = self.store.url

    def _run(self, coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
        if self._loop.closed:
            raise RuntimeError("this SyncStore is closed")
        return self._loop.run(coro)

    @property
    def stats(self):  # noqa: ANN201 - StoreStats
        return self.store.stats

    def head(self, key: str) -> ObjectInfo:
        return self._run(self.store.head(key))

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return self._run(self.store.get(key, start, end))

    def list(self, prefix: str = "", delimiter: str | None = None) -> Listing:
        return self._run(self.store.list(prefix, delimiter))

    def get_file(self, key: str, path: str | Path, progress: ProgressFn | None = None) -> ObjectInfo:
        return self._run(self.store.get_file(key, path, progress))

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        return self._run(self.store.put(key, data, metadata))

    def put_file(self, key: str, path: str | Path, metadata: Mapping[str, str] | None = None,
                 progress: ProgressFn | None = None) -> ObjectInfo:
        return self._run(self.store.put_file(key, path, metadata, progress))

    def delete(self, key: str) -> None:
        self._run(self.store.delete(key))

    def delete_many(self, keys: list[str]) -> None:
        self._run(self.store.delete_many(keys))

    def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> None:
        self._run(self.store.copy(src, dst, metadata))

    def check(self) -> None:
        self._run(self.store.check())

    def close(self) -> None:
        if self._loop.closed:
            return
        try:
            self._run(self.store.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> "SyncStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SyncStore({self.url!r})"
