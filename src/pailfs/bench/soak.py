"""`pailfs bench --soak MINUTES`: many readers on one read-only mount for a long time.

For the reliability issue: 32 threads read random folder/ files, random 1 MiB
ranges of big/ and list directories for the given time. After each read the
reader evicts that file's pages (posix_fadvise DONTNEED), so every read reaches
the mount process without dropping the whole machine's caches. Errors are
counted and the mount process's RSS is sampled; the growth is what we look for.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from pailfs.bench.dataset import MIB
from pailfs.bench.systems import System

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from pailfs.bench.runner import RunState

log = logging.getLogger(__name__)

THREADS = 32
SAMPLE_EVERY = 5.0


def _read_and_evict(path: str, offset: int = 0, size: int = MIB) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, size, offset)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next read goes to the mount again
    finally:
        os.close(fd)


def soak(state: "RunState", system: System, seconds: float, progress: "Progress", task: "TaskID") -> dict[str, Any]:
    env, ds = state.env, state.ds
    assert env is not None and ds is not None
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"ops": 0, "errors": 0}
    first_error: list[str] = []
    samples: list[dict[str, float]] = []

    with system.open(env) as s:
        root = str(s.root)
        files = [f"{root}/{k}" for k in ds.folder_keys]
        big = f"{root}/{ds.big_key}"
        big_chunks = max(1, ds.spec.big_bytes // MIB)

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            ops = errors = 0
            while not stop.is_set():
                try:
                    roll = rng.random()
                    if roll < 0.01:  # directory listings too: the metadata side
                        os.listdir(os.path.dirname(rng.choice(files)))
                    elif roll < 0.03:
                        _read_and_evict(big, rng.randrange(big_chunks) * MIB)
                    else:
                        _read_and_evict(rng.choice(files))
                    ops += 1
                except OSError as exc:
                    errors += 1
                    with lock:
                        if not first_error:
                            first_error.append(f"{exc.strerror} ({exc.filename})")
                if ops % 256 == 0 or errors:
                    with lock:
                        counts["ops"] += ops
                        counts["errors"] += errors
                    ops = errors = 0
            with lock:
                counts["ops"] += ops
                counts["errors"] += errors

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(THREADS)]
        t0 = time.monotonic()
        progress.update(task, total=seconds, completed=0)
        for t in threads:
            t.start()
        try:
            while (now := time.monotonic()) - t0 < seconds:
                time.sleep(min(SAMPLE_EVERY, max(0.0, seconds - (now - t0))))
                now = time.monotonic()
                with lock:
                    samples.append({"t": now - t0, "rss": s.rss(), "ops": counts["ops"], "errors": counts["errors"],
                                    "cpu": s.fs_cpu()})
                progress.update(task, completed=min(seconds, now - t0),
                                description=f"soak: {counts['ops']:,} reads, {counts['errors']} errors, "
                                            f"RSS {samples[-1]['rss'] / MIB:.0f} MiB")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    elapsed = time.monotonic() - t0
    rss = [x["rss"] for x in samples] or [0]
    # the first sample is taken after the caches filled a little; growth is measured from it
    result = {"system": system.name, "threads": THREADS, "seconds": elapsed, "ops": counts["ops"],
              "errors": counts["errors"], "first_error": first_error[0] if first_error else "",
              "rss_first": rss[0], "rss_last": rss[-1], "rss_max": max(rss), "rss_growth": rss[-1] - rss[0],
              "samples": samples}
    log.info("soak: %d reads, %d errors, RSS %d -> %d", counts["ops"], counts["errors"], rss[0], rss[-1])
    return result
