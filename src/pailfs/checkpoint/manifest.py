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
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_NAME_BYTES = 255  # one path component, as local file systems allow


def step_prefix(step: int) -> str:
    return f"{step:010d}/"


def manifest_key(step: int) -> str:
    return step_prefix(step) + MANIFEST_NAME


def step_of_key(key: str) -> int | None:
    """The step a key belongs to, or None for keys outside the layout."""
    m = _STEP_DIR.match(key)
    return int(m.group(1)) if m else None


def check_name(name: str) -> str:
    """A file name inside a checkpoint: relative, '/'-separated, no '.'/'..' parts,
    no control characters, UTF-8, components of at most 255 bytes.

    Checked on save and again on restore, so a crafted manifest cannot write
    outside the restore directory.
    """
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or _CONTROL.search(name)
            or any(p in ("", ".", "..") for p in parts)):
        raise CheckpointError(f"bad file name in checkpoint: {name!r}")
    try:
        too_long = any(len(p.encode()) > MAX_NAME_BYTES for p in parts)
    except UnicodeEncodeError:
        raise CheckpointError(f"bad file name in checkpoint: {name!r} is not valid UTF-8") from None
    if too_long:
        raise CheckpointError(f"bad file name in checkpoint: {name!r} has a part of more than {MAX_NAME_BYTES} bytes")
    if name == MANIFEST_NAME:
        raise CheckpointError(f"{MANIFEST_NAME!r} is reserved for the checkpoint manifest")
    return name


def check_names_fit(names: list[str]) -> None:
    """No name twice, and no name that another one needs as a directory ('a', 'a/b')."""
    files: set[str] = set()
    dirs: set[str] = set()
    for name in names:
        parts = name.split("/")
        parents = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if name in files or name in dirs or parents & files:
            raise CheckpointError(f"file name {name!r} clashes with another file of the checkpoint")
        files.add(name)
        dirs |= parents


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
        """Parse a manifest read from the store: untrusted input, every field is checked
        (sizes are integers >= 0, checksums 64 hex digits, names safe and distinct)."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError("not a pailfs checkpoint manifest")
            if int(doc["version"]) > VERSION:
                raise ValueError(f"manifest version {doc['version']} is newer than this pailfs understands")
            if not isinstance(doc["files"], list):
                raise ValueError("'files' is not a list")
            files = tuple(_file_entry(f) for f in doc["files"])
            check_names_fit([f.name for f in files])
            metadata = doc.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise ValueError("'metadata' is not an object")
            step = doc["step"]
            if not _is_int(step) or step < 0:
                raise ValueError(f"bad step {step!r}")
            return cls(step, float(doc["time"]), files, metadata)
        except CheckpointError as exc:
            raise CheckpointError(f"unsafe checkpoint manifest {where}: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise CheckpointError(f"unreadable checkpoint manifest {where}: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _file_entry(doc: Any) -> FileEntry:
    if not isinstance(doc, dict):
        raise ValueError("a file entry is not an object")
    name, size, digest = doc["name"], doc["size"], doc["sha256"]
    if not isinstance(name, str):
        raise ValueError(f"file name {name!r} is not a string")
    if not _is_int(size) or size < 0:
        raise ValueError(f"bad size {size!r} for {name!r}")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ValueError(f"bad sha256 for {name!r}")
    return FileEntry(check_name(name), size, digest)
