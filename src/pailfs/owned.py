"""Directories pailfs creates and marks, so that it deletes only what it created.

`open_marked_dir(base, name, marker, text, option)` returns `base/name`, creating
it (0700) with a marker file holding `text` when it is new. An existing one is
accepted only if it is a real directory of this user holding that marker;
anything else is refused with a one-line BadOption naming `option`, and nothing
in it is touched.
"""

from __future__ import annotations

import os
import stat

from pailfs.errors import BadOption


def owned_dir(path: str) -> bool:
    """A real directory (not a symlink) of this user."""
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def open_marked_dir(base: str, name: str, marker: str, text: str, option: str) -> str:
    path = os.path.join(base, name)
    marker_path = os.path.join(path, marker)
    try:
        os.mkdir(path, 0o700)
        with open(marker_path, "x") as f:
            f.write(text)
    except FileExistsError:
        pass
    except OSError as exc:
        raise BadOption(f"{option}: cannot create {path} ({exc.strerror})") from None
    if not owned_dir(path):
        raise BadOption(f"{option}: {path} exists and is not a directory of this user; "
                        "pailfs keeps its files in a directory it creates itself")
    try:
        with open(marker_path, encoding="utf-8", errors="replace") as f:
            ours = f.read() == text
    except OSError:
        ours = False
    if not ours:
        raise BadOption(f"{option}: {path} exists but was not created by pailfs (no {marker} marker); "
                        "pailfs will not manage files it did not create")
    return path
