"""The read path on a real mount: a stat cache smaller than the data set, reading
ahead across the files of a directory, and one copy of small objects (the
kernel's page cache, not pailfs's memory as well)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest

from mounts import mount_stats, mounted, put_objects

RO = "ro,kernel_cache,umask=022"


def blob(seed: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def drop_dentries() -> None:
    """What the kernel does to unused dentries and inodes under memory pressure."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def _read_share(args: tuple[str, list[str]]) -> dict[str, str]:
    mnt, keys = args
    out = {}
    for key in keys:
        with open(os.path.join(mnt, key), "rb") as f:  # what a Dataset's PIL open does
            out[key] = hashlib.sha256(f.read()).hexdigest()
    return out


def read_shuffled(mnt: Path, keys: list[str], workers: int = 4, seed: int = 0) -> dict[str, str]:
    """A DataLoader's epoch: one shuffled order, each worker process its interleaved share."""
    order = list(keys)
    random.Random(seed).shuffle(order)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        shares = pool.map(_read_share, [(str(mnt), order[n::workers]) for n in range(workers)])
    return {k: v for share in shares for k, v in share.items()}


def store_delta(before: dict, after: dict) -> tuple[dict, int]:
    requests = {k: v - before["requests"].get(k, 0) for k, v in after["requests"].items()}
    return requests, after["bytes_down"] - before["bytes_down"]


def test_a_stat_cache_half_the_data_set_never_relists_a_directory(bucket, s3_env, tmp_path):
    """#20.2: an ImageFolder-style job lists the tree, then 4 worker processes open the
    files in shuffled order, with a stat cache half the file count. Entries evicted
    from the cache (and dentries the kernel reclaimed) are found again without a
    LIST of their directory: the LIST count stays at one per directory and the bytes
    fetched stay within 1.2x the data read. It used to re-list a whole directory for
    nearly every miss (20x the bytes here, 57x in the issue's 2,000-file directories)."""
    objects = {f"train/class{d}/{i:04d}.png": blob(d * 10_000 + i, 1500 + (i * 131) % 2500)
               for d in range(4) for i in range(300)}
    put_objects(f"s3://{bucket}", objects)
    files = len(objects)
    with mounted(bucket, tmp_path / "m", f"{RO},max_stat_cache_size={files // 2}") as mnt:
        before = mount_stats(mnt)["store"]
        listed = sorted(os.path.relpath(os.path.join(root, name), mnt)
                        for root, _dirs, names in os.walk(mnt / "train") for name in names)
        assert listed == sorted(objects)
        drop_dentries()
        digests = read_shuffled(mnt, listed)
        stats = mount_stats(mnt)
    assert digests == {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()}
    requests, fetched = store_delta(before, stats["store"])
    assert stats["stat_cache"]["evictions"] > 0  # the cache really was too small
    assert requests.get("list", 0) <= 4 + 2, requests  # train/ and its 4 directories, once each
    data = sum(map(len, objects.values()))
    assert fetched <= 1.2 * data, (fetched, data, requests)
