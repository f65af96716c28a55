"""pailfs: read-write separation for machine-learning jobs on object storage."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: `import pailfs` must stay light (no obstore, no event loop)
    if name == "Checkpointer":
        from pailfs.checkpoint import Checkpointer

        return Checkpointer
    raise AttributeError(f"module 'pailfs' has no attribute {name!r}")


__all__ = ["Checkpointer", "__version__"]
