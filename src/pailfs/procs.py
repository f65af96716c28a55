"""Process facts read from /proc, shared by the server, the mount commands and the checkpointer."""

from __future__ import annotations

import os


def pid_running(pid: int) -> bool:
    """True while pid runs; a zombie waiting for its reaper has finished."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pids_with_argument(path: str, *, words: tuple[str, ...] = ()) -> list[int]:
    """Running processes (not this one) whose argv holds `path` (as given or resolved)
    and every word of `words` — e.g. the daemon serving a mountpoint."""
    target = os.path.realpath(path)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if not all(w in argv for w in words):
            continue
        if any(a == path or (a.startswith("/") and os.path.realpath(a) == target) for a in argv) \
                and pid_running(int(entry.name)):
            found.append(int(entry.name))
    return found
