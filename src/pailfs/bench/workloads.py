"""The timed workloads, each written once for a directory and once for the SDK.

A workload function gets a Session, the Dataset, a fresh relative destination
(for writes) and a Budget, and returns the number of operations it did; the
runner times it. A pass that runs out of its time budget stops early with
OverBudget(done, total) and the runner extrapolates: a system 100x slower than
the rest need not hold the whole run up for an exact figure. Readers use os.open/os.read (no Python buffering) unless the workload
says `open()`, because the two differ on FUSE (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

import obstore

from pailfs.bench.dataset import MIB, Dataset
from pailfs.bench.systems import Session

THREADS = 8
CREATE_FILES = 1000
SMALL_FILE = 3 * 1024
LOADER_WORKERS = 4  # a DataLoader's worker processes
LOADER_SEED = 20240611  # the one shuffled order every system reads
WARMUP_JOBS = 16  # `pailfs warmup`'s default
SDK_PARALLEL = 64  # GETs in flight in the SDK's parallel download
RANGE_PART = 8 * MIB  # the SDK's parallel ranged download of big/: part size, parts in flight
RANGES_IN_FLIGHT = 16


class OverBudget(Exception):
    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"over budget after {done} of {total}")
        self.done, self.total = done, total


class Budget:
    """A deadline for one pass; `over()` is cheap enough to ask per file."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = time.monotonic() + seconds if seconds else math.inf

    def over(self) -> bool:
        return time.monotonic() > self.deadline


Op = Callable[[Session, Dataset, str, Budget], int]


@dataclass(frozen=True)
class Workload:
    name: str  # id used on the command line and in results.json
    title: str  # may name {files}, {big} and {creates}: filled in from the data set
    kind: str  # "read" or "write"
    on_fs: Op | None  # None: the SDK only (a floor for the file systems' figures)
    on_sdk: Op | None  # None: not applicable to the SDK (says why in sdk_note)
    sdk_note: str = ""


