"""Checkpointer: background checkpoint uploads with a commit manifest and retention.

    ckpt = Checkpointer("s3://bucket/run1", max_to_keep=3)
    fut = ckpt.save(step, "/local/ckpt-dir")     # returns once the files are snapshotted
    ...
    ckpt.latest(); ckpt.restore("/tmp/ckpt"); ckpt.close()

Concurrency invariants
----------------------
* Threads. Any number of caller threads, plus one private *loop thread* that
  runs an asyncio loop and owns the store: every store call and every coroutine
  below runs there. Callers reach it through `_call()` (blocking) or save()
  (returns a concurrent.futures.Future). Calling a blocking method from the loop
  thread (e.g. inside a Future's done-callback) would deadlock and is refused.
* Locks. `_lock` (threading) guards `_futures`, `_steps_pending`, `_error`,
  `_closed`, `_cleanup_fut`. `_snap_lock` serialises snapshots (the Stager is not
  thread-safe); it is never taken while holding `_lock`. Loop-only state
  (`_events`, `_active`, `_cleaning`, `_retention_lock`) is touched only on the
  loop thread, so check-then-act between two awaits is atomic.
* Backpressure. save() takes one of `max_pending` slots *before* snapshotting
  and the slot is given back when the save has finished (committed and retention
  done, or failed). So at most max_pending snapshots exist at once.
* Visibility. A checkpoint is visible iff its manifest exists. The manifest of
  step S is written only after (a) every file of S is uploaded and a LIST shows
  each with its size, and (b) every in-flight save of a smaller step has
  committed or failed. So commits happen in step order.
* Deletion. Retention deletes a checkpoint's manifest first, then its files, and
  never touches a step that has an active save here. Leftover cleanup marks the
  steps it deletes in `_cleaning`; a save of such a step waits for it first.
* Errors. A failed save fails its Future and is kept in `_error` until the next
  save() or wait() raises it (once). close() waits, cancels what is left after
  its timeout, and raises CheckpointError naming what was lost.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Coroutine, Mapping, TypeVar

from pailfs.checkpoint.layout import delete_step, scan_steps
from pailfs.checkpoint.manifest import (
    MANIFEST_NAME, CheckpointInfo, FileEntry, manifest_key, step_of_key, step_prefix,
)
from pailfs.aio import DaemonPool, LoopThread
from pailfs.checkpoint.restore import CheckpointReader
from pailfs.checkpoint.snapshot import Snapshot, Source, Stager
from pailfs.checkpoint.upload import CheckpointWriter
from pailfs.checkpoint.state import STATE_NAMES, deserialize_state, serialize_state
from pailfs.errors import CheckpointError, NotFound, PailfsError
from pailfs.store.base import ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")


class Checkpointer:
    """Save checkpoints to object storage in the background; list, restore, verify them.

    url: `s3://bucket/prefix`, `bucket:/prefix` or `file:///dir` (see
    pailfs.store.open_store); endpoint and keys come from `options`/`overrides` or
    the environment. Or pass an open `store` (it is not closed by close()).

    max_to_keep: committed checkpoints kept (highest steps); 0 or None keeps all.
    max_pending: saves in flight; save() blocks beyond it (backpressure).
    parallel_count: files uploaded at once within a checkpoint (and parts per file).
    grace_period: uncommitted leftovers older than this many seconds are removed
    in the background after the first save() (or by cleanup()/prune()).
    snapshot: "auto" (hard link, else copy), "link" (fail if impossible) or
    "copy" (always copy: for trainers that rewrite files in place).
    """

    def __init__(self, url: str | None = None, max_to_keep: int | None = 1, max_pending: int = 2,
                 parallel_count: int = 20, options: Any = None, store: ObjectStore | None = None,
                 grace_period: float = 3600, snapshot: str = "auto",
                 staging_dir: str | os.PathLike | None = None, check: bool = True,
                 **overrides: Any) -> None:
        if url is None and store is None:
            raise CheckpointError("Checkpointer needs a URL (s3://bucket/prefix) or a store")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        if parallel_count < 1:
            raise ValueError("parallel_count must be >= 1")
        if max_to_keep is not None and max_to_keep < 0:
            raise ValueError("max_to_keep must be >= 0 (0 or None keeps all)")
        self.max_to_keep = max_to_keep or 0
        self.max_pending = max_pending
        self.parallel_count = parallel_count
        self.grace_period = float(grace_period)
        self._stager = Stager(staging_dir, snapshot)

        self._lock = threading.Lock()
        self._snap_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_pending)
        self._futures: dict[int, concurrent.futures.Future] = {}
        self._steps_pending: set[int] = set()
        self._error: BaseException | None = None
        self._closed = False
        self._cleanup_fut: concurrent.futures.Future | None = None

        # loop-thread-only state
        self._events: dict[int, asyncio.Event] = {}
        self._active: set[int] = set()
        self._cleaning: dict[int, asyncio.Event] = {}
        self._retention_lock: asyncio.Lock | None = None
        self._file_sem: asyncio.Semaphore | None = None
        self._reader: CheckpointReader | None = None
        self._writer: CheckpointWriter | None = None

        self._owns_store = store is None
        self._loop = LoopThread("pailfs-checkpointer")
        self._pool = DaemonPool(8, "pailfs-checkpointer-io")
        try:
            self.store: ObjectStore = self._loop.submit(
                self._setup(url, options, store, parallel_count, overrides, check)).result()
        except BaseException:
            self._stop_threads()
            raise
        self.url = url or getattr(self.store, "url", "store")
        atexit.register(self._atexit)

    async def _setup(self, url, options, store, parallel_count, overrides, check) -> ObjectStore:
        self._retention_lock = asyncio.Lock()
        self._file_sem = asyncio.Semaphore(parallel_count)
        if store is None:
            from pailfs.store import open_store  # imported late: keeps `import pailfs` light

            overrides.setdefault("parallel_count", parallel_count)
            store = open_store(url, options, **overrides)
        if check:
            try:
                await store.check()
            except BaseException:
                if self._owns_store:
                    await store.close()
                raise
        self._reader = CheckpointReader(store, self._io, parallel_count)
        self._writer = CheckpointWriter(store, self._io, parallel_count)
        return store

    def _io(self, fn, *args) -> asyncio.Future:  # noqa: ANN001
        """Run a blocking function on the IO pool (call on the loop thread)."""
        return self._loop.loop.run_in_executor(self._pool, fn, *args)

    def _stop_threads(self) -> None:
        self._loop.stop()
        self._pool.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"Checkpointer({self.url!r}, max_to_keep={self.max_to_keep}, max_pending={self.max_pending})"

    # --- plumbing ------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop thread and wait for its result."""
        if self._loop.on_loop():
            coro.close()
            raise CheckpointError("Checkpointer methods cannot be called from its own thread "
                                  "(e.g. inside a save() Future's done-callback)")
        if self._loop.closed:
            coro.close()
            raise CheckpointError("the Checkpointer is closed")
        return self._loop.submit(coro).result(timeout)

    def _raise_pending_error(self) -> None:
        with self._lock:
            err, self._error = self._error, None
        if err is not None:
            raise err

    # --- saving --------------------------------------------------------------
    def save(self, step: int, source: Source, metadata: Mapping[str, Any] | None = None
             ) -> "concurrent.futures.Future[CheckpointInfo]":
        """Snapshot `source` and upload it as checkpoint `step` in the background.

        source: a directory (saved recursively), a list of files (saved under
        their base names) or a mapping name -> bytes. When save() returns, the
        caller may overwrite or delete its files. Blocks while `max_pending` saves
        are in flight. Raises the error of an earlier failed save, once.
        The Future's result is the committed CheckpointInfo.
        """
        self._raise_pending_error()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        meta = dict(metadata or {})
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"checkpoint metadata must be JSON-serialisable: {exc}") from None
        with self._lock:
            if self._closed:
                raise CheckpointError("the Checkpointer is closed")
            if step in self._steps_pending:
                raise CheckpointError(f"step {step} is already being saved")
            self._steps_pending.add(step)
        try:
            t0 = time.monotonic()
            self._slots.acquire()
            waited = time.monotonic() - t0
            if waited > 0.01:
                log.debug("save(%d) waited %.3fs for a free slot (max_pending=%d)", step, waited, self.max_pending)
            try:
                with self._snap_lock:
                    snap = self._stager.snapshot(step, source)
            except BaseException:
                self._slots.release()
                raise
        except BaseException:
            with self._lock:
                self._steps_pending.discard(step)
            raise
        fut = self._loop.submit(self._save(step, snap, meta))
        with self._lock:
            self._futures[step] = fut
            if self._cleanup_fut is None:
                self._cleanup_fut = self._loop.submit(self._background_cleanup())
        fut.add_done_callback(lambda f, s=step: self._save_done(s, f))
        return fut

    def _save_done(self, step: int, fut: concurrent.futures.Future) -> None:
        with self._lock:
            self._steps_pending.discard(step)
            if self._futures.get(step) is fut:
                del self._futures[step]
            if not fut.cancelled() and fut.exception() is not None and self._error is None:
                self._error = fut.exception()
        self._slots.release()

    async def _save(self, step: int, snap: Snapshot, metadata: dict) -> CheckpointInfo:
        done = asyncio.Event()  # set when this step committed or failed (commit order)
        self._events[step] = done
        self._active.add(step)
        t0 = time.monotonic()
        try:
            cleaning = self._cleaning.get(step)
            if cleaning is not None:
                await cleaning.wait()
            await self._clear_step(step)
            entries = await self._writer.upload_files(step, snap)  # type: ignore[union-attr]
            await self._writer.check_uploaded(step, entries)  # type: ignore[union-attr]
            await self._wait_earlier(step)
            info = CheckpointInfo(step, time.time(), entries, metadata)
            await self.store.put(manifest_key(step), info.to_json())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("checkpoint step %d failed: %s", step, exc)
            await self._discard_partial(step)
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint step {step} was not saved: {exc}") from exc
        finally:
            done.set()
            self._events.pop(step, None)
            self._active.discard(step)
            await self._io(snap.discard)
        elapsed = time.monotonic() - t0
        log.info("checkpoint step %d committed: %d files, %d bytes in %.2fs (%.1f MB/s)", step,
                 len(entries), info.size, elapsed, info.size / max(elapsed, 1e-9) / 1e6)
        await self._retain(step)
        return info

    async def _clear_step(self, step: int) -> None:
        """Saving a step that exists replaces it: uncommit it (manifest first), then clear it."""
        listing = await self.store.list(step_prefix(step))
        keys = [o.key for o in listing.objects]
        if not keys:
            return
        mkey = manifest_key(step)
        if mkey in keys:
            log.info("step %d already exists; it is replaced", step)
            await self.store.delete(mkey)
        await self.store.delete_many([k for k in keys if k != mkey])

    async def _wait_earlier(self, step: int) -> None:
        while True:
            earlier = [ev for s, ev in self._events.items() if s < step and not ev.is_set()]
            if not earlier:
                return
            for ev in earlier:
                await ev.wait()

    async def _discard_partial(self, step: int) -> None:
        """Best effort: remove what a failed save uploaded (invisible anyway; cleanup retries)."""
        try:
            listing = await asyncio.wait_for(self.store.list(step_prefix(step)), 30)
            await asyncio.wait_for(self.store.delete_many([o.key for o in listing.objects]), 60)
        except Exception as exc:  # the store may be what failed
            log.debug("could not remove partial checkpoint step %d: %s", step, exc)

    # --- scanning, retention, cleanup -----------------------------------------
    async def _retain(self, just_committed: int) -> None:
        if not self.max_to_keep:
            return
        try:
            await self._prune(self.max_to_keep, protect=just_committed)
        except Exception as exc:  # the checkpoint itself is committed; don't fail the save
            log.warning("retention after step %d failed (older checkpoints are kept): %s", just_committed, exc)

    async def _prune(self, keep: int, protect: int | None = None) -> list[int]:
        assert self._retention_lock is not None
        async with self._retention_lock:
            scan = await scan_steps(self.store)
            committed = sorted(s for s, v in scan.items() if v.committed)
            kept = set(committed[-keep:]) if keep else set(committed)
            if protect is not None:
                kept.add(protect)
            doomed = [s for s in committed if s not in kept and s not in self._active]
            for step in doomed:  # oldest first
                await delete_step(self.store, step, scan[step].keys)
                log.info("checkpoint step %d deleted (max_to_keep=%d)", step, keep)
            return doomed

    async def _cleanup(self, grace_period: float) -> list[int]:
        """Remove uncommitted step prefixes whose newest object is older than grace_period."""
        scan = await scan_steps(self.store)
        now = time.time()
        removed = []
        for step, s in sorted(scan.items()):
            if s.committed or step in self._active or step in self._cleaning:
                continue
            if grace_period > 0 and now - s.newest < grace_period:
                continue
            ev = self._cleaning[step] = asyncio.Event()
            try:
                await self.store.delete_many(s.keys)
                removed.append(step)
                log.info("removed uncommitted checkpoint step %d (%d objects)", step, len(s.keys))
            finally:
                ev.set()
                del self._cleaning[step]
        await self._abort_stale_uploads(grace_period)
        return removed

    async def _background_cleanup(self) -> None:
        try:
            await self._cleanup(self.grace_period)
        except Exception as exc:
            log.warning("cleanup of uncommitted checkpoints under %s failed: %s", self.url, exc)

    async def _abort_stale_uploads(self, grace_period: float) -> int:
        """Abort multipart uploads of checkpoint files older than grace_period."""
        try:
            return await self.store.abort_stale_uploads(
                grace_period, select=lambda key: step_of_key(key) is not None)
        except Exception as exc:
            log.debug("aborting stale multipart uploads failed: %s", exc)
            return 0

    # --- reading -------------------------------------------------------------
    async def _manifest(self, step: int | None) -> CheckpointInfo:
        if step is None:
            step = await self._latest()
            if step is None:
                raise CheckpointError(f"no committed checkpoint under {self.url}")
        try:
            data = await self.store.get(manifest_key(step))
        except NotFound:
            raise CheckpointError(f"no committed checkpoint at step {step} under {self.url}") from None
        info = CheckpointInfo.from_json(data, f"{self.url}/{manifest_key(step)}")
        if info.step != step:
            raise CheckpointError(f"manifest of step {step} names step {info.step}")
        return info

    async def _latest(self) -> int | None:
        listing = await self.store.list("", "/")
        steps = sorted((s for s in (step_of_key(p) for p in listing.prefixes) if s is not None), reverse=True)
        for step in steps:
            try:
                await self.store.head(manifest_key(step))
                return step
            except NotFound:
                continue
        return None

    async def _list(self) -> list[CheckpointInfo]:
        scan = await scan_steps(self.store)
        steps = sorted(s for s, v in scan.items() if v.committed)
        assert self._file_sem is not None

        async def one(step: int) -> CheckpointInfo | None:
            async with self._file_sem:  # type: ignore[union-attr]
                try:
                    return await self._manifest(step)
                except CheckpointError as exc:
                    log.warning("skipping step %d: %s", step, exc)
                    return None

        infos = await asyncio.gather(*(one(s) for s in steps))
        return [i for i in infos if i is not None]

    async def _restore(self, dest: Path, step: int | None) -> CheckpointInfo:
        return await self._reader.restore(dest, await self._manifest(step))  # type: ignore[union-attr]

    async def _verify(self, step: int | None) -> CheckpointInfo:
        info = await self._manifest(step)
        await self._reader.fetch_all(info, None)  # type: ignore[union-attr]
        return info

    async def _read(self, name: str, step: int | None) -> bytes:
        info = await self._manifest(step)
        for entry in info.files:
            if entry.name == name:
                await self._reader.check_sizes(CheckpointInfo(info.step, info.time, (entry,)))  # type: ignore[union-attr]
                data = await self._reader.fetch(info.step, entry, None)  # type: ignore[union-attr]
                assert data is not None
                return data
        raise CheckpointError(f"checkpoint step {info.step} has no file {name!r}")

    async def _delete(self, step: int) -> None:
        if step in self._active:
            raise CheckpointError(f"step {step} is being saved; wait() before deleting it")
        keys = [o.key for o in (await self.store.list(step_prefix(step))).objects]
        if not keys:
            raise CheckpointError(f"no checkpoint at step {step} under {self.url}")
        await delete_step(self.store, step, keys)

    # --- public reads and maintenance ------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        """Committed checkpoints, ascending by step (uncommitted ones are not shown)."""
        return self._call(self._list())

    def latest(self) -> int | None:
        """The highest committed step, or None."""
        return self._call(self._latest())

    def info(self, step: int | None = None) -> CheckpointInfo:
        """The manifest of `step` (default: latest). CheckpointError if not committed."""
        return self._call(self._manifest(step))

    def restore(self, dest: str | os.PathLike, step: int | None = None) -> CheckpointInfo:
        """Download checkpoint `step` (default: latest) into directory `dest`.

        Every file is downloaded into a temporary directory beside `dest` and
        checked against the manifest's size and sha256 before any file appears in
        `dest`; on a mismatch CheckpointError is raised and `dest` is untouched.
        """
        return self._call(self._restore(Path(dest).absolute(), step))

    def verify(self, step: int | None = None) -> CheckpointInfo:
        """Download and check every file of `step` (default: latest); CheckpointError if damaged."""
        return self._call(self._verify(step))

    def read(self, name: str, step: int | None = None) -> bytes:
        """One file of a checkpoint, verified, in memory."""
        return self._call(self._read(name, step))

    def delete(self, step: int) -> None:
        """Delete one checkpoint (manifest first)."""
        self._call(self._delete(step))

    def prune(self, keep: int, grace_period: float | None = None) -> tuple[list[int], list[int]]:
        """Keep the `keep` highest committed steps (0 keeps all) and remove uncommitted
        leftovers older than grace_period (default: the Checkpointer's).
        Returns (deleted committed steps, removed uncommitted steps)."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        grace = self.grace_period if grace_period is None else grace_period

        async def run() -> tuple[list[int], list[int]]:
            deleted = await self._prune(keep) if keep else []
            return deleted, await self._cleanup(grace)

        return self._call(run())

    def cleanup(self, grace_period: float | None = None) -> list[int]:
        """Remove uncommitted leftovers older than grace_period now; returns their steps."""
        grace = self.grace_period if grace_period is None else grace_period
        return self._call(self._cleanup(grace))

    # --- state dicts (PyTorch, or numpy arrays) ------------------------------------------
    def save_state(self, step: int, state_dict: Any, metadata: Mapping[str, Any] | None = None,
                   name: str | None = None) -> "concurrent.futures.Future[CheckpointInfo]":
        """Serialize a state dict in memory and save() it as one file; returns at once
        like save(). The time this blocks is the serialization, in the caller's thread
        (torch.save: ~0.1 s per 100 MiB on one core); the upload runs in the background.

        A `model.state_dict()` (torch tensors, or anything torch.save takes) is written
        with torch.save as `state.pt`; a flat mapping of names to numpy arrays (no torch
        needed) as `state.npz`. Nothing is written to local disk, so nothing can be
        rewritten in place while it uploads."""
        data, default_name = serialize_state(state_dict)
        return self.save(step, {name or default_name: data}, metadata)

    def load_state(self, step: int | None = None, name: str | None = None, map_location: Any = None) -> Any:
        """The state dict save_state() saved at `step` (default: latest), verified
        (size and sha256) before it is deserialized: torch.load(weights_only=True) for
        `state.pt`, a dict of numpy arrays for `state.npz` (no pickles either way)."""
        if name is None:
            names = {f.name for f in self.info(step).files}
            name = next((n for n in STATE_NAMES if n in names), STATE_NAMES[0])
        return deserialize_state(name, self.read(name, step), map_location)

    # --- waiting and closing -------------------------------------------------------
    def _inflight(self) -> list[concurrent.futures.Future]:
        with self._lock:
            futs = list(self._futures.values())
            if self._cleanup_fut is not None and not self._cleanup_fut.done():
                futs.append(self._cleanup_fut)
        return futs

    def pending(self) -> list[int]:
        """Steps whose save has not finished yet."""
        with self._lock:
            return sorted(self._futures)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every save (and background cleanup) started so far.

        Raises the error of a failed save (once), or CheckpointError on timeout."""
        if self._loop.on_loop():
            raise CheckpointError("wait() cannot be called from the Checkpointer's own thread")
        futs = self._inflight()
        _, not_done = concurrent.futures.wait(futs, timeout)
        if not_done:
            raise CheckpointError(f"{len(not_done)} checkpoint saves still pending after {timeout}s")
        self._raise_pending_error()

    def close(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` seconds for pending saves, then shut down.

        Saves still running at the timeout are cancelled and stay uncommitted (the
        next Checkpointer removes their leftovers). Raises CheckpointError if a save
        failed or was cancelled; closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self._atexit)
        problems: list[str] = []
        try:
            futs = self._inflight()
            with self._lock:
                steps = {f: s for s, f in self._futures.items()}
            _, not_done = concurrent.futures.wait(futs, timeout)
            lost = sorted(steps[f] for f in not_done if f in steps)
            if lost:
                problems.append(f"saves of steps {lost} did not finish within {timeout}s and were cancelled "
                                "(not committed)")
            for f in not_done:
                f.cancel()
            with self._lock:
                err, self._error = self._error, None
            if err is not None:
                problems.append(str(err))
        finally:
            try:
                self._loop.submit(self._shutdown()).result(30)
            except Exception as exc:
                log.debug("checkpointer shutdown: %s", exc)
            self._stop_threads()
            with self._snap_lock:
                self._stager.close()
        if problems:
            raise CheckpointError("; ".join(problems))

    async def _shutdown(self) -> None:
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        if self._owns_store:
            await self.store.close()

    def _atexit(self) -> None:
        """Interpreter exit: don't lose the last checkpoint of a script that forgot close()."""
        pending = self.pending()
        if pending:
            log.warning("waiting for checkpoint saves of steps %s before exit", pending)
        try:
            self.close()
        except PailfsError as exc:
            log.error("%s", exc)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except PailfsError as err:  # don't hide the exception that is already propagating
            log.error("while closing after an error: %s", err)


__all__ = ["Checkpointer", "CheckpointInfo", "FileEntry", "MANIFEST_NAME"]
