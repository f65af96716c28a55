"""Reading committed checkpoints back: every file checked against its manifest.

Manifests are untrusted input: before anything is planned or written, each
file must exist in the store with the size the manifest claims (one LIST);
then every byte is checked against the size and sha256. A restore is all or
nothing. Runs on the Checkpointer's loop thread; file I/O goes to its IO pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import shutil
import uuid
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import Any, Awaitable, Callable

from pailfs.aio import gather_or_cancel
from pailfs.checkpoint.manifest import CheckpointInfo, FileEntry, check_name, step_prefix
from pailfs.errors import CheckpointError, NotFound
from pailfs.store.base import ObjectStore

log = logging.getLogger(__name__)

# Ranged GET size when verifying or restoring; at most parallel_count in memory.
CHUNK = 8 * 1024 * 1024
CHUNK_WINDOW = 4  # ranged GETs in flight per file


class CheckpointReader:
    """`io(fn, *args)` runs a blocking function off the loop; `parallel` bounds the
    files fetched at once and the chunks held in memory."""

    def __init__(self, store: ObjectStore, io: Callable[..., Awaitable[Any]], parallel: int) -> None:
        self.store = store
        self._io = io
        self._file_sem = asyncio.Semaphore(parallel)
        self._chunk_sem = asyncio.Semaphore(parallel)

    async def fetch(self, step: int, entry: FileEntry, out: Path | None) -> bytes | None:
        """Download one file (to `out`, or into memory), checking its size and sha256."""
        key = step_prefix(step) + entry.name
        h = hashlib.sha256()
        total = 0
        parts: list[bytes] = []
        sink = open(out, "wb") if out is not None else None
        sem = self._chunk_sem  # bounds the chunks held in memory across all files
        # one byte past the expected size is asked for, so a longer object shows
        if entry.size < CHUNK:
            ranges: list[tuple[int | None, int | None]] = [(None, None)]
        else:
            ranges = [(off, min(off + CHUNK, entry.size + 1)) for off in range(0, entry.size + 1, CHUNK)]
        tasks: list[asyncio.Future] = []
        released = 0  # tasks[:released] have given their slot back
        try:
            try:
                for i in range(len(ranges)):
                    while len(tasks) < len(ranges) and len(tasks) < i + CHUNK_WINDOW:
                        await sem.acquire()
                        tasks.append(asyncio.ensure_future(self.store.get(key, *ranges[len(tasks)])))
                    try:
                        data = await tasks[i]
                        total += len(data)
                        await self._io(_consume, h, data, sink)
                        if sink is None:
                            parts.append(data)
                    finally:
                        sem.release()
                        released = i + 1
            except BaseException:
                for t in tasks[released:]:
                    t.cancel()
                    sem.release()
                await asyncio.gather(*tasks[released:], return_exceptions=True)
                raise
        except NotFound:
            raise CheckpointError(f"checkpoint step {step} is damaged: {entry.name} is missing from the store") from None
        finally:
            if sink is not None:
                sink.close()
        if total != entry.size:
            raise CheckpointError(f"checkpoint step {step} is damaged: {entry.name} is {total} bytes "
                                  f"in the store, the manifest says {entry.size}")
        if h.hexdigest() != entry.sha256:
            raise CheckpointError(f"checkpoint step {step} is damaged: {entry.name} fails its sha256 check "
                                  f"(manifest {entry.sha256[:12]}..., store {h.hexdigest()[:12]}...)")
        return b"".join(parts) if sink is None else None

    async def check_sizes(self, info: CheckpointInfo) -> None:
        """The manifest is untrusted: before anything is planned or written, each file
        must exist in the store with the size the manifest claims (one LIST)."""
        prefix = step_prefix(info.step)
        stored = {o.key[len(prefix):]: o.size for o in (await self.store.list(prefix)).objects}
        for entry in info.files:
            size = stored.get(entry.name)
            if size is None:
                raise CheckpointError(f"checkpoint step {info.step} is damaged: {entry.name} is missing from the store")
            if size != entry.size:
                raise CheckpointError(f"checkpoint step {info.step} is damaged: {entry.name} is {size} bytes "
                                      f"in the store, the manifest says {entry.size}")

    async def fetch_all(self, info: CheckpointInfo, root: Path | None) -> None:
        """Download and check every file (into `root`, or only check them)."""
        sem = self._file_sem
        await self.check_sizes(info)

        async def one(entry: FileEntry) -> None:
            async with sem:
                out = None
                if root is not None:
                    out = root / check_name(entry.name)
                    out.parent.mkdir(parents=True, exist_ok=True)
                await self.fetch(info.step, entry, out)

        await gather_or_cancel([one(e) for e in info.files])

    async def restore(self, dest: Path, info: CheckpointInfo) -> CheckpointInfo:
        """All or nothing: every file is downloaded and verified into a temporary
        directory beside `dest` first; then the directory becomes `dest`, or (dest
        exists) the files are moved in, and put back as they were if a move fails.
        A checkpoint that does not fit `dest` (a file where a directory is, or the
        reverse) is refused before anything is written."""
        existing = _check_restore_target(dest, info)
        try:
            base = dest if existing else dest.parent
            base.mkdir(parents=True, exist_ok=True)
            tmp = base / f".pailfs-restore-{uuid.uuid4().hex[:12]}"
            # not mkdtemp: the new tree may become dest, so it keeps the umask's mode
            tmp.mkdir()
        except OSError as exc:
            raise CheckpointError(f"cannot restore into {dest}: {_os_reason(exc)}") from None
        try:
            staged = tmp / "files"
            staged.mkdir()
            await self.fetch_all(info, staged)
            if existing:
                await self._io(_move_in, staged, dest, [e.name for e in info.files], tmp / "replaced")
            else:
                os.rename(staged, dest)
        except OSError as exc:
            raise CheckpointError(f"cannot restore into {dest} (nothing was changed): {_os_reason(exc)}") from None
        finally:
            await self._io(shutil.rmtree, tmp, True)  # ours: made above with a new name
        log.info("restored checkpoint step %d (%d files, %d bytes) into %s",
                 info.step, len(info.files), info.size, dest)
        return info


def _consume(h: "hashlib._Hash", data: bytes, sink: io.BufferedWriter | None) -> None:
    h.update(data)
    if sink is not None:
        sink.write(data)


def _os_reason(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")


def _check_restore_target(dest: Path, info: CheckpointInfo) -> bool:
    """Refuse (CheckpointError) a restore that would have to replace a directory by a
    file or a file by a directory, or write through a symbolic link. Returns whether
    dest exists."""
    try:
        st = dest.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CheckpointError(f"cannot restore into {dest}: {_os_reason(exc)}") from None
    if not S_ISDIR(st.st_mode):
        raise CheckpointError(f"restore destination exists and is not a directory: {dest}")
    for entry in info.files:
        parts = entry.name.split("/")
        path = dest
        for i, part in enumerate(parts):
            path = path / part
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                break
            except OSError as exc:
                raise CheckpointError(f"cannot restore into {dest}: {_os_reason(exc)}") from None
            last = i == len(parts) - 1
            where = "/".join(parts[:i + 1])
            if S_ISLNK(mode) and not last:
                problem = f"{where} is a symbolic link (restore does not write through links)"
            elif last and S_ISDIR(mode):
                problem = f"{where} is a directory, the checkpoint has a file of that name"
            elif last and not (S_ISREG(mode) or S_ISLNK(mode)):
                problem = f"{where} is not a regular file"
            elif not last and not S_ISDIR(mode):
                problem = f"{where} is a file, the checkpoint needs a directory of that name"
            else:
                continue
            raise CheckpointError(f"cannot restore step {info.step} into {dest}: {problem}; nothing was written")
    return True


def _move_in(staged: Path, dest: Path, names: list[str], replaced: Path) -> None:
    """Move verified files into an existing dest; on a failure put everything back
    (the replaced files were hard-linked aside first) and re-raise."""
    replaced.mkdir()
    done: list[tuple[Path, Path | None, list[Path]]] = []  # (target, old file kept aside, dirs made)
    try:
        for i, name in enumerate(names):
            target = dest / name
            made = []
            for parent in reversed(target.relative_to(dest).parents[:-1]):
                d = dest / parent
                if not d.exists():
                    d.mkdir()
                    made.append(d)
            kept = None
            if os.path.lexists(target):
                kept = replaced / str(i)
                try:
                    os.link(target, kept, follow_symlinks=False)
                except OSError:
                    os.rename(target, kept)  # no hard links here: a moment without the file
            done.append((target, kept, made))
            os.replace(staged / name, target)
    except BaseException:
        for target, kept, made in reversed(done):
            try:
                if kept is not None:
                    os.replace(kept, target)
                elif os.path.lexists(target):
                    os.unlink(target)
                for d in reversed(made):
                    d.rmdir()
            except OSError as exc:
                log.error("restore: could not put %s back: %s", target, exc)
        raise
