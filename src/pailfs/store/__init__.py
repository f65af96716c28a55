"""Object stores: the contract (base), S3 (obstore + S3Api), a local directory, URLs.

`open_store(url)` is the one way in: it parses the URL, resolves options and
credentials and returns the right store, without touching the network.
"""

from __future__ import annotations

from typing import Any

from pailfs.config import Options, option, parse_options
from pailfs.errors import BadOption
from pailfs.store.base import Listing, ObjectInfo, ObjectStore, ProgressFn, StoreStats
from pailfs.store.url import StoreURL, is_remote_url, parse_url

__all__ = ["Listing", "ObjectInfo", "ObjectStore", "ProgressFn", "StoreStats", "StoreURL",
           "is_remote_url", "open_store", "open_sync_store", "parse_url", "resolve_options"]


def resolve_options(options: Options | str | list[str] | tuple[str, ...] | None = None,
                    **overrides: Any) -> Options:
    """Options from an Options, `-o` strings or None (defaults + env), then keyword overrides
    (option names; strings are parsed like `-o` values)."""
    if isinstance(options, Options):
        opts = options
    elif isinstance(options, str):
        opts = parse_options([options])
    else:
        opts = parse_options(list(options or ()))
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        try:
            opt = option(name)
        except KeyError:
            raise BadOption(f"unknown option '{name}'") from None
        if isinstance(value, str):
            try:
                value = opt.parse(value)
            except ValueError as exc:
                reason = "not a valid number" if "invalid literal" in str(exc) else str(exc)
                raise BadOption(f"bad value for option '{name}': {value!r} ({reason})") from None
        changes[opt.name] = value
    return opts.with_(**changes) if changes else opts


def open_store(url: str, /, options: Options | str | list[str] | None = None, **overrides: Any) -> ObjectStore:
    """The async store for `s3://bucket/prefix`, `bucket:/prefix`, `bucket` or `file:///dir`.

    The endpoint comes from option `url` (env PAILFS_ENDPOINT, then URL; see
    pailfs.store.endpoint for its forms and the addressing style); credentials
    from the chain in pailfs.credentials. BadOption / BadCredentials with a
    one-line reason when something is wrong; nothing is sent over the network.
    """
    loc = parse_url(url)
    opts = resolve_options(options, **overrides)
    if loc.scheme == "file":
        from pailfs.store.local import LocalStore
        return LocalStore(loc.path, opts)
    from pailfs.credentials import resolve_credentials
    from pailfs.store.endpoint import endpoint_of
    from pailfs.store.s3 import S3Store
    if not opts.url:
        raise BadOption(f"no endpoint for {url}: pass -o url=host[:port] or http(s)://host[:port] "
                        "(or --endpoint), or set PAILFS_ENDPOINT")
    address = endpoint_of(opts)  # BadOption before anything else is read
    creds = resolve_credentials(loc.bucket, opts)
    return S3Store(loc.bucket, loc.path, endpoint=address, credentials=creds, options=opts)


def open_sync_store(url: str, /, options: Options | str | list[str] | None = None, **overrides: Any):
    """Like open_store, but returns a blocking SyncStore (see pailfs.store.sync)."""
    from pailfs.store.sync import SyncStore

    async def make() -> ObjectStore:
        return open_store(url, options, **overrides)

    return SyncStore(make)
