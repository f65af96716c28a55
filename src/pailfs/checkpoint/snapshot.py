"""Snapshots of a checkpoint source, taken before save() returns.

A file is cloned (reflink, copy-on-write: btrfs, XFS) or else hard-linked into a
private staging directory on its own file system, so the trainer may delete or
rename its files at once; it is copied when neither is possible, and a mapping's
bytes are kept in memory. A hard link shares the inode: a trainer that rewrites a
file *in place* (open with O_TRUNC, as torch.save(path) does) would change the
snapshot, so each linked file remembers (size, mtime) and the uploader refuses a
file that changed (use snapshot="copy" for such trainers). Trainers that write
a new file and rename it over the old one (TF Saver, most "atomic" savers) and
trainers that delete old files are safe.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

from pailfs.checkpoint.manifest import check_name
from pailfs.errors import CheckpointError
from pailfs.procs import pid_running

log = logging.getLogger(__name__)

Source = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Mapping[str, Union[bytes, bytearray, memoryview]]]

STAGING_PREFIX = ".pailfs-ckpt-staging-"
SNAPSHOT_MODES = ("auto", "link", "copy")
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
# link failures that mean "this file system (or policy) cannot link here": copy instead
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES}


@dataclass(slots=True)
class StagedFile:
    name: str
    size: int
    path: str | None = None  # staged link or copy
    data: bytes | None = None  # in-memory source
    # (size, mtime_ns) of a hard-linked file at snapshot time; None for private copies
    signature: tuple[int, int] | None = None

    def changed(self) -> bool:
        if self.signature is None or self.path is None:
            return False
        st = os.stat(self.path)
        return (st.st_size, st.st_mtime_ns) != self.signature


@dataclass
class Snapshot:
    files: list[StagedFile]
    dirs: list[str] = field(default_factory=list)  # per-save staging dirs to remove

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def discard(self) -> None:
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


class Stager:
    """Owns the staging roots (one per file system) of one Checkpointer.

    Roots are created lazily: the temp root (or `staging_dir`) first; for a file
    on another file system a hidden `.pailfs-ckpt-staging-<pid>-<id>` directory
    beside the source, so that a hard link is still possible. Not thread-safe on
    its own: the Checkpointer calls it under its snapshot lock.
    """

    def __init__(self, staging_dir: str | os.PathLike | None = None, mode: str = "auto") -> None:
        if mode not in SNAPSHOT_MODES:
            raise ValueError(f"snapshot must be one of {', '.join(SNAPSHOT_MODES)}, got {mode!r}")
        self.mode = mode
        self._explicit = staging_dir is not None
        self._base = str(staging_dir) if staging_dir is not None else None
        self._default_root: str | None = None
        self._roots: dict[int, str | None] = {}  # st_dev -> root on that device (None: copy)
        self._no_reflink: set[int] = set()  # devices where FICLONE failed once
        self._swept = False

    # --- roots -------------------------------------------------------------
    def _default(self) -> str:
        if self._default_root is None:
            if self._base is not None:
                os.makedirs(self._base, exist_ok=True)
            self._default_root = tempfile.mkdtemp(prefix=STAGING_PREFIX + f"{os.getpid()}-", dir=self._base)
            self._roots[os.stat(self._default_root).st_dev] = self._default_root
        return self._default_root

    def _root_for(self, dev: int, near: str) -> str | None:
        """A staging root on device `dev`, or None when files there must be copied."""
        self._default()
        if dev in self._roots:
            return self._roots[dev]
        root = None
        if not self._explicit:
            try:
                _remove_dead_roots(near)
                root = tempfile.mkdtemp(prefix=STAGING_PREFIX + f"{os.getpid()}-", dir=near)
                if os.stat(root).st_dev != dev:
                    os.rmdir(root)
                    root = None
            except OSError as exc:
                log.debug("no staging dir beside %s (%s); files there are copied", near, exc.strerror)
                root = None
        self._roots[dev] = root
        return root

    def close(self) -> None:
        for root in {r for r in self._roots.values() if r}:
            shutil.rmtree(root, ignore_errors=True)
        self._roots.clear()
        self._default_root = None

    # --- snapshots ---------------------------------------------------------
    def snapshot(self, step: int, source: Source) -> Snapshot:
        """Take the snapshot of one save; on error nothing is left behind."""
        if not self._swept:
            # a killed process leaves its links behind, and they pin the file data
            self._swept = True
            _remove_dead_roots(self._base or tempfile.gettempdir())
        snap = Snapshot([])
        if isinstance(source, Mapping):
            self._from_mapping(snap, source)
            return snap
        files = _enumerate_files(source)
        names = [name for name, _, _ in files]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise CheckpointError(f"two files would have the same name in the checkpoint: {', '.join(dup)}")
        try:
            for name, path, near in files:
                self._stage_file(snap, step, name, path, near)
        except BaseException:
            snap.discard()
            raise
        return snap

    @staticmethod
    def _from_mapping(snap: Snapshot, source: Mapping) -> None:
        for name, value in source.items():
            if not isinstance(name, str):
                raise TypeError(f"checkpoint file names must be str, got {type(name).__name__}")
            check_name(name)
            if isinstance(value, bytes):
                data = value  # immutable: no copy needed
            elif isinstance(value, (bytearray, memoryview)):
                data = bytes(value)  # the caller may mutate it after save() returns
            else:
                raise TypeError(f"value of {name!r} must be bytes-like, got {type(value).__name__} "
                                "(pass a directory or a list of files to save files)")
            snap.files.append(StagedFile(name, len(data), data=data))

    def _save_dir(self, snap: Snapshot, root: str, step: int) -> str:
        for d in snap.dirs:
            if os.path.dirname(d) == root:
                return d
        d = os.path.join(root, f"{step:010d}-{uuid.uuid4().hex[:8]}")
        os.mkdir(d)
        snap.dirs.append(d)
        return d

    def _stage_file(self, snap: Snapshot, step: int, name: str, path: str, near: str) -> None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint source file not found: {path}") from None
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"checkpoint source is not a regular file: {path}")
        if self.mode != "copy":
            root = self._root_for(st.st_dev, near)
            if root is not None:
                dst = os.path.join(self._save_dir(snap, root, step), name)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if st.st_dev not in self._no_reflink and _reflink(path, dst):
                    snap.files.append(StagedFile(name, os.stat(dst).st_size, path=dst))
                    return
                self._no_reflink.add(st.st_dev)
                try:
                    os.link(path, dst)
                except OSError as exc:
                    if exc.errno not in _NO_LINK:
                        raise
                    log.debug("cannot hard-link %s (%s); copying", path, exc.strerror)
                else:
                    lst = os.stat(dst)
                    snap.files.append(StagedFile(name, lst.st_size, path=dst,
                                                 signature=(lst.st_size, lst.st_mtime_ns)))
                    return
            elif self.mode == "link":
                raise CheckpointError(f"cannot hard-link {path} into a staging dir on its file system "
                                      "(snapshot='link'); use snapshot='auto' to copy instead")
        dst = os.path.join(self._save_dir(snap, self._default(), step), name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(path, dst)  # sendfile/copy_file_range: no trip through Python
        snap.files.append(StagedFile(name, os.stat(dst).st_size, path=dst))


def _reflink(src: str, dst: str) -> bool:
    """Copy-on-write clone of src at dst (a private snapshot without copying data)."""
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        return True
    except OSError:
        try:
            os.unlink(dst)
        except OSError:
            pass
        return False


def _enumerate_files(source) -> list[tuple[str, str, str]]:
    """(name in checkpoint, path, dir beside which a staging root may go) of every file."""
    if isinstance(source, (str, os.PathLike)):
        root = os.path.abspath(os.fspath(source))
        if os.path.isdir(root):
            out = []
            near = os.path.dirname(root.rstrip("/")) or root
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(STAGING_PREFIX))
                for fn in sorted(filenames):
                    full = os.path.join(dirpath, fn)
                    name = os.path.relpath(full, root).replace(os.sep, "/")
                    out.append((check_name(name), full, near))
            return out
        if not os.path.exists(root):
            raise CheckpointError(f"checkpoint source not found: {root}")
        source = [root]
    if isinstance(source, (bytes, bytearray)):
        raise TypeError("save() takes a directory, a list of files or a mapping of name -> bytes")
    out = []
    for item in source:
        full = os.path.abspath(os.fspath(item))
        out.append((check_name(os.path.basename(full)), full, os.path.dirname(full)))
    return out


def _remove_dead_roots(parent: str) -> None:
    """Remove staging roots beside `parent` left by processes that no longer run."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(STAGING_PREFIX)]
    except OSError:
        return
    for n in names:
        pid = n[len(STAGING_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_running(int(pid)):
            continue
        path = os.path.join(parent, n)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        # only a directory of this user's, as mkdtemp made it: in a shared /tmp a name
        # like ours may belong to another user (or be a link someone planted)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077:
            shutil.rmtree(path, ignore_errors=True)
