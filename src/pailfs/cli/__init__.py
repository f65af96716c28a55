"""The `pailfs` command. Each command group lives in its own module and registers
itself on `app` (cli/app.py); this module only wires them and turns errors into
one line."""

from __future__ import annotations

import logging
import sys

import typer

from pailfs.cli.app import app
from pailfs.errors import PailfsError

# Command modules register on import. Order = order in --help.
from pailfs.cli import server as _server  # noqa: F401
from pailfs.cli import objects as _objects  # noqa: F401
from pailfs.cli import k8s as _k8s  # noqa: F401
from pailfs.cli import mount as _mount  # noqa: F401
from pailfs.cli import versioning as _versioning  # noqa: F401
from pailfs.cli import ckpt as _ckpt  # noqa: F401
from pailfs.cli import bench as _bench  # noqa: F401
from pailfs.cli import demo as _demo  # noqa: F401


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
