"""Local files on the way to and from a store: a reader that reports progress (and
starts over for a retried upload), and downloads through a temp file beside the
target, renamed over it only when complete."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO

from pailfs.store.base import ProgressFn


class ProgressReader:
    """A file object that reports bytes as obstore reads them (called from obstore's threads)."""

    def __init__(self, f: BinaryIO, progress: ProgressFn | None) -> None:
        self._f = f
        self._progress = progress
        self._sent = 0

    def rewind(self) -> None:
        """Back to the first byte for another attempt; progress is taken back too."""
        self._f.seek(0)
        if self._sent and self._progress:
            self._progress(-self._sent)
        self._sent = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if data:
            self._sent += len(data)
            if self._progress:
                self._progress(len(data))
        return data

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.pailfs-{uuid.uuid4().hex[:8]}")


def write_new_file(path: Path, data: bytes) -> None:
    """Write data to a temp file beside path, then rename it over path."""
    tmp = _temp_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_temp(path: Path) -> tuple[Path, int]:
    tmp = _temp_name(path)
    return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


def commit_temp(fd: int, tmp: Path, path: Path) -> None:
    os.close(fd)
    os.replace(tmp, path)


def discard_temp(fd: int, tmp: Path) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # already closed by commit_temp
    tmp.unlink(missing_ok=True)
