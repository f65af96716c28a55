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
