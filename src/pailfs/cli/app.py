"""The typer application every command module registers on, and the one-line
failure every command ends with. Its own module, so that command modules import
it without importing the package that imports them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="pailfs",
    help="Read-write separation for ML jobs on object storage: cached read-only FUSE mounts, "
         "async checkpoints, read-write mounts and Kubernetes glue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one clear line to stderr and return the Exit to raise."""
    typer.echo(f"pailfs: {message}", err=True)
    return typer.Exit(code)
