"""`pailfs ls|stat|cp|rm|uploads|mb|rb`: ossutil-like object commands.

Remote locations are `s3://bucket/key` (also `oss://`); anything else given to
`cp` is a local path. Endpoint and keys come from `-o`, `--endpoint`, the
environment and passwd files, exactly as for a mount. Data goes to stdout,
progress and summaries to stderr; every failure is one `pailfs: ...` line.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from pailfs.cli.app import app
from pailfs.cli.transfer import (Skips, Stores, key_problem, plan_copy, plan_download, plan_upload, prefix_of,
                                 run_jobs, run_with_stores, shown)
from pailfs.config import Options, parse_options
from pailfs.errors import BadOption, NotFound, StoreError
from pailfs.store.url import StoreURL, is_remote_url, parse_url

OptionArg = typer.Option([], "-o", "--option", metavar="OPT[,OPT...]",
                         help="Options as for mount, e.g. -o multipart_size=64,parallel_count=32 (see docs/configuration.md).")
EndpointArg = typer.Option(None, "--endpoint", metavar="URL",
                           help="Endpoint: host, host:port or http(s)://host[:port]; no scheme means https "
                                "(default: -o url=, $PAILFS_ENDPOINT).")
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
            from pailfs.store.s3api import list_buckets
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

    run_with_stores(main, opts)


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

    run_with_stores(main, opts)


# --- cp ---------------------------------------------------------------------
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
            plan = await plan_copy(stores, src_loc, dst_loc, recursive, skips)
        elif dst_loc:
            plan = await plan_upload(stores, src, dst_loc, recursive, force, skips)
        else:
            assert src_loc is not None
            plan = await plan_download(stores, src_loc, dst, recursive, force, skips)
        show = not quiet and console.is_terminal
        if show:
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                await run_jobs(plan.jobs, jobs, progress)
        else:
            await run_jobs(plan.jobs, jobs, None)
        if not quiet:
            took = max(time.monotonic() - started, 1e-6)
            size = sum(j.size for j in plan.jobs)
            n = len(plan.jobs)
            same = f"; {plan.unchanged} already there, unchanged" if plan.unchanged else ""
            console.print(f"copied {n} file{'s' if n != 1 else ''}, {_human(size)} "
                          f"in {took:.2f}s ({_human(size / took)}/s){same}", highlight=False)
        skips.finish(len(plan.jobs), "copied")

    run_with_stores(main, opts)


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
            prefix = prefix_of(loc.path)
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

    run_with_stores(main, opts)


# --- uploads ---------------------------------------------------------------------
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _age(text: str) -> float:
    """'30m', '24h', '7d', '90' (seconds), '0': seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text, re.IGNORECASE)
    if not found:
        raise BadOption(f"--older-than: '{text}' is not an age (e.g. 30m, 24h, 7d; 0 for every upload)")
    return float(found[1]) * _AGE_UNITS[(found[2] or "s").lower()]


@app.command("uploads")
def uploads_cmd(url: str = typer.Argument(..., help="s3://bucket, or s3://bucket/prefix"),
                abort: bool = typer.Option(False, "--abort", help="Abort the uploads begun at least --older-than ago."),
                older_than: str = typer.Option("24h", "--older-than", metavar="AGE",
                                               help="With --abort: only uploads begun this long ago or more "
                                                    "(30m, 24h, 7d; 0: all). The default leaves writers at work alone."),
                option: list[str] = OptionArg, endpoint: Optional[str] = EndpointArg) -> None:
    """List the incomplete multipart uploads under a prefix, or abort the old ones.

    A writer killed in the middle of a large upload (`pailfs cp`, a read-write mount,
    any S3 client) leaves its parts stored, and billed, under no object. Like s3fs's
    --incomplete-mpu-list and --incomplete-mpu-abort."""
    loc = _remote(url)
    opts = _options(option, endpoint)
    min_age = _age(older_than)

    async def main(stores: Stores) -> None:
        store = stores.get(loc.bucket)
        cutoff = time.time() - min_age
        aborted = young = 0
        async for upload in store.list_uploads(loc.path):
            where = f"s3://{loc.bucket}/{shown(upload.key)}"
            if not abort:
                _echo(f"{_fmt_time(upload.initiated)}  {upload.upload_id}  {where}")
            elif upload.initiated and upload.initiated <= cutoff:
                await store.abort_multipart(upload.key, upload.upload_id)
                _echo(f"aborted  {_fmt_time(upload.initiated)}  {upload.upload_id}  {where}")
                aborted += 1
            else:
                young += 1
        if abort:
            left = f"; {young} begun less than {older_than} ago left alone" if young else ""
            typer.echo(f"aborted {aborted} upload{'s' if aborted != 1 else ''}{left}", err=True)

    run_with_stores(main, opts)


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

    run_with_stores(main, opts)


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

    run_with_stores(main, opts)
