"""`pailfs ls|stat|cp|rm|mb|rb`: ossutil-like object commands.

Remote locations are `s3://bucket/key` (also `oss://`); anything else given to
`cp` is a local path. Endpoint and keys come from `-o`, `--endpoint`, the
environment and passwd files, exactly as for a mount. Data goes to stdout,
progress and summaries to stderr; every failure is one `pailfs: ...` line.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from pailfs.cli.app import app
from pailfs.config import Options, parse_options
from pailfs.errors import BadOption, NotFound, PailfsError, StoreError
from pailfs.store import open_store
from pailfs.store.base import ObjectInfo, ObjectStore
from pailfs.store.url import StoreURL, is_remote_url, parse_url

T = TypeVar("T")

OptionArg = typer.Option([], "-o", "--option", metavar="OPT[,OPT...]",
                         help="Options as for mount, e.g. -o multipart_size=64,parallel_count=32 (see docs/configuration.md).")
EndpointArg = typer.Option(None, "--endpoint", metavar="URL",
                           help="Endpoint, e.g. http://127.0.0.1:8333 (default: -o url=, $PAILFS_ENDPOINT, $URL).")
RecursiveArg = typer.Option(False, "-r", "--recursive", help="Every key under the prefix (cp: a whole tree).")
QuietArg = typer.Option(False, "-q", "--quiet", help="No progress bar and no summary.")


def _options(option: list[str], endpoint: str | None) -> Options:
    opts = parse_options(option)
    return opts.with_(url=endpoint) if endpoint else opts


def _remote(text: str, *, allow_no_bucket: bool = False) -> StoreURL:
    loc = parse_url(text, allow_no_bucket=allow_no_bucket)
    if loc.scheme != "s3":
        raise BadOption(f"'{text}' is not an s3:// URL")
    return loc


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


def _run(main: Callable[[Stores], Awaitable[T]], opts: Options) -> T:
    async def runner() -> T:
        async with AsyncExitStack() as stack:
            return await main(Stores(opts, stack))
    return asyncio.run(runner())


def _fmt_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _echo(line: str) -> None:
    try:
        typer.echo(line)
    except BrokenPipeError:  # `pailfs ls | head`
        sys.stderr.close()
        raise typer.Exit(0) from None


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


# --- ls ---------------------------------------------------------------------
@app.command("ls")
def ls_cmd(url: str = typer.Argument("s3://", help="s3://bucket/prefix; s3:// lists the buckets."),
           recursive: bool = RecursiveArg, option: list[str] = OptionArg,
           endpoint: Optional[str] = EndpointArg) -> None:
    """List prefixes and objects (size, mtime) under a prefix, or the buckets."""
    loc = _remote(url, allow_no_bucket=True)
    opts = _options(option, endpoint)

    async def main(stores: Stores) -> None:
        if not loc.bucket:
            from pailfs.credentials import resolve_credentials
            from pailfs.store.s3 import list_buckets
            if not opts.url:
                raise BadOption("no endpoint: pass --endpoint URL or -o url=URL, or set PAILFS_ENDPOINT")
            for name, created in await list_buckets(opts.url, resolve_credentials(None, opts), opts):
                _echo(f"{_fmt_time(created)}  s3://{name}")
            return
        store = stores.get(loc.bucket)
        async for page in store.list_pages(loc.path, None if recursive else "/"):
            for prefix in page.prefixes:
                _echo(f"{'':19} {'DIR':>12}  {shown(prefix)}")
            for obj in page.objects:
                _echo(f"{_fmt_time(obj.mtime)} {obj.size:>12}  {shown(obj.key)}")

    _run(main, opts)


# --- stat -------------------------------------------------------------------
@app.command("stat")
def stat_cmd(url: str = typer.Argument(..., help="s3://bucket/key, or s3://bucket"),
             option: list[str] = OptionArg, endpoint: Optional[str] = EndpointArg) -> None:
    """Show an object's size, mtime, ETag and user metadata (or check a bucket)."""
    loc = _remote(url)
    opts = _options(option, endpoint)

    async def main(stores: Stores) -> None:
        store = stores.get(loc.bucket)
        if not loc.path:
            await store.check()
            _echo(f"bucket:   s3://{loc.bucket}\nendpoint: {opts.url}")
            return
        try:
            info = await store.head(loc.path)
        except NotFound:
            prefix = loc.path if loc.path.endswith("/") else loc.path + "/"
            async for page in store.list_pages(prefix, "/"):
                if page.objects or page.prefixes:
                    _echo(f"prefix:   s3://{loc.bucket}/{shown(prefix)} (no object of its own)")
                    return
                break
            raise
        _echo(f"key:      s3://{loc.bucket}/{shown(info.key)}\nsize:     {info.size}\n"
              f"modified: {_fmt_time(info.mtime)}\netag:     {shown(info.etag or '-')}")
        for name, value in sorted((info.metadata or {}).items()):
            _echo(f"meta:     {shown(name)}={shown(value)}")

    _run(main, opts)


