"""`pailfs versioning on|off|status URL` and `pailfs undelete URL`."""

from __future__ import annotations

import asyncio

import typer

from pailfs.cli.app import app
from pailfs.errors import BadOption


def _run(url: str, option: list[str], work):
    from pailfs.store import open_store

    async def main():
        store = open_store(url, option)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


@app.command(help="Turn bucket versioning on or off, or show it (protects against accidental deletion).")
def versioning(action: str = typer.Argument(..., help="on | off | status"),
               url: str = typer.Argument(..., help="s3://BUCKET"),
               option: list[str] = typer.Option([], "-o", "--option", help="Options, e.g. url=ENDPOINT.")) -> None:
    from pailfs.store.versioning import set_versioning, versioning_status

    if action not in ("on", "off", "status"):
        raise BadOption(f"unknown action '{action}': use on, off or status")
    if action != "status":
        _run(url, option, lambda s: set_versioning(s, action == "on"))
    typer.echo(f"versioning: {_run(url, option, versioning_status)}")


@app.command(help="Bring back the newest earlier version of a deleted or overwritten object.")
def undelete(url: str = typer.Argument(..., help="s3://BUCKET/KEY"),
             option: list[str] = typer.Option([], "-o", "--option", help="Options, e.g. url=ENDPOINT.")) -> None:
    from pailfs.store.url import parse_url
    from pailfs.store.versioning import undelete as bring_back

    where = parse_url(url)
    if not where.is_remote or not where.path or where.path.endswith("/"):
        raise BadOption(f"undelete needs s3://BUCKET/KEY, got {url!r}")
    version = _run(f"s3://{where.bucket}", option, lambda s: bring_back(s, where.path))
    typer.echo(f"restored {url} from version {version.version_id} ({version.last_modified}, {version.size} bytes)")
