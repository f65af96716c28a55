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


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except PailfsError as exc:
        typer.echo(f"pailfs: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("pailfs: interrupted", err=True)
        sys.exit(130)
