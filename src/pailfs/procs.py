"""Process facts read from /proc, shared by the server, the mount commands and the
checkpointer; and this process's environment, set for a while."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (for the store, the Checkpointer and the `pailfs mount`
    children: secrets travel in the environment, never in argv); restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_running(pid: int) -> bool:
    """True while pid runs; a zombie waiting for its reaper has finished. The leader
    of a threaded process turns zombie before its other threads are done (they may
    still hold its files and sockets), so every thread must have finished."""
    fields = _stat_fields(pid)
    if not fields:
        return False
    if fields[0] != "Z":
        return True
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(_thread_running(pid, tid) for tid in threads if tid != str(pid))


def _thread_running(pid: int, tid: str) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def start_time(pid: int) -> int | None:
    """When pid started (clock ticks since boot), or None: with the pid, it names one
    process for good — a pid reused by a later process has another start time."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 of stat(5)
    except (IndexError, ValueError):
        return None


def argv_of(pid: int) -> list[str] | None:
    """The command line of pid, or None when it is gone (or not ours to read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def pids_with_argument(path: str, *, words: tuple[str, ...] = ()) -> list[int]:
    """Running processes (not this one) whose argv holds `path` (as given or resolved)
    and every word of `words` — e.g. the daemon serving a mountpoint."""
    target = os.path.realpath(path)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = argv_of(int(entry.name))
        if argv is None or not all(w in argv for w in words):
            continue
        if any(a == path or (a.startswith("/") and os.path.realpath(a) == target) for a in argv) \
                and pid_running(int(entry.name)):
            found.append(int(entry.name))
    return found
