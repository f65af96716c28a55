"""`pailfs ls|stat|cp|rm|mb|rb`: ossutil-like object commands.

Remote locations are `s3://bucket/key` (also `oss://`); anything else given to
`cp` is a local path. Endpoint and keys come from `-o`, `--endpoint`, the
environment and passwd files, exactly as for a mount. Data goes to stdout,
progress and summaries to stderr; every failure is one `pailfs: ...` line.
"""

from __future__ import annotations

import asyncio
import os
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
                _echo(f"{'':19} {'DIR':>12}  {prefix}")
            for obj in page.objects:
                _echo(f"{_fmt_time(obj.mtime)} {obj.size:>12}  {obj.key}")

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
                    _echo(f"prefix:   s3://{loc.bucket}/{prefix} (no object of its own)")
                    return
                break
            raise
        _echo(f"key:      s3://{loc.bucket}/{info.key}\nsize:     {info.size}\n"
              f"modified: {_fmt_time(info.mtime)}\netag:     {info.etag or '-'}")
        for name, value in sorted((info.metadata or {}).items()):
            _echo(f"meta:     {name}={value}")

    _run(main, opts)


# --- cp ---------------------------------------------------------------------
@dataclass
class _Job:
    size: int
    run: Callable[[Callable[[int], None]], Awaitable[object]]


def _safe_relative(key: str) -> Path | None:
    """A key as a path below the target dir; None for keys that would escape it."""
    parts = [p for p in key.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or "\0" in key:
        return None
    return Path(*parts)


def _local_files(root: Path) -> Iterable[tuple[Path, str]]:
    """Files under a local directory (symlinks to files followed) with '/'-joined relative names."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_file():
                yield path, path.relative_to(root).as_posix()


async def _plan_upload(stores: Stores, src: str, dst: StoreURL, recursive: bool) -> list[_Job]:
    store = stores.get(dst.bucket)
    path = Path(src)
    if not path.exists():
        raise NotFound(f"cp: no such local file or directory: {src}")
    if path.is_dir():
        if not recursive:
            raise BadOption(f"cp: {src} is a directory; use cp -r")
        base = dst.path if not dst.path or dst.path.endswith("/") else dst.path + "/"
        return [_Job(p.stat().st_size, lambda prog, p=p, k=base + rel: store.put_file(k, p, progress=prog))
                for p, rel in _local_files(path)]
    key = dst.path + path.name if not dst.path or dst.path.endswith("/") else dst.path
    return [_Job(path.stat().st_size, lambda prog: store.put_file(key, path, progress=prog))]


async def _plan_download(stores: Stores, src: StoreURL, dst: str, recursive: bool) -> list[_Job]:
    store = stores.get(src.bucket)
    target = Path(dst)
    if recursive:
        prefix = src.path if not src.path or src.path.endswith("/") else src.path + "/"
        jobs: list[_Job] = []
        dirs: set[Path] = {target}
        async for page in store.list_pages(prefix):
            for obj in page.objects:
                rel = _safe_relative(obj.key[len(prefix):])
                if rel is None:
                    if obj.key != prefix:
                        typer.echo(f"pailfs: skipping key that is not a safe local path: {obj.key!r}", err=True)
                    continue
                if obj.is_dir_marker:
                    dirs.add(target / rel)
                    continue
                dirs.add((target / rel).parent)
                jobs.append(_Job(obj.size, lambda prog, k=obj.key, p=target / rel: store.get_file(k, p, progress=prog)))
        if not jobs and len(dirs) == 1:
            await store.check()
            raise NotFound(f"cp: nothing under s3://{src.bucket}/{prefix}")
        for d in sorted(dirs):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cp: cannot create directory {d}: {exc.strerror}") from None
        return jobs
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
    return [_Job(info.size, lambda prog: store.get_file(src.path, target, progress=prog))]


async def _plan_copy(stores: Stores, src: StoreURL, dst: StoreURL, recursive: bool) -> list[_Job]:
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
        prefix = src.path if not src.path or src.path.endswith("/") else src.path + "/"
        base = dst.path if not dst.path or dst.path.endswith("/") else dst.path + "/"
        jobs = [job(o.size, o.key, base + o.key[len(prefix):])
                for o in (await source.list(prefix)).objects if o.key != prefix]
        if not jobs:
            await source.check()
            raise NotFound(f"cp: nothing under s3://{src.bucket}/{prefix}")
        return jobs
    if not src.path or src.path.endswith("/"):
        raise BadOption(f"cp: s3://{src.bucket}/{src.path} is a prefix; use cp -r")
    info = await source.head(src.path)
    new_key = dst.path + src.path.rsplit("/", 1)[-1] if not dst.path or dst.path.endswith("/") else dst.path
    return [job(info.size, src.path, new_key)]


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
           quiet: bool = QuietArg, option: list[str] = OptionArg,
           endpoint: Optional[str] = EndpointArg) -> None:
    """Upload, download, or copy between buckets (server-side); -r copies a tree.

    `cp -r DIR s3://b/p` uploads DIR's files as p/<relative path> (like `rclone copy`);
    large files go in parallel parts of multipart_size MB."""
    opts = _options(option, endpoint)
    src_remote, dst_remote = is_remote_url(src), is_remote_url(dst)
    if not (src_remote or dst_remote):
        raise BadOption("cp: one side must be an s3://bucket/key URL (both are local paths)")
    src_loc = _remote(src) if src_remote else None
    dst_loc = _remote(dst) if dst_remote else None
    console = Console(stderr=True)

    async def main(stores: Stores) -> None:
        started = time.monotonic()
        if src_loc and dst_loc:
            plan = await _plan_copy(stores, src_loc, dst_loc, recursive)
        elif dst_loc:
            plan = await _plan_upload(stores, src, dst_loc, recursive)
        else:
            assert src_loc is not None
            plan = await _plan_download(stores, src_loc, dst, recursive)
        show = not quiet and console.is_terminal
        if show:
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                await _run_jobs(plan, jobs, progress)
        else:
            await _run_jobs(plan, jobs, None)
        if not quiet:
            took = max(time.monotonic() - started, 1e-6)
            size = sum(j.size for j in plan)
            console.print(f"copied {len(plan)} file{'s' if len(plan) != 1 else ''}, {_human(size)} "
                          f"in {took:.2f}s ({_human(size / took)}/s)", highlight=False)

    _run(main, opts)


# --- rm ---------------------------------------------------------------------
@app.command("rm")
def rm_cmd(url: str = typer.Argument(..., help="s3://bucket/key, or a prefix with -r."),
           recursive: bool = RecursiveArg, quiet: bool = QuietArg,
           option: list[str] = OptionArg, endpoint: Optional[str] = EndpointArg) -> None:
    """Delete an object, or (-r) the object and every key under `prefix/`."""
    loc = _remote(url)
    opts = _options(option, endpoint)

    async def main(stores: Stores) -> None:
        store = stores.get(loc.bucket)
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
            prefix = loc.path if not loc.path or loc.path.endswith("/") else loc.path + "/"
            keys += [o.key for o in (await store.list(prefix)).objects]
            if not keys:
                raise NotFound(f"rm: nothing at s3://{loc.bucket}/{loc.path}")
            await store.delete_many(keys)
            removed = len(keys)
        if not quiet:
            typer.echo(f"removed {removed} object{'s' if removed != 1 else ''}", err=True)

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
