"""Where a read-write mount stages its writes, and who may delete what there.

Layout: `BASE/pailfs-staging/` is created and marked by pailfs (a `.pailfs-staging`
file) and holds one directory per mount, `mount-<pid>-<random>/`, marked with
`mount.json` (the mount process's pid, its start time and the boot it ran in).
BASE is `staging_dir=`, else `<temp dir>/pailfs-<uid>` (created 0700).

Ownership rules (pailfs deletes only what it created):

* a `pailfs-staging` that exists without the marker, is a symlink, or belongs
  to another user is refused: the mount fails with one line;
* a new mount removes the directory of a *dead* mount (its marker names a
  process that is gone: pid not running, or running with another start time,
  or another boot) only when nothing but the marker is left in it. Staged data
  of a dead mount (a kill -9 mid-write, or an upload that failed) is kept and
  named in the log: it may be the only copy of the data;
* a mount that ends cleanly removes its own directory unless it kept a file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from pailfs.errors import BadOption
from pailfs.owned import open_marked_dir, owned_dir

log = logging.getLogger(__name__)

SUBDIR = "pailfs-staging"
MARKER = ".pailfs-staging"
MARKER_TEXT = "pailfs staging area, format 1: one directory per mount, managed by pailfs\n"
MOUNT_MARKER = "mount.json"
MOUNT_PREFIX = "mount-"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """A running process's start time (clock ticks since boot, /proc/PID/stat field 22);
    None if there is no such process or it has ended (a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] in (b"Z", b"X") else fields[19].decode()
    except (OSError, IndexError):
        return None


def open_staging_root(staging_dir: str | None) -> str:
    """BASE/pailfs-staging, created and marked if new; BadOption if it is not ours."""
    if staging_dir:
        base, option = os.path.abspath(staging_dir), f"staging_dir={staging_dir}"
    else:
        base, option = os.path.join(tempfile.gettempdir(), f"pailfs-{os.getuid()}"), "staging"
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise BadOption(f"{option}: cannot create {base} ({exc.strerror})") from None
    if not staging_dir and not owned_dir(base):
        raise BadOption(f"{option}: {base} is not a directory of this user; set staging_dir=")
    if not os.path.isdir(base):
        raise BadOption(f"{option}: {base} is not a directory")
    return open_marked_dir(base, SUBDIR, MARKER, MARKER_TEXT, option)


def _read_mount_marker(path: str) -> dict | None:
    try:
        with open(os.path.join(path, MOUNT_MARKER), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != 1 or not isinstance(record.get("pid"), int):
        return None
    return record


def _owner_alive(record: dict) -> bool:
    if record.get("boot") != _boot_id():
        return False
    started = _start_time(record["pid"])
    return started is not None and started == record.get("started")


def clean_dead_mounts(root: str) -> None:
    """Remove what dead mounts left in root, when it is provably theirs and empty."""
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not name.startswith(MOUNT_PREFIX) or not owned_dir(path):
            continue
        record = _read_mount_marker(path)
        if record is None or _owner_alive(record):
            continue
        left = [n for n in os.listdir(path) if n != MOUNT_MARKER]
        if left:
            log.warning("staged data of a dead mount (pid %d) is kept in %s (%d files); "
                        "remove it when no longer needed", record["pid"], path, len(left))
            continue
        try:
            os.unlink(os.path.join(path, MOUNT_MARKER))
            os.rmdir(path)
        except OSError as exc:
            log.debug("could not remove %s: %s", path, exc)


def new_mount_dir(root: str) -> str:
    """This mount's own staging directory, marked with this process."""
    path = tempfile.mkdtemp(prefix=f"{MOUNT_PREFIX}{os.getpid()}-", dir=root)
    record = {"format": 1, "pid": os.getpid(), "started": _start_time(os.getpid()), "boot": _boot_id()}
    with open(os.path.join(path, MOUNT_MARKER), "x", encoding="utf-8") as f:
        json.dump(record, f)
    return path


def remove_mount_dir(path: str) -> bool:
    """At a clean end: remove this mount's directory if nothing but the marker is left."""
    try:
        if [n for n in os.listdir(path) if n != MOUNT_MARKER]:
            return False
        os.unlink(os.path.join(path, MOUNT_MARKER))
        os.rmdir(path)
        return True
    except OSError:
        return False
