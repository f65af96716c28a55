"""The engine of `pailfs cp`: plan the jobs of a copy (upload, download, or
store to store; a tree with -r), skip what is already there unless forced
(resume), and run the jobs in parallel with one progress bar. Also the helpers
every object command shares: one store per bucket, and keys made safe to show.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import stat
import threading
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterable, TypeVar

import typer
from rich.progress import Progress

from pailfs.cli.app import fail
from pailfs.config import Options
from pailfs.errors import BadOption, NotFound, PailfsError, StoreError
from pailfs.store import open_store
from pailfs.store.base import ObjectInfo, ObjectStore
from pailfs.store.url import StoreURL

T = TypeVar("T")


class Stores:
    """One store per bucket for the duration of a command, closed at the end."""

    def __init__(self, opts: Options, stack: AsyncExitStack) -> None:
        self.opts = opts
        self._stack = stack
        self._open: dict[str, ObjectStore] = {}

    def get(self, bucket: str) -> ObjectStore:
        if bucket not in self._open:
            store = open_store(f"s3://{bucket}", self.opts)
            self._stack.push_async_callback(store.close)
            self._open[bucket] = store
        return self._open[bucket]


def run_with_stores(main: Callable[[Stores], Awaitable[T]], opts: Options) -> T:
    """Run main(stores) on a new event loop; every store it opened is closed after.
    SIGTERM (kill, timeout(1), a pod stopping) ends it as Ctrl-C does: the work in
    flight is cancelled and cleans up (an unfinished upload frees its parts)."""
    terminated = []

    async def runner() -> T:
        if threading.current_thread() is threading.main_thread():
            task = asyncio.current_task()
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGTERM, lambda: (terminated.append(True), task.cancel()))  # type: ignore[union-attr]
        async with AsyncExitStack() as stack:
            return await main(Stores(opts, stack))
    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        if terminated:
            raise fail("interrupted (SIGTERM)", 130) from None
        raise


def shown(key: str) -> str:
    """A key as it may be written to a terminal: control and other unprintable
    characters escaped (\\x1b, \\u202e), so a hostile key cannot drive the terminal."""
    if key.isprintable():
        return key
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in key)


def key_problem(rel: str) -> str | None:
    """Why a listed key (relative to the prefix being copied or removed) cannot be
    taken as a path: a '.'/'..' or empty segment, a leading '/', NUL — keys that
    HTTP clients, servers or file systems would turn into another name."""
    if not rel:
        return "is empty"
    if rel.startswith("/"):
        return "starts with '/'"
    parts = (rel[:-1] if rel.endswith("/") else rel).split("/")
    if any(p in (".", "..") for p in parts):
        return "has a '.' or '..' path segment"
    if any(p == "" for p in parts):
        return "has an empty path segment ('//')"
    if "\0" in rel:
        return "holds a NUL character"
    return None


class Skips:
    """Keys or files a batch left out: each is reported on stderr at once (escaped),
    the rest of the batch goes on, and the command ends with exit status 1."""

    def __init__(self) -> None:
        self.count = 0

    def skip(self, what: str, reason: str) -> None:
        self.count += 1
        typer.echo(f"pailfs: skipping {shown(what)}: {reason}", err=True)

    def finish(self, done: int, verb: str) -> None:
        if self.count:
            raise StoreError(f"{self.count} skipped (named above); {done} {verb}")


MAX_KEY_BYTES = 1024  # S3's limit
MAX_NAME_BYTES = 255  # one path segment on local file systems (and SeaweedFS)


@dataclass
class Job:
    size: int
    run: Callable[[Callable[[int], None]], Awaitable[object]]


@dataclass
class Plan:
    jobs: list[Job]
    unchanged: int = 0  # already at the destination with the same size and checksum


def prefix_of(path: str) -> str:
    return path if not path or path.endswith("/") else path + "/"


def local_files(root: Path) -> Iterable[tuple[Path, str]]:
    """Files under a local directory with '/'-joined relative names (symlinks to
    directories are not followed; symlinks to files are)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_file():
                yield path, path.relative_to(root).as_posix()


