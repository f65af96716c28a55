"""The benchmark data set: generated from a seed, uploaded once, copied to local disk.

Layout (docs/benchmarks.md, "What is measured"):

    mnist/   the 4 MNIST IDX .gz files at their real sizes (random bytes)
    folder/  `files` files of 2-4 KB in 10 class folders
    big/     one file of `big_bytes`

A manifest object (written last) records the spec and every file's SHA-256, so a
bucket that already holds the same data set (`--endpoint`) is not uploaded again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import obstore

from pailfs.bench.target import Target

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MNIST = (  # name, size in bytes
    ("train-images-idx3-ubyte.gz", 9_912_422),
    ("train-labels-idx1-ubyte.gz", 28_881),
    ("t10k-images-idx3-ubyte.gz", 1_648_877),
    ("t10k-labels-idx1-ubyte.gz", 4_542),
)
CLASSES = 10
MANIFEST_KEY = "bench-manifest.json"
UPLOAD_CONCURRENCY = 64


@dataclass(frozen=True)
class DatasetSpec:
    files: int = 10_000
    big_bytes: int = 256 * MIB
    seed: int = 20240611

    @property
    def big_key(self) -> str:
        return "big/big.bin"


@dataclass
class Dataset:
    """What was generated: keys, sizes and hashes (the ground truth for verification)."""

    spec: DatasetSpec
    sizes: dict[str, int] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def mnist_keys(self) -> list[str]:
        return [f"mnist/{name}" for name, _ in MNIST]

    @property
    def folder_keys(self) -> list[str]:
        return [k for k in self.sizes if k.startswith("folder/")]

    @property
    def big_key(self) -> str:
        return self.spec.big_key

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def sample(self, n: int = 50) -> list[str]:
        """A fixed sample of keys to hash on every system before timing it."""
        rng = random.Random(self.spec.seed)
        folder = self.folder_keys
        return self.mnist_keys + rng.sample(folder, min(n, len(folder))) + [self.big_key]

    def manifest(self) -> bytes:
        return json.dumps({"spec": asdict(self.spec), "sizes": self.sizes, "sha256": self.sha256},
                          sort_keys=True).encode()


def folder_key(cls: int, index: int) -> str:
    return f"folder/class{cls}/{index:05d}.jpg"


def generate(spec: DatasetSpec) -> Iterator[tuple[str, bytes]]:
    """Every (key, content) of the data set, always the same for one spec."""
    rng = np.random.default_rng(spec.seed)
    for name, size in MNIST:
        yield f"mnist/{name}", rng.bytes(size)
    sizes = rng.integers(2048, 4097, spec.files)
    blob = rng.bytes(int(sizes.sum()))
    offset = 0
    for i, size in enumerate(sizes.tolist()):
        # round-robin over classes, numbered within the class, like ImageFolder trees
        yield folder_key(i % CLASSES, i // CLASSES), blob[offset:offset + size]
        offset += size
    yield spec.big_key, rng.bytes(spec.big_bytes)


async def _existing_manifest(target: Target) -> bytes | None:
    try:
        result = await obstore.get_async(target.obstore(), MANIFEST_KEY)
        return bytes(await result.bytes_async())
    except FileNotFoundError:
        return None


async def _upload(target: Target, items: list[tuple[str, bytes]], progress: Callable[[int], None]) -> None:
    store = target.obstore()
    sem = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def put(key: str, data: bytes) -> None:
        async with sem:
            await obstore.put_async(store, key, data, chunk_size=16 * MIB, max_concurrency=8)
        progress(len(data))

    await asyncio.gather(*(put(k, d) for k, d in items))


def prepare(spec: DatasetSpec, target: Target, local_root: Path,
            progress: Callable[[int], None] = lambda n: None) -> Dataset:
    """Generate the data set, upload it unless the bucket has it already, write the local copy."""
    ds = Dataset(spec)
    items: list[tuple[str, bytes]] = []
    for key, data in generate(spec):
        ds.sizes[key] = len(data)
        ds.sha256[key] = hashlib.sha256(data).hexdigest()
        path = local_root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        items.append((key, data))
    manifest = ds.manifest()
    if asyncio.run(_existing_manifest(target)) == manifest:
        log.info("bucket %s already holds this data set; not uploading", target.bucket)
        progress(ds.total_bytes)
        return ds
    asyncio.run(_upload(target, items, progress))
    # written last: its presence means the whole data set is there
    obstore.put(target.obstore(), MANIFEST_KEY, manifest)
    return ds


def sha256_file(path: str | os.PathLike, chunk: int = MIB) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
