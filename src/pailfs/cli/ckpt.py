"""`pailfs ckpt list|latest|restore|prune|verify URL`: checkpoints saved by pailfs.Checkpointer.

URL is the Checkpointer's location (s3://bucket/prefix, bucket:/prefix, file:///dir).
Read commands never delete anything; only `prune` does.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pailfs.cli.app import app
from pailfs.errors import CheckpointError

ckpt_app = typer.Typer(help="List, restore, verify and prune checkpoints saved by pailfs.Checkpointer.",
                       no_args_is_help=True)
app.add_typer(ckpt_app, name="ckpt")

UrlArg = typer.Argument(..., help="Checkpoint location: s3://BUCKET/PREFIX, BUCKET:/PREFIX or file:///DIR")
OptOpt = typer.Option([], "-o", "--option", help="Store options, ossfs style (url=..., passwd_file=...).")
StepOpt = typer.Option(None, "--step", help="Step to use (default: the latest committed one).")


def _open(url: str, option: list[str]):
    from pailfs import config
    from pailfs.checkpoint import Checkpointer

    opts = config.parse_options(option)
    return Checkpointer(url, max_to_keep=0, options=opts, parallel_count=opts.parallel_count)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


@ckpt_app.command("list")
def list_(url: str = UrlArg, option: list[str] = OptOpt,
          as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Committed checkpoints, oldest first."""
    with _open(url, option) as ck:
        infos = ck.list()
    if as_json:
        typer.echo(json.dumps([{"step": i.step, "time": i.time, "files": len(i.files), "size": i.size,
                                "metadata": dict(i.metadata)} for i in infos], indent=1))
        return
    if not infos:
        typer.echo(f"no committed checkpoints under {url}")
        return
    table = Table(title=f"checkpoints under {url}")
    for col, justify in (("step", "right"), ("committed", "left"), ("files", "right"),
                         ("size", "right"), ("metadata", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for i in infos:
        meta = json.dumps(dict(i.metadata), sort_keys=True) if i.metadata else ""
        table.add_row(str(i.step), _when(i.time), str(len(i.files)), _size(i.size),
                      meta if len(meta) <= 60 else meta[:57] + "...")
    Console(width=max(Console().width, 100)).print(table)


@ckpt_app.command()
def latest(url: str = UrlArg, option: list[str] = OptOpt) -> None:
    """Print the newest committed step (exit 1 if there is none)."""
    with _open(url, option) as ck:
        step = ck.latest()
    if step is None:
        raise CheckpointError(f"no committed checkpoint under {url}")
    typer.echo(step)


@ckpt_app.command()
def restore(url: str = UrlArg, dest: Path = typer.Argument(..., help="Directory to restore into (created if missing)."),
            step: Optional[int] = StepOpt, option: list[str] = OptOpt) -> None:
    """Download a checkpoint, verify every file's sha256, then move it into DEST."""
    with _open(url, option) as ck:
        info = ck.restore(dest, step)
    typer.echo(f"restored step {info.step}: {len(info.files)} files, {_size(info.size)} into {dest}")


@ckpt_app.command()
def verify(url: str = UrlArg, step: Optional[int] = StepOpt,
           all_: bool = typer.Option(False, "--all", help="Verify every committed checkpoint."),
           option: list[str] = OptOpt) -> None:
    """Download a checkpoint and check each file's size and sha256 against its manifest."""
    with _open(url, option) as ck:
        if not all_:
            info = ck.verify(step)
            typer.echo(f"step {info.step}: ok ({len(info.files)} files, {_size(info.size)})")
            return
        infos = ck.list()
        if not infos:
            raise CheckpointError(f"no committed checkpoint under {url}")
        bad = 0
        for i in infos:
            try:
                ck.verify(i.step)
                typer.echo(f"step {i.step}: ok ({len(i.files)} files, {_size(i.size)})")
            except CheckpointError as exc:
                bad += 1
                typer.echo(f"step {i.step}: DAMAGED: {exc}")
    if bad:
        raise CheckpointError(f"{bad} of {len(infos)} checkpoints are damaged")


@ckpt_app.command()
def prune(url: str = UrlArg,
          keep: int = typer.Option(..., "--keep", min=0, help="Committed checkpoints to keep (highest steps); 0 keeps all."),
          grace_period: float = typer.Option(3600, "--grace-period", min=0,
                                             help="Also remove uncommitted leftovers older than this many seconds."),
          option: list[str] = OptOpt) -> None:
    """Delete all but the KEEP newest checkpoints (manifest first) and stale uncommitted leftovers."""
    with _open(url, option) as ck:
        deleted, removed = ck.prune(keep, grace_period)
    typer.echo(f"deleted {len(deleted)} checkpoints" + (f" (steps {', '.join(map(str, deleted))})" if deleted else "")
               + f"; removed {len(removed)} uncommitted leftovers"
               + (f" (steps {', '.join(map(str, removed))})" if removed else ""))
