"""Where a read-write mount stages its writes, and who may delete what there.

Each mount stages in a directory of its own, `BASE/pailfs-mount-<uid>-<pid>-<random>/`
(created 0700), marked by a `mount.json` that names the mount's process (pid,
start time, boot id). BASE is `staging_dir=` (created if missing), else the
temp dir. That directory is the mount's state on local disk: a clean unmount
removes it (unless it had to keep a staged file whose upload failed).

Ownership rules (pailfs deletes only what it created):

* a mount that starts removes the directory of a *dead* mount in BASE only
  when it can prove it: named as pailfs names them (this user's uid), a real
  directory of this user, marked by a valid `mount.json` whose process is gone
  (pid not running, or running with another start time, or another boot), and
  holding nothing but the marker;
* staged data of a dead mount (a kill -9 mid-write, or an upload that failed)
  is kept and named in the log: it may be the only copy of the data;
* nothing else in BASE is ever touched.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile

from pailfs.errors import BadOption

log = logging.getLogger(__name__)

MOUNT_MARKER = "mount.json"


def _prefix() -> str:
    return f"pailfs-mount-{os.getuid()}-"


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


def staging_base(staging_dir: str | None) -> str:
    """The directory the mount's own staging directory goes in; BadOption if unusable."""
    if not staging_dir:
        return tempfile.gettempdir()
    base = os.path.abspath(staging_dir)
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise BadOption(f"staging_dir={staging_dir}: cannot create the directory ({exc.strerror})") from None
    if not os.path.isdir(base):
        raise BadOption(f"staging_dir={staging_dir} is not a directory")
    return base


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


def clean_dead_mounts(base: str) -> None:
    """Remove what dead mounts left in base, when it is provably theirs and empty."""
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith(_prefix()))
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
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


def new_mount_dir(base: str) -> str:
    """This mount's own staging directory, marked with this process."""
    try:
        path = tempfile.mkdtemp(prefix=f"{_prefix()}{os.getpid()}-", dir=base)
    except OSError as exc:
        raise BadOption(f"cannot create a staging directory in {base} ({exc.strerror})") from None
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
