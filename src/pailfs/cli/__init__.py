"""The `pailfs` command. Each command group lives in its own module and registers
itself on `app`; this module only wires them and turns errors into one line."""

from __future__ import annotations

import logging
import sys

import typer

from pailfs.errors import PailfsError

app = typer.Typer(
    name="pailfs",
    help="Read-write separation for ML jobs on object storage: cached read-only FUSE mounts, "
         "async checkpoints, read-write mounts and Kubernetes glue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules register on import. Order = order in --help.
from pailfs.cli import server as _server  # noqa: E402,F401
from pailfs.cli import objects as _objects  # noqa: E402,F401
from pailfs.cli import k8s as _k8s  # noqa: E402,F401
from pailfs.cli import mount as _mount  # noqa: E402,F401
from pailfs.cli import versioning as _versioning  # noqa: E402,F401
from pailfs.cli import ckpt as _ckpt  # noqa: E402,F401
from pailfs.cli import bench as _bench  # noqa: E402,F401
from pailfs.cli import demo as _demo  # noqa: E402,F401


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one clear line to stderr and return the Exit to raise."""
    typer.echo(f"pailfs: {message}", err=True)
    return typer.Exit(code)


def need_extra(extra: str, *modules: str) -> None:
    """Fail with one line when a command's optional dependencies are not installed."""
    import importlib.util

    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:
            found = False
        if not found:
            raise fail(f"this command needs the '{extra}' extra ({name} is missing): pip install 'pailfs[{extra}]'")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        try:
            app()
        except PailfsError as exc:
            typer.echo(f"pailfs: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            typer.echo("pailfs: interrupted", err=True)
            sys.exit(130)
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def _exit(code: int | str | None) -> None:
    """Exit without interpreter finalization.

    A failed or cancelled transfer can leave obstore requests in flight (the
    other parts of a download); when one ends, a tokio thread hands its result
    to Python. If that happens after finalization began, CPython pthread_exit()s
    the thread through Rust frames and the process aborts (SIGABRT, exit 134)
    after the error line was printed. Shut down the way finalization would —
    threads, atexit handlers, flushed streams — then leave with the exit code.
    """
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        code = 1
    import atexit
    import os
    import threading

    threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads, as at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)
