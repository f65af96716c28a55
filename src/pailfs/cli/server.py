"""`pailfs server start|stop|status|env`: the embedded SeaweedFS."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from pailfs.cli.app import app
from pailfs.server import SeaweedServer

server_app = typer.Typer(help="Run the embedded SeaweedFS S3 server on 127.0.0.1.", no_args_is_help=True)
app.add_typer(server_app, name="server")

DataDir = typer.Option(None, "--data-dir", help="Data directory (default: the user's data dir, or $PAILFS_SERVER_DIR).")


@server_app.command()
def start(data_dir: Optional[Path] = DataDir,
          port: Optional[int] = typer.Option(None, "--port", help="S3 port (default: a free port)."),
          bucket: list[str] = typer.Option([], "--bucket", help="Create this bucket (repeatable).")) -> None:
    """Start the server (idempotent) and create buckets."""
    srv = SeaweedServer(data_dir, port)
    already = srv.state() is not None
    state = srv.start(bucket)
    word = "already running" if already else "started"
    typer.echo(f"SeaweedFS {word}: {state.endpoint} (pid {state.pid}, data {srv.data_dir})")
    typer.echo("run: eval \"$(pailfs server env)\" to use it")


@server_app.command()
def stop(data_dir: Optional[Path] = DataDir) -> None:
    """Stop the server."""
    srv = SeaweedServer(data_dir)
    typer.echo("stopped" if srv.stop() else "not running")


@server_app.command()
def status(data_dir: Optional[Path] = DataDir) -> None:
    """Show endpoint and pid; exit 3 when not running."""
    srv = SeaweedServer(data_dir)
    state = srv.state()
    if state is None:
        typer.echo("not running")
        raise typer.Exit(3)
    typer.echo(f"running: {state.endpoint} (pid {state.pid}, data {srv.data_dir})")


@server_app.command()
def env(data_dir: Optional[Path] = DataDir) -> None:
    """Print `export` lines for the running server (endpoint and keys)."""
    for name, value in SeaweedServer(data_dir).env().items():
        typer.echo(f"export {name}={shlex.quote(value)}")
