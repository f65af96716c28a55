"""`pailfs mount`, `pailfs umount`, `pailfs stats`, `pailfs warmup`.

Without -f the command starts the mount in a new session (a child running
`pailfs mount -f --ready-fd N`) and returns only when the child reports the
mount answers (exit 0) or reports why it failed (exit 1, one line). The
child does every check — options, mountpoint, bucket, credentials — before it
mounts, so a failure never leaves a half-mounted directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from pailfs import config
from pailfs.aio import LoopThread
from pailfs.cli.app import app
from pailfs.errors import MountError, PailfsError
from pailfs.procs import pid_running, pids_with_argument

log = logging.getLogger(__name__)

MOUNT_HELP = "Mount options, ossfs style (-o ro,kernel_cache,umask=022). Options:\n\n" + config.options_help()


def _report(fd: int | None, message: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, message.encode()[:4000])
        os.close(fd)
    except OSError:
        pass


@app.command(help="Mount a bucket (BUCKET[:/PATH] or s3://BUCKET/PATH) on MOUNTPOINT; with --takeover, "
                  "take a live mount at MOUNTPOINT over from the pailfs daemon serving it (an upgrade in place).",
             epilog="Options (-o): " + config.valid_names())
def mount(source: str = typer.Argument(..., help="BUCKET[:/PATH], s3://BUCKET/PATH or file:///DIR "
                                                 "(with --takeover: the mountpoint)"),
          mountpoint: Optional[Path] = typer.Argument(None, help="An existing, empty directory."),
          option: list[str] = typer.Option([], "-o", "--option", help=MOUNT_HELP),
          foreground: bool = typer.Option(False, "-f", "--foreground", help="Stay in the foreground."),
          takeover: bool = typer.Option(False, "--takeover",
                                        help="Take over the live mount at MOUNTPOINT (its source and options; "
                                             "-o changes options): readers see no error, open files stay "
                                             "open, unsaved writes are carried over. The old daemon exits."),
          ready_fd: Optional[int] = typer.Option(None, "--ready-fd", hidden=True),
          control_dir: Optional[str] = typer.Option(None, "--control-dir", hidden=True,
                                                    help="Where mounts listen for a successor (handover)."),
          log_tag: Optional[str] = typer.Option(None, "--log-tag", hidden=True,
                                                help="Tag every log line (the CSI plugin's volume id).")) -> None:
    from pailfs.fuse import handover

    control_dir = control_dir or handover.default_control_dir()
    predecessor = None
    try:
        if takeover:
            if mountpoint is not None:
                raise MountError("with --takeover give only the mountpoint: source and options come from "
                                 "the running mount")
            mountpoint = Path(source)
            predecessor = handover.Predecessor(os.path.abspath(mountpoint), control_dir)
            source = predecessor.description["source"]
            opts = _takeover_options(predecessor.description, option)
        elif mountpoint is None:
            raise MountError("missing MOUNTPOINT: pailfs mount SOURCE MOUNTPOINT")
        else:
            opts = config.parse_options(option)
    except PailfsError as exc:
        _report(ready_fd, f"error: {exc}")
        raise
    if not foreground:
        if predecessor is not None:
            predecessor.close()  # the daemon started below asks again
        extra = ["--takeover"] if takeover else [source]
        _spawn_and_wait([*extra, str(mountpoint)], option, opts, control_dir)
        return
    if log_tag:
        from pailfs.cli import daemon_log

        daemon_log.configure(log_tag, _secrets_to_scrub(source, opts))
    _run_foreground(source, mountpoint, opts, ready_fd, control_dir, predecessor)


def _takeover_options(description: dict, option: list[str]) -> config.Options:
    """The running mount's options, changed by the -o given now; ro/rw cannot change."""
    values = {**config.parse_options([], env={}).values, **description["options"]}
    values.update(config.parse_options(option, env={}).explicit())
    opts = config.Options(values)
    if opts.read_only != bool(description.get("read_only")):
        raise MountError("a takeover cannot change a mount between read-only and read-write")
    return opts


def _secrets_to_scrub(source: str, opts: config.Options) -> list[str]:
    """The key pair of the mount's passwd file, for the log filter (errors are the mount's to report)."""
    from pailfs.credentials import read_passwd_file
    from pailfs.store import parse_url

    if not opts.passwd_file:
        return []
    try:
        creds = read_passwd_file(opts.passwd_file, parse_url(source).bucket)
    except PailfsError:
        return []
    return [v for v in (creds.access_key, creds.secret_key, creds.token) if v] if creds is not None else []


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, PailfsError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _spawn_and_wait(positional: list[str], option: list[str], opts: config.Options, control_dir: str) -> None:
    read_end, write_end = os.pipe()
    args = [sys.executable, "-m", "pailfs", "mount", *positional, "-f", "--ready-fd", str(write_end),
            "--control-dir", control_dir]
    for spec in option:
        args += ["-o", spec]
    log_target = subprocess.DEVNULL
    if opts.logfile:
        log_target = open(opts.logfile, "ab")
    try:
        child = subprocess.Popen(args, pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=log_target,
                                 stderr=log_target, start_new_session=True, close_fds=True)
    finally:
        os.close(write_end)
        if opts.logfile:
            log_target.close()  # type: ignore[union-attr]
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode(errors="replace").strip()
    if answer == "ok":
        return
    if not answer:
        code = child.wait(timeout=30)
        answer = f"error: the mount process exited with status {code} before the mount was ready"
    raise MountError(answer.removeprefix("error: "))


