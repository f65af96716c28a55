"""`pailfs bench --soak MINUTES`: many readers on one read-only mount for a long time.

For the reliability issue: 32 threads read random folder/ files and random
1 MiB ranges of big/ for the given time; the page cache is dropped every
DROP_EVERY seconds so requests keep reaching the mount process. Errors are
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
DROP_EVERY = 10.0  # with kernel_cache, reads reach the mount process only after a drop


def soak(state: "RunState", system: System, seconds: float, progress: "Progress", task: "TaskID") -> dict[str, Any]:
    from pailfs.bench.runner import drop_caches

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
                        with open(big, "rb", buffering=0) as f:
                            f.seek(rng.randrange(big_chunks) * MIB)
                            f.read(MIB)
                    else:
                        fd = os.open(rng.choice(files), os.O_RDONLY)
                        try:
                            os.read(fd, MIB)
                        finally:
                            os.close(fd)
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
        last_drop = t0
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
                if now - last_drop >= DROP_EVERY:
                    drop_caches(state)
                    last_drop = now
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