def file_md5s(path: Path, part_size: int) -> tuple[str, str]:
    """(MD5 of the whole file, S3 multipart ETag for parts of part_size) — the two
    forms of ETag an S3 server gives an object uploaded whole or in parts."""
    whole = hashlib.md5()
    parts = []
    with open(path, "rb") as f:
        while block := f.read(part_size):
            whole.update(block)
            parts.append(hashlib.md5(block).digest())
    multipart = hashlib.md5(b"".join(parts)).hexdigest() + f"-{len(parts)}"
    return whole.hexdigest(), multipart


async def same_content(path: Path, size: int, etag: str | None, part_size: int) -> bool:
    """True when the local file has the object's size and (where the ETag is an MD5
    of the whole object or of its parts) the object's checksum: resume skips it."""
    try:
        st = path.stat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    tag = (etag or "").strip('"')
    if not tag:
        return True  # the store told no checksum: size is all there is to compare
    whole, multipart = await asyncio.to_thread(file_md5s, path, part_size)
    return tag in (whole, multipart)


async def plan_upload(stores: Stores, src: str, dst: StoreURL, recursive: bool, force: bool,
                       skips: Skips) -> Plan:
    store = stores.get(dst.bucket)
    path = Path(src)
    if not path.exists():
        raise NotFound(f"cp: no such local file or directory: {src}")
    if not path.is_dir():
        key = dst.path + path.name if not dst.path or dst.path.endswith("/") else dst.path
        return Plan([Job(path.stat().st_size, lambda prog: store.put_file(key, path, progress=prog))])
    if not recursive:
        raise BadOption(f"cp: {src} is a directory; use cp -r")
    base = prefix_of(dst.path)
    present = {} if force else {o.key: o for o in (await store.list(base)).objects}
    part_size = stores.opts.multipart_size * 1024 * 1024
    plan = Plan([])
    for file, rel in local_files(path):
        key = base + rel
        try:
            too_long = len(key.encode()) > MAX_KEY_BYTES
        except UnicodeEncodeError:
            skips.skip(str(file), "the name is not valid UTF-8, so it cannot be a key")
            continue
        if too_long:
            skips.skip(str(file), f"the key would be longer than {MAX_KEY_BYTES} bytes")
            continue
        size = file.stat().st_size
        there = present.get(key)
        if there is not None and await same_content(file, there.size, there.etag, part_size):
            plan.unchanged += 1
            continue
        plan.jobs.append(Job(size, lambda prog, p=file, k=key: store.put_file(k, p, progress=prog)))
    return plan


async def plan_download(stores: Stores, src: StoreURL, dst: str, recursive: bool, force: bool,
                         skips: Skips) -> Plan:
    store = stores.get(src.bucket)
    target = Path(dst)
    if recursive:
        return await plan_tree_download(stores, store, src, target, force, skips)
    if not src.path or src.path.endswith("/"):
        raise BadOption(f"cp: s3://{src.bucket}/{src.path} is a prefix; use cp -r")
    try:
        info = await store.head(src.path)
    except NotFound:
        async for page in store.list_pages(src.path + "/", "/"):
            if page.objects or page.prefixes:
                raise BadOption(f"cp: s3://{src.bucket}/{src.path} is a prefix; use cp -r") from None
            break
        raise
    if dst.endswith(("/", os.sep)) or target.is_dir():
        target = target / src.path.rsplit("/", 1)[-1]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cp: cannot create directory {target.parent}: {exc.strerror}") from None
    return Plan([Job(info.size, lambda prog: store.get_file(src.path, target, progress=prog))])


