"""pailfs: read-write separation for machine-learning jobs on object storage."""

from pailfs.version import __version__


def __getattr__(name: str):
    # lazy: `import pailfs` must stay light (no obstore, no event loop)
    if name == "Checkpointer":
        from pailfs.checkpoint import Checkpointer

        return Checkpointer
    raise AttributeError(f"module 'pailfs' has no attribute {name!r}")


__all__ = ["Checkpointer", "__version__", "open_store"]


def open_store(url: str, /, options=None, **overrides):  # noqa: ANN001, ANN201 - lazy import keeps `import pailfs` light
    """A blocking store for `s3://bucket/prefix`, `bucket:/prefix` or `file:///dir`:
    `pailfs.open_store("s3://b/ckpt").put_file("model.pt", "/tmp/model.pt")`.
    See pailfs.store.sync.SyncStore; the async API is pailfs.store.open_store."""
    from pailfs.store import open_sync_store
    return open_sync_store(url, options, **overrides)