def _run_foreground(source: str, mountpoint: Path, opts: config.Options, ready_fd: int | None,
                    control_dir: str, predecessor=None) -> None:  # noqa: ANN001 - handover.Predecessor
    from pailfs.fs.core import ObjectFileSystem
    from pailfs.fuse import FuseServer, handover
    from pailfs.fuse.mount import check_mountpoint, find_mount
    from pailfs.store import open_store

    logging.getLogger().setLevel(logging.DEBUG if opts.debug else logging.INFO)
    if not opts.debug:  # httpx logs every request at INFO: a cost on every LIST and HEAD
        logging.getLogger("httpx").setLevel(logging.WARNING)
    # the reader thread answers cached requests while the loop thread parses listings:
    # a 5 ms GIL switch interval would add up to 5 ms to each of those answers
    sys.setswitchinterval(0.0005)
    loop = LoopThread("pailfs-loop")
    on_loop = loop.run
    fs = store = None
    try:
        try:
            if predecessor is None:
                check_mountpoint(str(mountpoint), nonempty=opts.nonempty)
            else:
                info = find_mount(str(mountpoint))
                if info is None or list(info.device) != predecessor.description.get("device"):
                    raise MountError(f"{mountpoint} is not the mount its daemon serves; nothing to take over")
            store = open_store(source, opts)
            on_loop(store.check(), timeout=opts.connect_timeout + opts.readwrite_timeout + 5)

            async def build():  # on the loop: the fs's asyncio objects belong to it
                return ObjectFileSystem(store, opts)

            fs = on_loop(build())
            server = FuseServer(fs, str(mountpoint), loop=loop.loop, fs_name=source, read_only=opts.read_only,
                                allow_other=opts.allow_other, nonempty=opts.nonempty,
                                readahead_kib=fs.kernel_readahead // 1024, poll_us=opts.fuse_poll_us,
                                control_path=handover.control_path(control_dir, os.path.abspath(mountpoint)),
                                description={"source": source, "options": opts.explicit()})
        except Exception as exc:
            _report(ready_fd, f"error: {_one_line(exc)}")
            raise

        def stop(signum, frame):
            log.info("signal %d: unmounting %s", signum, mountpoint)
            server.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

        def ready() -> None:
            _report(ready_fd, "ok")
            log.info("%s %s on %s", "took over" if predecessor else "mounted", source, mountpoint)

        try:
            if predecessor is None:
                server.serve(ready_callback=ready)  # until unmounted, or handed over
            else:
                server.serve_taken_over(predecessor, ready_callback=ready)
        except Exception as exc:
            _report(ready_fd, f"error: {_one_line(exc)}")
            raise
    finally:
        if predecessor is not None:
            predecessor.close()
        if fs is not None:
            try:
                on_loop(fs.close(), timeout=600)
            except Exception as exc:  # noqa: BLE001 - report, then go on shutting down
                log.error("while closing: %s", exc)
        if store is not None:
            try:
                on_loop(store.close(), timeout=10)
            except Exception as exc:  # noqa: BLE001
                log.debug("while closing the store: %s", exc)
        loop.stop(timeout=5)


@app.command(help="Unmount a pailfs mount (also a dead one: 'Transport endpoint is not connected').")
def umount(mountpoint: Path = typer.Argument(...),
           lazy: bool = typer.Option(False, "-l", "--lazy", help="Detach now, clean up when no longer busy.")) -> None:
    from pailfs.fuse import find_mount, unmount

    # only a pailfs mount, live or dead: its mountinfo line survives the daemon
    info = find_mount(str(mountpoint))
    if info is None:
        raise MountError(f"{mountpoint} is not mounted")
    if info.fstype != "fuse.pailfs":
        raise MountError(f"{mountpoint} is not a pailfs mount (it is {info.fstype}); not unmounting it")
    serving = pids_with_argument(str(mountpoint), words=("mount", "-f"))
    unmount(str(mountpoint), lazy=lazy)
    # return once the mount process has finished (its last uploads included)
    deadline = time.monotonic() + 120
    while serving and time.monotonic() < deadline:
        serving = [pid for pid in serving if pid_running(pid)]
        time.sleep(0.02)


def read_stats(mountpoint: Path) -> dict:
    from pailfs.fs.core import STATS_XATTR

    try:
        raw = os.getxattr(str(mountpoint), STATS_XATTR)
    except OSError as exc:
        raise MountError(f"{mountpoint} is not a live pailfs mount ({exc.strerror})") from None
    return json.loads(raw)