# --- helpers -------------------------------------------------------------------
def _read_whole(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        n = 0
        while chunk := os.read(fd, MIB):
            n += len(chunk)
        return n
    finally:
        os.close(fd)


def _each(items: list, fn: Callable, budget: Budget) -> int:
    for i, item in enumerate(items):
        if budget.over():
            raise OverBudget(i, len(items))
        fn(item)
    return len(items)


def _in_threads(items: list, fn: Callable, threads: int, budget: Budget) -> int:
    """fn over items in `threads` threads, each taking every n-th item (no per-item executor cost)."""
    errors: list[BaseException] = []
    done = [0] * threads
    stop = threading.Event()

    def worker(n: int) -> None:
        try:
            for item in items[n::threads]:
                if stop.is_set() or budget.over():
                    return
                fn(item)
                done[n] += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join()
    except BaseException:  # Ctrl-C: stop the readers, or they keep the mount busy
        stop.set()
        for w in workers:
            w.join()
        raise
    if errors:
        raise errors[0]
    if sum(done) < len(items):
        raise OverBudget(sum(done), len(items))
    return len(items)


# A DataLoader worker: reads the NUL-separated paths of the file argv[2] until the
# deadline argv[1] (CLOCK_MONOTONIC, shared by every process), prints how many it read.
_WORKER = """
import sys, time
deadline = float(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    paths = f.read().split(b"\\0")
done = 0
for path in paths:
    if not path or time.monotonic() > deadline:
        break
    with open(path, "rb") as f:  # a Dataset's open(): the isatty ioctl included
        f.read()
    done += 1
print(done)
"""


def _in_processes(items: list[str], workers: int, budget: Budget) -> int:
    """Read items in `workers` fresh processes at once, each every n-th item: a
    DataLoader's workers with their interleaved shares of one sampler order. Started
    with exec, not fork: a fork of the bench (its progress, proxy and SDK threads)
    can inherit a held lock and hang."""
    with tempfile.TemporaryDirectory(prefix="pailfs-loader-") as tmp:
        procs = []
        try:
            for n in range(workers):
                share = os.path.join(tmp, f"share{n}")
                with open(share, "wb") as f:
                    f.write("\0".join(items[n::workers]).encode())
                procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, repr(budget.deadline), share],
                                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE))
            outs = [p.communicate() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            raise AssertionError(f"a loader worker failed ({p.returncode}): {err.decode()[-300:]}")
    done = sum(int(out) for out, _err in outs)
    if done < len(items):
        raise OverBudget(done, len(items))
    return done


def _shuffled(keys: list[str]) -> list[str]:
    order = sorted(keys)
    random.Random(LOADER_SEED).shuffle(order)
    return order


def _drop_dentries() -> None:
    """What the kernel does to unused dentries and inodes under a long job's memory
    pressure (root only; without root the pass keeps them)."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
    except OSError:
        pass


def _paths(session: Session, keys: list[str]) -> list[str]:
    root = str(session.root)
    return [f"{root}/{k}" for k in keys]


def _sdk_get(session: Session, key: str) -> int:
    return len(obstore.get(session.store, key).bytes())


# --- reads -------------------------------------------------------------------
def mnist_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    for p in _paths(s, ds.mnist_keys):
        _read_whole(p)
    return len(ds.mnist_keys)


def mnist_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    for key in ds.mnist_keys:
        _sdk_get(s, key)
    return len(ds.mnist_keys)


def walk_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    n = 0
    for root, _dirs, files in os.walk(f"{s.root}/folder"):
        for name in files:
            if budget.over():
                raise OverBudget(n, len(ds.folder_keys))
            os.stat(f"{root}/{name}")
            n += 1
    if n != len(ds.folder_keys):
        raise AssertionError(f"walk saw {n} files, expected {len(ds.folder_keys)}")
    return n


def walk_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    # LIST carries size and mtime: the SDK's walk + stat
    n = sum(len(batch) for batch in obstore.list(s.store, "folder/", chunk_size=1000))
    if n != len(ds.folder_keys):
        raise AssertionError(f"LIST saw {n} objects, expected {len(ds.folder_keys)}")
    return n


def folder_paths(s: Session, ds: Dataset) -> list[str]:
    return _paths(s, sorted(ds.folder_keys))


def read1_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    return _each(folder_paths(s, ds), _read_whole, budget)


def read1_open_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    def read(path: str) -> None:
        with open(path, "rb") as f:
            f.read()

    return _each(folder_paths(s, ds), read, budget)


def read1_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    return _each(sorted(ds.folder_keys), lambda k: _sdk_get(s, k), budget)


def read8_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    return _in_threads(folder_paths(s, ds), _read_whole, THREADS, budget)


def read8_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    return _in_threads(sorted(ds.folder_keys), lambda k: _sdk_get(s, k), THREADS, budget)


def big_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    buf = bytearray(MIB)
    n = 0
    with open(f"{s.root}/{ds.big_key}", "rb", buffering=0) as f:
        while got := f.readinto(buf):
            n += got
            if budget.over():
                raise OverBudget(n, ds.sizes[ds.big_key])
    if n != ds.sizes[ds.big_key]:
        raise AssertionError(f"read {n} bytes of {ds.big_key}, expected {ds.sizes[ds.big_key]}")
    return n // MIB


def big_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    n = 0
    for chunk in obstore.get(s.store, ds.big_key).stream(min_chunk_size=MIB):
        n += len(chunk)
        if budget.over():
            raise OverBudget(n, ds.sizes[ds.big_key])
    if n != ds.sizes[ds.big_key]:
        raise AssertionError(f"got {n} bytes of {ds.big_key}, expected {ds.sizes[ds.big_key]}")
    return n // MIB


def big_ranged_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    """The SDK's parallel ranged download: the second floor for big/."""
    size = ds.sizes[ds.big_key]

    async def run() -> int:
        sem = asyncio.Semaphore(RANGES_IN_FLIGHT)

        async def part(start: int) -> int:
            async with sem:
                got = await obstore.get_range_async(s.store, ds.big_key, start=start, end=min(start + RANGE_PART, size))
                return len(got)

        return sum(await asyncio.gather(*(part(start) for start in range(0, size, RANGE_PART))))

    n = asyncio.run(run())
    if n != size:
        raise AssertionError(f"got {n} bytes of {ds.big_key}, expected {size}")
    return n // MIB


def loader_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    return _in_processes(_paths(s, _shuffled(ds.folder_keys)), LOADER_WORKERS, budget)


def loader_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    return _in_threads(_shuffled(ds.folder_keys), lambda k: _sdk_get(s, k), LOADER_WORKERS, budget)


def imagefolder_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    """torchvision's ImageFolder: list the tree, then the DataLoader's workers open the
    files in shuffled order. Between the two the dentries are dropped, as a long job's
    memory pressure does: every open is a LOOKUP, which the stat cache must answer."""
    paths = []
    for root, dirs, files in os.walk(f"{s.root}/folder"):
        dirs.sort()
        paths += [f"{root}/{name}" for name in sorted(files)]
    if len(paths) != len(ds.folder_keys):
        raise AssertionError(f"listed {len(paths)} files, expected {len(ds.folder_keys)}")
    _drop_dentries()
    order = list(paths)
    random.Random(LOADER_SEED).shuffle(order)
    return _in_processes(order, LOADER_WORKERS, budget)


def imagefolder_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    keys = [o["path"] for batch in obstore.list(s.store, "folder/", chunk_size=1000) for o in batch]
    if len(keys) != len(ds.folder_keys):
        raise AssertionError(f"listed {len(keys)} objects, expected {len(ds.folder_keys)}")
    return loader_sdk(s, ds, dest, budget)


def warmup_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    """`pailfs warmup -j 16` of folder/ on a pailfs mount; on the others what it does:
    a walk + stat, then 16 threads reading every file in listing order."""
    folder = f"{s.root}/folder"
    if s.system.name.startswith("pailfs"):
        proc = subprocess.run([sys.executable, "-m", "pailfs", "warmup", folder, "-j", str(WARMUP_JOBS)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=budget.deadline - time.monotonic() + 60 if budget.deadline < math.inf else None)
        if proc.returncode != 0 or f"warmed {len(ds.folder_keys)} files" not in proc.stdout:
            raise AssertionError(f"pailfs warmup failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}")
        return len(ds.folder_keys)
    paths = [f"{root}/{name}" for root, _dirs, files in os.walk(folder) for name in sorted(files)]
    for path in paths:
        os.stat(path)
    return _in_threads(sorted(paths), _read_whole, WARMUP_JOBS, budget)


def warmup_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    """The SDK's parallel download: LIST, then SDK_PARALLEL GETs in flight."""
    keys = [o["path"] for batch in obstore.list(s.store, "folder/", chunk_size=1000) for o in batch]

    async def run() -> int:
        sem = asyncio.Semaphore(SDK_PARALLEL)

        async def one(key: str) -> int:
            async with sem:
                got = await obstore.get_async(s.store, key)
                return len(await got.bytes_async())

        await asyncio.gather(*(one(k) for k in keys))
        return len(keys)

    return asyncio.run(run())


# --- writes (dest: a fresh relative directory) ----------------------------------
_PAYLOAD = os.urandom(MIB)


def creates(ds: Dataset) -> int:
    return min(CREATE_FILES, ds.spec.files)  # tiny test data sets create fewer


def create_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    base = f"{s.root}/{dest}"
    os.makedirs(base, exist_ok=True)
    for i in range(creates(ds)):
        if budget.over():
            raise OverBudget(i, creates(ds))
        fd = os.open(f"{base}/{i:04d}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, _PAYLOAD[i:i + SMALL_FILE])
        finally:
            os.close(fd)  # rw mounts upload here
    return creates(ds)


def create_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    for i in range(creates(ds)):
        if budget.over():
            raise OverBudget(i, creates(ds))
        obstore.put(s.store, f"{dest}/{i:04d}.bin", _PAYLOAD[i:i + SMALL_FILE])
    return creates(ds)


def write_big_fs(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    base = f"{s.root}/{dest}"
    os.makedirs(base, exist_ok=True)
    chunks = ds.spec.big_bytes // MIB
    fd = os.open(f"{base}/big.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(chunks):
            if budget.over():
                raise OverBudget(i, chunks)
            os.write(fd, _PAYLOAD)
    finally:
        os.close(fd)
    return chunks


def write_big_sdk(s: Session, ds: Dataset, dest: str, budget: Budget) -> int:
    chunks = ds.spec.big_bytes // MIB
    # an iterable makes obstore upload in parts, several in flight: its best case
    obstore.put(s.store, f"{dest}/big.bin", (_PAYLOAD for _ in range(chunks)),
                chunk_size=8 * MIB, max_concurrency=8)
    return chunks


WORKLOADS: tuple[Workload, ...] = (
    Workload("mnist", "read the 4 MNIST files", "read", mnist_fs, mnist_sdk),
    Workload("walk", "walk + stat folder/ ({files} files)", "read", walk_fs, walk_sdk),
    Workload("read1", "read folder/ ({files} files), 1 thread, os.read", "read", read1_fs, read1_sdk),
    Workload("read1-open", "read folder/ ({files} files), 1 thread, open()", "read", read1_open_fs, None,
             "no open() in an SDK; see read1"),
    Workload("read8", "read folder/ ({files} files), 8 threads, os.read", "read", read8_fs, read8_sdk),
    Workload("big", "read big/ ({big}) sequentially, 1 MiB reads", "read", big_fs, big_sdk),
    Workload("big-ranged", "read big/ ({big}) in parallel ranged GETs (SDK: the second floor)", "read",
             None, big_ranged_sdk),
    Workload("loader", "DataLoader: folder/ in one shuffled order, 4 worker processes, open()", "read",
             loader_fs, loader_sdk),
    Workload("imagefolder", "ImageFolder: list folder/, drop dentries, 4 workers shuffled", "read",
             imagefolder_fs, imagefolder_sdk),
    Workload("warmup", "warmup of folder/ (pailfs warmup -j 16; SDK: 64 GETs in flight)", "read",
             warmup_fs, warmup_sdk),
    Workload("create", "create {creates} small files", "write", create_fs, create_sdk),
    Workload("write-big", "write one {big} file, 1 MiB writes", "write", write_big_fs, write_big_sdk),
)
BY_NAME = {w.name: w for w in WORKLOADS}
DEFAULT_WORKLOADS = tuple(w.name for w in WORKLOADS) + ("checkpoint",)