async def plan_tree_download(stores: Stores, store: ObjectStore, src: StoreURL, target: Path, force: bool,
                              skips: Skips) -> Plan:
    """Every key under the prefix as a file below target. A key that cannot be a path
    there (it would escape target, name a directory that is also a file, or hold data
    under a name ending in '/') is reported and skipped; the rest is downloaded."""
    prefix = prefix_of(src.path)
    files: dict[str, ObjectInfo] = {}
    dirs: set[str] = set()
    async for page in store.list_pages(prefix):
        for obj in page.objects:
            rel = obj.key[len(prefix):]
            if not rel:
                continue  # the prefix's own marker
            where = f"s3://{src.bucket}/{obj.key}"
            problem = key_problem(rel)
            if problem is None and any(len(p.encode()) > MAX_NAME_BYTES for p in rel.split("/")):
                problem = f"has a path segment longer than {MAX_NAME_BYTES} bytes"
            if problem is None and obj.is_dir_marker and obj.size:
                problem = f"holds {obj.size} bytes under a name ending in '/', which no local file can have"
            if problem is not None:
                skips.skip(where, f"the key {problem}")
            elif obj.is_dir_marker:
                dirs.add(rel[:-1])
            else:
                files[rel] = obj
    for rel in files:
        parts = rel.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for rel in [r for r in files if r in dirs]:
        skips.skip(f"s3://{src.bucket}/{prefix}{rel}", "other keys need a directory of that name")
        del files[rel]
    if not files and not dirs and not skips.count:
        await store.check()
        raise NotFound(f"cp: nothing under s3://{src.bucket}/{prefix}")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cp: cannot create directory {target}: {exc.strerror}") from None
    broken: set[str] = set()
    for d in sorted(dirs):
        try:
            (target / d).mkdir(exist_ok=True)
        except OSError as exc:
            broken.add(d)
            skips.skip(str(target / d), f"cannot create the directory ({exc.strerror}); the keys under it are skipped")
    part_size = stores.opts.multipart_size * 1024 * 1024
    plan = Plan([])
    for rel, obj in files.items():
        path = target / rel
        parents = {"/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)}
        if parents & broken:
            continue
        if path.is_dir():
            skips.skip(f"s3://{src.bucket}/{obj.key}", f"{path} is a directory")
            continue
        if not force and await same_content(path, obj.size, obj.etag, part_size):
            plan.unchanged += 1
            continue
        plan.jobs.append(Job(obj.size, lambda prog, k=obj.key, p=path: store.get_file(k, p, progress=prog)))
    return plan


async def plan_copy(stores: Stores, src: StoreURL, dst: StoreURL, recursive: bool, skips: Skips) -> Plan:
    from pailfs.store.s3 import S3Store
    source, dest = stores.get(src.bucket), stores.get(dst.bucket)

    def job(size: int, key: str, new_key: str) -> Job:
        async def run(prog: Callable[[int], None]) -> None:
            if src.bucket == dst.bucket:
                await dest.copy(key, new_key)
            else:
                assert isinstance(dest, S3Store) and isinstance(source, S3Store)
                await dest.copy_from(source, key, new_key)
            prog(size)
        return Job(size, run)

    if recursive:
        prefix, base = prefix_of(src.path), prefix_of(dst.path)
        jobs = []
        for o in (await source.list(prefix)).objects:
            rel = o.key[len(prefix):]
            if not rel:
                continue
            problem = key_problem(rel)
            if problem is not None:
                skips.skip(f"s3://{src.bucket}/{o.key}", f"the key {problem}")
                continue
            jobs.append(job(o.size, o.key, base + rel))
        if not jobs and not skips.count:
            await source.check()
            raise NotFound(f"cp: nothing under s3://{src.bucket}/{prefix}")
        return Plan(jobs)
    if not src.path or src.path.endswith("/"):
        raise BadOption(f"cp: s3://{src.bucket}/{src.path} is a prefix; use cp -r")
    info = await source.head(src.path)
    new_key = dst.path + src.path.rsplit("/", 1)[-1] if not dst.path or dst.path.endswith("/") else dst.path
    return Plan([job(info.size, src.path, new_key)])


async def run_jobs(jobs: list[Job], workers: int, progress: Progress | None) -> None:
    """Run jobs with at most `workers` in flight; the first failure cancels the rest."""
    total = sum(j.size for j in jobs)
    bytes_task = progress.add_task("copy", total=total) if progress else None
    files_task = progress.add_task("files", total=len(jobs)) if progress else None

    def advance(n: int) -> None:
        if progress is not None:
            progress.advance(bytes_task, n)  # type: ignore[arg-type]

    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:  # one shared iterator: each job is taken once
            await job.run(advance)
            if progress is not None:
                progress.advance(files_task, 1)  # type: ignore[arg-type]

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(workers, len(jobs))):
                tg.create_task(worker())
    except BaseExceptionGroup as group:
        raise first_error(group) from None


def first_error(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if isinstance(exc, PailfsError):
            return exc
        if isinstance(exc, OSError):
            return StoreError(f"cp: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    return group.exceptions[0]


