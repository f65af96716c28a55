"""The file system core against a model: random sequences of create, write, append,
truncate, read, mkdir, unlink, rmdir, rename and readdir on ObjectFileSystem
(over the in-memory store, no mount) give the same results and errors as a plain
dict of paths, and a fresh file system over the same bucket sees the same tree.

The calls are what the kernel would send: it resolves paths with LOOKUP, never
renames a directory into itself and never renames a name onto itself (VFS
answers those without asking the file system), so neither does the model."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pailfs.config import parse_options
from pailfs.errors import (AlreadyExists, DirectoryNotEmpty, IsADirectory, NotADirectory, NotFound,
                           PailfsError)
from pailfs.fs.core import ObjectFileSystem
from pailfs.fs.nodes import DIR_META
from pailfs.fs.types import ROOT_INO, SetAttr
from pailfs.store.memory import MemoryStore

pytestmark = pytest.mark.unit

DIR = object()  # the model's value for a directory
NAMES = st.sampled_from(["a", "b", "c.txt"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(tuple)
DATA = st.binary(max_size=64)


class FileSystemModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = MemoryStore()
        self.options = parse_options(["stat_cache_expire=60,max_stat_cache_size=50"], env={})
        self.fs = self._new_fs()
        self.model: dict[tuple[str, ...], object] = {}

    def _new_fs(self) -> ObjectFileSystem:
        async def build() -> ObjectFileSystem:
            fs = ObjectFileSystem(self.store, self.options)
            fs.attach(asyncio.get_running_loop())
            return fs
        return self.run(build())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.fs.close())
        self.loop.close()

    # --- the model ------------------------------------------------------------
    def kind(self, path: tuple[str, ...]) -> str:
        if not path:
            return "dir"
        if path not in self.model:
            return "missing"
        return "dir" if self.model[path] is DIR else "file"

    def children(self, path: tuple[str, ...]) -> set[str]:
        return {p[-1] for p in self.model if p[:-1] == path and len(p) == len(path) + 1}

    def expect(self, call, error: type[PailfsError] | None):
        """Run call(); it must raise error (None: must succeed). Returns its result."""
        try:
            result = self.run(call())
        except PailfsError as exc:
            assert error is not None and isinstance(exc, error), f"raised {exc!r}, expected {error}"
            return None
        assert error is None, f"succeeded, expected {error}"
        return result

    def parent_error(self, path: tuple[str, ...]) -> type[PailfsError] | None:
        """What resolving the parent of path raises, if anything."""
        for i in range(1, len(path)):
            kind = self.kind(path[:i])
            if kind == "missing":
                return NotFound
            if kind == "file":
                return NotADirectory
        return None

    # --- the file system, resolved the way the kernel does ----------------------
    async def ino(self, path: tuple[str, ...]) -> int:
        ino = ROOT_INO
        for name in path:
            ino = (await self.fs.lookup(ino, name)).ino
        return ino

    async def dir_ino(self, path: tuple[str, ...]) -> int:
        """The inode of a directory on the way to a name (ENOTDIR if it is a file, as the
        kernel's path walk says before it asks the file system)."""
        ino = await self.ino(path)
        if not stat.S_ISDIR((await self.fs.getattr(ino)).mode):
            raise NotADirectory("/".join(path))
        return ino

    async def write_file(self, path: tuple[str, ...], data: bytes, flags: int) -> None:
        parent = await self.dir_ino(path[:-1])
        node, fh = await self.fs.create(parent, path[-1], 0o644, flags)
        size = node.size
        try:
            await self.fs.write(node.ino, fh, 0 if flags & os.O_TRUNC else size, data)
            await self.fs.flush(node.ino, fh)
        finally:
            await self.fs.release(node.ino, fh)

    async def read_file(self, path: tuple[str, ...]) -> bytes:
        ino = await self.ino(path)
        attr = await self.fs.getattr(ino)
        if stat.S_ISDIR(attr.mode):
            raise IsADirectory("/".join(path))
        return bytes(await self.fs.read(ino, 0, attr.size + 10))

    # --- rules ---------------------------------------------------------------
    @rule(path=PATHS, data=DATA)
    def create_or_overwrite(self, path, data):
        error = self.parent_error(path) or (IsADirectory if self.kind(path) == "dir" else None)
        self.expect(lambda: self.write_file(path, data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), error)
        if error is None:
            self.model[path] = data

    @rule(path=PATHS, data=DATA)
    def append(self, path, data):
        error = self.parent_error(path) or (IsADirectory if self.kind(path) == "dir" else None)
        self.expect(lambda: self.write_file(path, data, os.O_WRONLY | os.O_CREAT), error)
        if error is None:
            self.model[path] = self.model.get(path, b"") + data  # type: ignore[operator]

    @rule(path=PATHS, size=st.integers(0, 80))
    def truncate(self, path, size):
        kind = self.kind(path)
        error = self.parent_error(path) or {"missing": NotFound, "dir": IsADirectory}.get(kind)

        async def call():
            await self.fs.setattr(await self.ino(path), None, SetAttr(size=size))

        self.expect(call, error)
        if error is None:
            old = self.model[path]
            self.model[path] = old[:size] + b"\0" * (size - len(old))  # type: ignore[index,operator]

    @rule(path=PATHS)
    def read(self, path):
        kind = self.kind(path)
        error = self.parent_error(path) or {"missing": NotFound, "dir": IsADirectory}.get(kind)
        data = self.expect(lambda: self.read_file(path), error)
        if error is None:
            assert data == self.model[path]

    @rule(path=PATHS)
    def mkdir(self, path):
        error = self.parent_error(path) or (AlreadyExists if self.kind(path) != "missing" else None)

        async def call():
            await self.fs.mkdir(await self.dir_ino(path[:-1]), path[-1], 0o755)

        self.expect(call, error)
        if error is None:
            self.model[path] = DIR

    @rule(path=PATHS)
    def unlink(self, path):
        kind = self.kind(path)
        error = self.parent_error(path) or {"missing": NotFound, "dir": IsADirectory}.get(kind)

        async def call():
            await self.fs.unlink(await self.dir_ino(path[:-1]), path[-1])

        self.expect(call, error)
        if error is None:
            del self.model[path]

    @rule(path=PATHS)
    def rmdir(self, path):
        kind = self.kind(path)
        error = self.parent_error(path) or {"missing": NotFound, "file": NotADirectory}.get(kind)
        if error is None and self.children(path):
            error = DirectoryNotEmpty

        async def call():
            await self.fs.rmdir(await self.dir_ino(path[:-1]), path[-1])

        self.expect(call, error)
        if error is None:
            del self.model[path]

    @precondition(lambda self: self.model)
    @rule(src=PATHS, dst=PATHS)
    def rename(self, src, dst):
        if src == dst or dst[:len(src)] == src or src[:len(dst)] == dst:
            return  # the kernel answers these itself (EINVAL, or nothing to do)
        error = self.parent_error(src) or self.parent_error(dst)
        if error is None:
            skind, dkind = self.kind(src), self.kind(dst)
            if skind == "missing":
                error = NotFound
            elif dkind == "dir" and skind == "file":
                error = IsADirectory
            elif dkind == "file" and skind == "dir":
                error = NotADirectory
            elif dkind == "dir" and self.children(dst):
                error = DirectoryNotEmpty

        async def call():
            await self.fs.rename(await self.dir_ino(src[:-1]), src[-1], await self.dir_ino(dst[:-1]), dst[-1])

        self.expect(call, error)
        if error is None:
            self.model.pop(dst, None)
            for path in sorted(p for p in self.model if p[:len(src)] == src):
                self.model[dst + path[len(src):]] = self.model.pop(path)

    @rule(path=st.lists(NAMES, max_size=2).map(tuple))
    def readdir(self, path):
        kind = self.kind(path)
        error = self.parent_error(path) or {"missing": NotFound, "file": NotADirectory}.get(kind)

        async def call():
            return {e.name for e in await self.fs.readdir(await self.ino(path))}

        names = self.expect(call, error)
        if error is None:
            assert names == self.children(path)

    @rule()
    def remount(self):
        """A fresh file system over the same bucket: what was written is what is there."""
        self.run(self.fs.close())
        self.fs = self._new_fs()

    @invariant()
    def the_bucket_holds_the_model(self):
        async def objects():
            keys = [o.key for o in (await self.store.list("")).objects]
            return {k: await self.store.get(k) for k in keys}

        found = self.run(objects())
        # a directory's metadata (mode, owner, times) is an object of its own
        assert {tuple(k.split("/")[:-1]) for k in found if k.split("/")[-1] == DIR_META} <= \
            {p for p, v in self.model.items() if v is DIR} | {()}
        files = {tuple(k.split("/")): v for k, v in found.items()
                 if not k.endswith("/") and k.split("/")[-1] != DIR_META}
        assert files == {p: v for p, v in self.model.items() if v is not DIR}
        # every directory has its marker, so it outlives its last file
        assert {tuple(k[:-1].split("/")) for k in found if k.endswith("/")} == \
            {p for p, v in self.model.items() if v is DIR}


TestFileSystemModel = FileSystemModel.TestCase
TestFileSystemModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
