"""Asynchronous checkpoints on object storage: see checkpointer.Checkpointer."""

from pailfs.checkpoint.checkpointer import Checkpointer
from pailfs.checkpoint.manifest import MANIFEST_NAME, CheckpointInfo, FileEntry

__all__ = ["Checkpointer", "CheckpointInfo", "FileEntry", "MANIFEST_NAME"]
