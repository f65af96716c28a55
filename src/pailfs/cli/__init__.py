"""The `pailfs` command. Each command group lives in its own module and registers
itself on `app` (cli/app.py); this module only wires them and turns errors into
one line."""

from __future__ import annotations

import logging
import sys

import typer

from pailfs.cli.app import app
from pailfs.errors import PailfsError

# Command modules register on import; a command line naming one imports only that
# module (a start in a third of the time: scripts call `pailfs cp` in loops).
# Order = order in --help.
COMMAND_MODULES = {
    "server": ("server",), "objects": ("ls", "stat", "cp", "rm", "uploads", "mb", "rb"), "k8s": ("k8s", "csi"),
    "mount": ("mount", "umount", "stats", "warmup"), "versioning": ("versioning", "undelete"),
    "ckpt": ("ckpt",), "bench": ("bench",), "demo": ("demo",),
}


@app.callback()
def _group() -> None:
    """Keeps `pailfs COMMAND` a group of commands when only one module is loaded."""


def load_commands(argv: list[str]) -> None:
    import importlib

    wanted = [m for m, names in COMMAND_MODULES.items() if argv[1:2] and argv[1] in names]
    for module in wanted or COMMAND_MODULES:
        importlib.import_module(f"pailfs.cli.{module}")

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import ClickException, UsageError
    NoArgsIsHelpError = ()  # type: ignore[assignment,misc]


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_commands(sys.argv)
    try:
        try:
            code = app(standalone_mode=False)
        except NoArgsIsHelpError as exc:
            typer.echo(exc.format_message(), err=True)  # `pailfs server`: the group's help
            sys.exit(2)
        except UsageError as exc:
            # a usage error is bad input like any other: one line, not a framed box
            typer.echo(f"pailfs: {_one_line(exc.format_message())} (see: {_command_of(exc.ctx)} --help)", err=True)
            sys.exit(exc.exit_code)
        except ClickException as exc:
            typer.echo(f"pailfs: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("pailfs: interrupted", err=True)
            sys.exit(130)
        except PailfsError as exc:
            typer.echo(f"pailfs: {_one_line(str(exc))}", err=True)
            sys.exit(1)
        except OSError as exc:
            # a local path that cannot be used (a directory given as a file, /proc...)
            where = f": {exc.filename}" if exc.filename else ""
            typer.echo(f"pailfs: {_one_line(f'{exc.strerror or exc}{where}')}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            typer.echo("pailfs: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if type(code) is int else 0)  # Exit(n) comes back as n; a command's None as None
    except SystemExit as exc:
        _exit(exc.code)


def _command_of(ctx) -> str:  # noqa: ANN001 - a click Context or None
    """`pailfs server start`, whatever name the program was started by (`python -m pailfs`)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["pailfs", *reversed(names)])


def _one_line(text: str) -> str:
    """Messages may carry user input: no newline or other control character reaches the terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in " ".join(text.split()))


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