@app.command(help="Requests, bytes and cache hits of a live mount.")
def stats(mountpoint: Path = typer.Argument(...),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    from rich.console import Console
    from rich.table import Table

    data = read_stats(mountpoint)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"pailfs stats: {mountpoint}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for kind, count in sorted(data["store"]["requests"].items()):
        table.add_row(f"store {kind} requests", str(count))
    table.add_row("bytes downloaded", f"{data['store']['bytes_down']:,}")
    table.add_row("bytes uploaded", f"{data['store']['bytes_up']:,}")
    table.add_row("store errors", str(data["store"]["errors"]))
    for kind, count in sorted(data.get("kernel_requests", {}).items()):
        table.add_row(f"kernel {kind} requests", f"{count:,}")
    for section in ("stat_cache", "data_cache"):
        for name, value in data[section].items():
            table.add_row(f"{section.replace('_', ' ')} {name.replace('_', ' ')}",
                          f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)


@app.command(help="Preload a mounted tree into the caches (on a read-only kernel_cache mount, "
                  "the mount fetches the small files into the page cache itself).")
def warmup(path: Path = typer.Argument(..., help="A directory inside a pailfs mount."),
           jobs: int = typer.Option(16, "-j", "--jobs", help="Directories, batches of small files or other files "
                                                             "handled in parallel.")) -> None:
    import collections
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from pailfs.fs.core import WARM_XATTR

    if not path.is_dir():
        raise MountError(f"{path} is not a directory")
    failures: list[str] = []

    def scan(root: str) -> tuple[str, list[tuple[str, int]]]:
        """A directory's entries in listing order (the mount counts batches in it) with
        their sizes: -1 a directory, -2 anything else that is not a regular file (a
        symlink is not followed; a FIFO would block). The stat is a lookup: the mount
        hands pages only to inodes the kernel knows."""
        def size(e: os.DirEntry) -> int:
            return -1 if e.is_dir(follow_symlinks=False) else \
                e.stat(follow_symlinks=False).st_size if e.is_file(follow_symlinks=False) else -2

        try:
            with os.scandir(root) as it:
                return root, [(e.path, size(e)) for e in it]
        except OSError as exc:
            failures.append(f"{root}: {exc.strerror}")
            return root, []

    def warm_batch(root: str, first: int, batch: list[tuple[str, int]]) -> tuple[int, list[tuple[str, int]]]:
        """(bytes the mount put into the page cache, files left to read here)."""
        files = [f for f in batch if f[1] >= 0]
        try:
            answer = json.loads(os.getxattr(root, f"{WARM_XATTR}.{first}.{len(batch)}"))
        except OSError:  # not a read-only kernel_cache pailfs mount: read every file
            return 0, files
        if answer["missed"]:  # read them all here: to warm what can be, and name what cannot
            return 0, files
        return answer["bytes"], [f for f in files if f[1] > answer["small"]]

    def read_all(name: str) -> int:
        done = 0
        try:
            fd = os.open(name, os.O_RDONLY)
            try:
                while chunk := os.read(fd, 1 << 20):
                    done += len(chunk)
            finally:
                os.close(fd)
        except OSError as exc:
            failures.append(f"{name}: {exc.strerror}")
        return done

    count = total = 0
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), transient=True) as progress, \
            ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        task = progress.add_task("warming", total=None)
        # a directory's small files are fetched while the walk goes on
        running = {pool.submit(scan, str(path)): "scan"}
        batches: collections.deque[tuple[str, int, list[tuple[str, int]]]] = collections.deque()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                kind = running.pop(future)
                if kind == "scan":
                    root, entries = future.result()
                    sizes = [size for _, size in entries if size >= 0]
                    count += len(sizes)
                    total += sum(sizes)
                    progress.update(task, total=total, description=f"warming {count} files")
                    running.update({pool.submit(scan, name): "scan" for name, size in entries if size == -1})
                    batches.extend((root, i, entries[i:i + WARM_BATCH]) for i in range(0, len(entries), WARM_BATCH)
                                   if any(size >= 0 for _, size in entries[i:i + WARM_BATCH]))
                elif kind == "batch":
                    warmed, rest = future.result()
                    progress.advance(task, warmed)
                    running.update({pool.submit(read_all, name): "read" for name, _ in rest})
                else:
                    progress.advance(task, future.result())
            # a few batches keep the mount's queue full (it fetches 64 at a time from it),
            # and leave threads for the walk and for the files read here
            while batches and sum(kind == "batch" for kind in running.values()) < WARM_BATCHES_IN_FLIGHT:
                running[pool.submit(warm_batch, *batches.popleft())] = "batch"
    typer.echo(f"warmed {count - len(failures)} files, {total:,} bytes")
    if failures:
        raise MountError(f"{len(failures)} files could not be read, first: {failures[0]}")


WARM_BATCH = 256  # entries of a directory per request to the mount
WARM_BATCHES_IN_FLIGHT = 4