# --- cp ---------------------------------------------------------------------
MAX_KEY_BYTES = 1024  # S3's limit
MAX_NAME_BYTES = 255  # one path segment on local file systems (and SeaweedFS)


@dataclass
class _Job:
    size: int
    run: Callable[[Callable[[int], None]], Awaitable[object]]


@dataclass
class _Plan:
    jobs: list[_Job]
    unchanged: int = 0  # already at the destination with the same size and checksum


def _prefix_of(path: str) -> str:
    return path if not path or path.endswith("/") else path + "/"


def _local_files(root: Path) -> Iterable[tuple[Path, str]]:
    """Files under a local directory with '/'-joined relative names (symlinks to
    directories are not followed; symlinks to files are)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_file():
                yield path, path.relative_to(root).as_posix()


def _file_md5s(path: Path, part_size: int) -> tuple[str, str]:
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


async def _same_content(path: Path, size: int, etag: str | None, part_size: int) -> bool:
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
    whole, multipart = await asyncio.to_thread(_file_md5s, path, part_size)
    return tag in (whole, multipart)


async def _plan_upload(stores: Stores, src: str, dst: StoreURL, recursive: bool, force: bool,
                       skips: Skips) -> _Plan:
    store = stores.get(dst.bucket)
    path = Path(src)
    if not path.exists():
        raise NotFound(f"cp: no such local file or directory: {src}")
    if not path.is_dir():
        key = dst.path + path.name if not dst.path or dst.path.endswith("/") else dst.path
        return _Plan([_Job(path.stat().st_size, lambda prog: store.put_file(key, path, progress=prog))])
    if not recursive:
        raise BadOption(f"cp: {src} is a directory; use cp -r")
    base = _prefix_of(dst.path)
    present = {} if force else {o.key: o for o in (await store.list(base)).objects}
    part_size = stores.opts.multipart_size * 1024 * 1024
    plan = _Plan([])
    for file, rel in _local_files(path):
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
        if there is not None and await _same_content(file, there.size, there.etag, part_size):
            plan.unchanged += 1
            continue
        plan.jobs.append(_Job(size, lambda prog, p=file, k=key: store.put_file(k, p, progress=prog)))
    return plan


async def _plan_download(stores: Stores, src: StoreURL, dst: str, recursive: bool, force: bool,
                         skips: Skips) -> _Plan:
    store = stores.get(src.bucket)
    target = Path(dst)
    if recursive:
        return await _plan_tree_download(stores, store, src, target, force, skips)
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
    return _Plan([_Job(info.size, lambda prog: store.get_file(src.path, target, progress=prog))])


async def _plan_tree_download(stores: Stores, store: ObjectStore, src: StoreURL, target: Path, force: bool,
                              skips: Skips) -> _Plan:
    """Every key under the prefix as a file below target. A key that cannot be a path
    there (it would escape target, name a directory that is also a file, or hold data
    under a name ending in '/') is reported and skipped; the rest is downloaded."""
    prefix = _prefix_of(src.path)
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
    plan = _Plan([])
    for rel, obj in files.items():
        path = target / rel
        parents = {"/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)}
        if parents & broken:
            continue
        if path.is_dir():
            skips.skip(f"s3://{src.bucket}/{obj.key}", f"{path} is a directory")
            continue
        if not force and await _same_content(path, obj.size, obj.etag, part_size):
            plan.unchanged += 1
            continue
        plan.jobs.append(_Job(obj.size, lambda prog, k=obj.key, p=path: store.get_file(k, p, progress=prog)))
    return plan


async def _plan_copy(stores: Stores, src: StoreURL, dst: StoreURL, recursive: bool, skips: Skips) -> _Plan:
    from pailfs.store.s3 import S3Store
    source, dest = stores.get(src.bucket), stores.get(dst.bucket)

    def job(size: int, key: str, new_key: str) -> _Job:
        async def run(prog: Callable[[int], None]) -> None:
            if src.bucket == dst.bucket:
                await dest.copy(key, new_key)
            else:
                assert isinstance(dest, S3Store) and isinstance(source, S3Store)
                await dest.copy_from(source, key, new_key)
            prog(size)
        return _Job(size, run)

    if recursive:
        prefix, base = _prefix_of(src.path), _prefix_of(dst.path)
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
        return _Plan(jobs)
    if not src.path or src.path.endswith("/"):
        raise BadOption(f"cp: s3://{src.bucket}/{src.path} is a prefix; use cp -r")
    info = await source.head(src.path)
    new_key = dst.path + src.path.rsplit("/", 1)[-1] if not dst.path or dst.path.endswith("/") else dst.path
    return _Plan([job(info.size, src.path, new_key)])


async def _run_jobs(jobs: list[_Job], workers: int, progress: Progress | None) -> None:
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
        raise _first_error(group) from None


def _first_error(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if isinstance(exc, PailfsError):
            return exc
        if isinstance(exc, OSError):
            return StoreError(f"cp: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    return group.exceptions[0]


@app.command("cp")
def cp_cmd(src: str = typer.Argument(..., help="Local path or s3://bucket/key (a prefix with -r)."),
           dst: str = typer.Argument(..., help="Local path or s3://bucket/key (a prefix with -r)."),
           recursive: bool = RecursiveArg,
           jobs: int = typer.Option(16, "-j", "--jobs", min=1, help="Files copied in parallel."),
           force: bool = typer.Option(False, "--force", help="cp -r: copy every file, also those already at the "
                                                             "destination with the same size and checksum."),
           quiet: bool = QuietArg, option: list[str] = OptionArg,
           endpoint: Optional[str] = EndpointArg) -> None:
    """Upload, download, or copy between buckets (server-side); -r copies a tree.

    `cp -r DIR s3://b/p` uploads DIR's files as p/<relative path> (like `rclone copy`);
    large files go in parallel parts of multipart_size MB. `cp -r` resumes: a file
    already at the destination with the same size and checksum (the object's ETag)
    is not copied again, unless --force. Keys that cannot be local paths, and local
    names that cannot be keys, are reported and skipped (exit status 1)."""
    opts = _options(option, endpoint)
    src_remote, dst_remote = is_remote_url(src), is_remote_url(dst)
    if not (src_remote or dst_remote):
        raise BadOption("cp: one side must be an s3://bucket/key URL (both are local paths)")
    src_loc = _remote(src) if src_remote else None
    dst_loc = _remote(dst) if dst_remote else None
    console = Console(stderr=True)

    async def main(stores: Stores) -> None:
        started = time.monotonic()
        skips = Skips()
        if src_loc and dst_loc:
            plan = await _plan_copy(stores, src_loc, dst_loc, recursive, skips)
        elif dst_loc:
            plan = await _plan_upload(stores, src, dst_loc, recursive, force, skips)
        else:
            assert src_loc is not None
            plan = await _plan_download(stores, src_loc, dst, recursive, force, skips)
        show = not quiet and console.is_terminal
        if show:
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                await _run_jobs(plan.jobs, jobs, progress)
        else:
            await _run_jobs(plan.jobs, jobs, None)
        if not quiet:
            took = max(time.monotonic() - started, 1e-6)
            size = sum(j.size for j in plan.jobs)
            n = len(plan.jobs)
            same = f"; {plan.unchanged} already there, unchanged" if plan.unchanged else ""
            console.print(f"copied {n} file{'s' if n != 1 else ''}, {_human(size)} "
                          f"in {took:.2f}s ({_human(size / took)}/s){same}", highlight=False)
        skips.finish(len(plan.jobs), "copied")

    _run(main, opts)


# --- rm ---------------------------------------------------------------------
@app.command("rm")
def rm_cmd(url: str = typer.Argument(..., help="s3://bucket/key, or a prefix with -r."),
           recursive: bool = RecursiveArg, quiet: bool = QuietArg,
           option: list[str] = OptionArg, endpoint: Optional[str] = EndpointArg) -> None:
    """Delete an object, or (-r) the object and every key under `prefix/`.

    Keys under the prefix that a request could not name exactly ('.'/'..' or empty
    segments: servers would resolve them to other keys) are reported and kept."""
    loc = _remote(url)
    opts = _options(option, endpoint)

    async def main(stores: Stores) -> None:
        store = stores.get(loc.bucket)
        skips = Skips()
        if not recursive:
            if not loc.path or loc.path.endswith("/") and not loc.path.strip("/"):
                raise BadOption(f"rm: s3://{loc.bucket}/{loc.path} is not a key; use rm -r for a prefix")
            await store.head(loc.path)  # a missing key is an error, like rm(1)
            await store.delete(loc.path)
            removed = 1
        else:
            keys: list[str] = []
            if loc.path and not loc.path.endswith("/"):
                try:
                    keys.append((await store.head(loc.path)).key)
                except NotFound:
                    pass
            prefix = _prefix_of(loc.path)
            listed = [o.key for o in (await store.list(prefix)).objects]
            for key in listed:
                problem = key_problem(key[len(prefix):]) if key != prefix else None
                if problem is not None:
                    skips.skip(f"s3://{loc.bucket}/{key}", f"the key {problem}; a delete could hit another key")
                else:
                    keys.append(key)
            if not keys and not skips.count:
                raise NotFound(f"rm: nothing at s3://{loc.bucket}/{loc.path}")
            # a control character cannot be written in the XML of a multi-object delete
            # (MalformedXML for the whole batch): such keys go one DELETE each
            plain = [k for k in keys if k.isprintable()]
            if plain:
                await store.delete_many(plain)
            removed = len(plain)
            for key in keys:
                if key.isprintable():
                    continue
                try:
                    await store.delete(key)
                    removed += 1
                except StoreError as exc:
                    skips.skip(f"s3://{loc.bucket}/{key}", str(exc))
        if not quiet:
            typer.echo(f"removed {removed} object{'s' if removed != 1 else ''}", err=True)
        skips.finish(removed, "removed")

    _run(main, opts)


# --- mb / rb -------------------------------------------------------------------
@app.command("mb")
def mb_cmd(url: str = typer.Argument(..., help="s3://bucket"),
           option: list[str] = OptionArg, endpoint: Optional[str] = EndpointArg) -> None:
    """Create a bucket."""
    loc = _remote(url)
    if loc.path:
        raise BadOption(f"mb: give a bucket, not a key: s3://{loc.bucket}")
    opts = _options(option, endpoint)

    async def main(stores: Stores) -> None:
        await stores.get(loc.bucket).create_bucket()  # type: ignore[attr-defined]

    _run(main, opts)


@app.command("rb")
def rb_cmd(url: str = typer.Argument(..., help="s3://bucket"),
           force: bool = typer.Option(False, "-f", "--force", help="Delete the bucket's objects first."),
           option: list[str] = OptionArg, endpoint: Optional[str] = EndpointArg) -> None:
    """Delete a bucket; it must be empty unless --force."""
    loc = _remote(url)
    if loc.path:
        raise BadOption(f"rb: give a bucket, not a key: s3://{loc.bucket}")
    opts = _options(option, endpoint)

    async def main(stores: Stores) -> None:
        store = stores.get(loc.bucket)
        keys = [o.key for o in (await store.list()).objects] if force else []
        if keys:
            await store.delete_many(keys)
        elif not force:
            # some servers (SeaweedFS) delete non-empty buckets: check first
            async for page in store.list_pages("", None):
                if page.objects:
                    raise StoreError(f"rb: bucket s3://{loc.bucket} is not empty "
                                     f"(remove its objects with pailfs rm -r s3://{loc.bucket}, or use rb --force)")
                break
        await store.delete_bucket()  # type: ignore[attr-defined]

    _run(main, opts)
