"""The commit manifest of one checkpoint and the key layout around it.

Layout under the checkpointer's prefix::

    <step:010d>/<name>...                 the checkpoint's files
    <step:010d>/pailfs-checkpoint.json    the manifest, written last

A step prefix without a manifest is an uncommitted (in-flight or abandoned) checkpoint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from pailfs.errors import CheckpointError

MANIFEST_NAME = "pailfs-checkpoint.json"
FORMAT = "pailfs-checkpoint"
VERSION = 1

_STEP_DIR = re.compile(r"^(\d+)/")


def step_prefix(step: int) -> str:
    return f"{step:010d}/"


def manifest_key(step: int) -> str:
    return step_prefix(step) + MANIFEST_NAME


def step_of_key(key: str) -> int | None:
    """The step a key belongs to, or None for keys outside the layout."""
    m = _STEP_DIR.match(key)
    return int(m.group(1)) if m else None


def check_name(name: str) -> str:
    """A file name inside a checkpoint: relative, '/'-separated, no '.'/'..' parts.

    Checked on save and again on restore, so a crafted manifest cannot write
    outside the restore directory.
    """
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or "\x00" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise CheckpointError(f"bad file name in checkpoint: {name!r}")
    if name == MANIFEST_NAME:
        raise CheckpointError(f"{MANIFEST_NAME!r} is reserved for the checkpoint manifest")
    return name


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint as its manifest describes it."""

    step: int
    time: float  # commit time, seconds since the epoch
    files: tuple[FileEntry, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "step": self.step,
            "time": self.time,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
            "total_size": self.size,
            "metadata": dict(self.metadata),
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "CheckpointInfo":
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError("not a pailfs checkpoint manifest")
            if int(doc["version"]) > VERSION:
                raise ValueError(f"manifest version {doc['version']} is newer than this pailfs understands")
            files = tuple(FileEntry(check_name(str(f["name"])), int(f["size"]), str(f["sha256"]))
                          for f in doc["files"])
            return cls(int(doc["step"]), float(doc["time"]), files, dict(doc.get("metadata") or {}))
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"unreadable checkpoint manifest {where}: {exc}") from None
