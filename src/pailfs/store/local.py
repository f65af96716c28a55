"""LocalStore: a local directory seen as a bucket (tests, demos, `file:///dir` URLs).

Layout under the root directory:

* `<key>` — the object's bytes (a key `a/b/c` is the file `a/b/c`);
* `.pailfs-store/meta/<key>.meta.json` — a sidecar with the ETag (md5, as S3
  reports it for single-part uploads), the size and mtime it was computed for,
  and the user metadata; a directory marker `d/` is the sidecar `d/.meta.json`
  plus the real directory `d`;
* `.pailfs-store/tmp/` — puts are written here and renamed into place, so an
  object appears whole or not at all.

Keys under `.pailfs-store/` are reserved. A key cannot be both an object and a
prefix (`a` and `a/b`), which S3 allows; such a put fails with StoreError.
Directories that become empty are removed, unless they hold a marker, so
prefixes come and go as in S3. Blocking file I/O runs in worker threads so the
caller's event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Callable, Mapping, TypeVar

from pailfs.config import Options
from pailfs.errors import AccessDenied, NoSuchBucket, NotFound, StoreError
from pailfs.store.base import Listing, ObjectInfo, ObjectStore, ProgressFn, Upload

log = logging.getLogger(__name__)

RESERVED = ".pailfs-store"
_SUFFIX = ".meta.json"
_PAGE = 1000
_CHUNK = 1024 * 1024
HASHED_KEPT = 100_000  # entries of LocalStore._hashed before it starts over
T = TypeVar("T")


def _quoted_md5(h: "hashlib._Hash") -> str:
    return f'"{h.hexdigest()}"'


class LocalStore(ObjectStore):
    """A directory as a bucket; same contract as S3Store."""

    def __init__(self, root: str | Path, options: Options | None = None) -> None:
        super().__init__()
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self._meta = self.root / RESERVED / "meta"
        self._tmp = self.root / RESERVED / "tmp"
        # MD5s of files written by others, by key: (size, mtime_ns, etag). A file is
        # hashed once per version, not at every HEAD or conditional read of it.
        self._hashed: dict[str, tuple[int, int, str]] = {}

    # --- plumbing ------------------------------------------------------
    async def _run(self, op: str, key: str | None, fn: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreError:
            self.stats.errors += 1
            raise
        except OSError as exc:
            self.stats.errors += 1
            raise self._translate(exc, op, key) from None

    def _translate(self, exc: OSError, op: str, key: str | None) -> StoreError:
        where = f"{self.url}/{key or ''}"
        if not self.root.is_dir():
            return NoSuchBucket(f"{op} {where}: no such directory {self.root}")
        if isinstance(exc, FileNotFoundError):
            return NotFound(f"{op} {where}: no such key")
        if isinstance(exc, PermissionError):
            return AccessDenied(f"{op} {where}: permission denied")
        if isinstance(exc, (NotADirectoryError, IsADirectoryError, FileExistsError)):
            return StoreError(f"{op} {where}: the key conflicts with an object or prefix of the same name")
        return StoreError(f"{op} {where}: {exc.strerror or type(exc).__name__}")

    def _path(self, key: str) -> Path:
        """Data path of a key (a marker 'd/' maps to the directory 'd'); refuses unsafe keys."""
        body = key[:-1] if key.endswith("/") else key
        parts = body.split("/")
        if not body or any(p in ("", ".", "..") for p in parts) or "\0" in key or parts[0] == RESERVED:
            raise StoreError(f"key {key!r} cannot be stored in a local directory")
        return self.root.joinpath(*parts)

    def _sidecar(self, key: str) -> Path:
        self._path(key)  # validates
        return self._meta / (key + _SUFFIX)

    def _read_sidecar(self, key: str) -> dict | None:
        try:
            return json.loads((self._meta / (key + _SUFFIX)).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except ValueError:
            log.warning("ignoring a corrupt sidecar of %s", key)
            return None

    def _write_sidecar(self, key: str, record: dict) -> None:
        path = self._sidecar(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp_path()
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def _tmp_path(self) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp / uuid.uuid4().hex

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise NoSuchBucket(f"{self.url}: no such directory {self.root}")

    def _is_marker(self, key: str) -> bool:
        return (self._meta / (key + _SUFFIX)).is_file()

    def _info(self, key: str, path: Path, st: os.stat_result, with_metadata: bool) -> ObjectInfo:
        record = self._read_sidecar(key) or {}
        etag = record.get("etag")
        if etag is None or record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
            known = self._hashed.get(key)
            if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
                etag = known[2]
            else:  # written by someone else: hash it now
                h = hashlib.md5()
                with open(path, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                etag = _quoted_md5(h)
                if len(self._hashed) >= HASHED_KEPT:
                    self._hashed.clear()
                self._hashed[key] = (st.st_size, st.st_mtime_ns, etag)
        if not with_metadata:
            return ObjectInfo(key, st.st_size, st.st_mtime, etag)
        return ObjectInfo(key, st.st_size, st.st_mtime, etag, dict(record.get("metadata") or {}),
                          record.get("content_type"))

    def _marker_info(self, key: str, with_metadata: bool) -> ObjectInfo | None:
        record = self._read_sidecar(key)
        if record is None or not self._path(key).is_dir():
            return None
        if not with_metadata:
            return ObjectInfo(key, 0, record.get("mtime", 0.0), record.get("etag"))
        return ObjectInfo(key, 0, record.get("mtime", 0.0), record.get("etag"), dict(record.get("metadata") or {}),
                          record.get("content_type"))

    # --- reads -----------------------------------------------------------
    async def head(self, key: str) -> ObjectInfo:
        info = await self._run("stat", key, self._head, key)
        self._count("head")
        return info

    def _head(self, key: str) -> ObjectInfo:
        self._require_root()
        path = self._path(key)
        if key.endswith("/"):
            info = self._marker_info(key, True)
            if info is None:
                raise FileNotFoundError(key)
            return info
        st = path.stat()
        if not path.is_file():
            raise FileNotFoundError(key)  # a prefix, not an object
        return self._info(key, path, st, True)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        data = await self._run("read", key, self._get, key, start, end)
        self._count("get", down=len(data))
        return data

    def _get(self, key: str, start: int | None, end: int | None) -> bytes:
        self._require_root()
        if key.endswith("/"):
            if self._marker_info(key, False) is None:
                raise FileNotFoundError(key)
            return b""
        lo = start or 0
        with open(self._path(key), "rb") as f:
            if end is not None and end <= lo:
                return b""
            f.seek(lo)
            return f.read() if end is None else f.read(end - lo)

    async def list_pages(self, prefix: str = "", delimiter: str | None = None,
                         page_size: int = _PAGE) -> AsyncIterator[Listing]:
        if delimiter not in (None, "/"):
            raise StoreError(f"list {self.url}: a local directory supports only '/' as delimiter")
        entries = await self._run("list", prefix, self._list_all, prefix, delimiter)
        self._count("list")
        size = max(1, min(page_size, _PAGE))
        for i in range(0, max(len(entries), 1), size):
            page = Listing()
            for name, info in entries[i:i + size]:
                if info is None:
                    page.prefixes.append(name)
                else:
                    page.objects.append(info)
            yield page

    def _list_all(self, prefix: str, delimiter: str | None) -> list[tuple[str, ObjectInfo | None]]:
        self._require_root()
        dir_part, _, name_part = prefix.rpartition("/")
        if dir_part:
            try:
                base = self._path(dir_part + "/")
            except StoreError:
                return []
        else:
            base = self.root
        if not base.is_dir():
            return []
        lead = dir_part + "/" if dir_part else ""
        out: list[tuple[str, ObjectInfo | None]] = []
        if delimiter:
            if prefix.endswith("/"):
                marker = self._marker_info(prefix, False)
                if marker is not None:
                    out.append((prefix, marker))
            for entry in os.scandir(base):
                if (base == self.root and entry.name == RESERVED) or not entry.name.startswith(name_part):
                    continue
                key = lead + entry.name
                if entry.is_dir():
                    if self._has_keys(Path(entry.path), key + "/"):
                        out.append((key + "/", None))
                elif entry.is_file():
                    out.append((key, self._info(key, Path(entry.path), entry.stat(), False)))
        else:
            for dirpath, dirnames, filenames in os.walk(base):
                here = Path(dirpath)
                rel = here.relative_to(self.root).as_posix()
                rel_lead = "" if rel == "." else rel + "/"
                if here == self.root and RESERVED in dirnames:
                    dirnames.remove(RESERVED)
                if rel_lead and rel_lead.startswith(prefix):
                    marker = self._marker_info(rel_lead, False)
                    if marker is not None:
                        out.append((rel_lead, marker))
                for name in filenames:
                    key = rel_lead + name
                    if key.startswith(prefix):
                        path = here / name
                        out.append((key, self._info(key, path, path.stat(), False)))
        out.sort(key=lambda item: item[0])
        return out

    def _has_keys(self, directory: Path, key_prefix: str) -> bool:
        """Whether a directory holds any object or marker (empty leftovers do not count)."""
        if self._is_marker(key_prefix):
            return True
        for dirpath, dirnames, filenames in os.walk(directory):
            if filenames:
                return True
            rel = Path(dirpath).relative_to(self.root).as_posix()
            if any(self._is_marker(f"{rel}/{d}/") for d in dirnames):
                return True
        return False

    async def get_file(self, key: str, path: str | Path, progress: ProgressFn | None = None) -> ObjectInfo:
        info = await self._run("download", key, self._get_file, key, Path(path))
        self._count("get", down=info.size)
        if progress:
            progress(info.size)
        return info

    def _get_file(self, key: str, path: Path) -> ObjectInfo:
        info = self._head(key)
        tmp = path.with_name(f".{path.name}.pailfs-{uuid.uuid4().hex[:8]}")
        try:
            if key.endswith("/"):
                tmp.write_bytes(b"")
            else:
                shutil.copyfile(self._path(key), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return info

    # --- writes ----------------------------------------------------------
    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
                  content_type: str | None = None) -> ObjectInfo:
        info = await self._run("write", key, self._put, key, bytes(data), None, metadata, content_type)
        self._count("put", up=len(data))
        return info

    async def put_file(self, key: str, path: str | Path, metadata: Mapping[str, str] | None = None,
                       progress: ProgressFn | None = None, *, content_type: str | None = None) -> ObjectInfo:
        info = await self._run("upload", key, self._put, key, None, Path(path), metadata, content_type)
        self._count("put", up=info.size)
        if progress:
            progress(info.size)
        return info

    def _put(self, key: str, data: bytes | None, source: Path | None,
             metadata: Mapping[str, str] | None, content_type: str | None = None) -> ObjectInfo:
        self._require_root()
        target = self._path(key)
        meta = {k.lower(): v for k, v in (metadata or {}).items()}
        if key.endswith("/"):
            if data or (source is not None and source.stat().st_size):
                raise StoreError(f"write {self.url}/{key}: a directory marker must be empty here")
            target.mkdir(parents=True, exist_ok=True)
            now = time.time()
            self._write_sidecar(key, {"etag": _quoted_md5(hashlib.md5()), "mtime": now, "metadata": meta,
                                      "content_type": content_type})
            return ObjectInfo(key, 0, now, _quoted_md5(hashlib.md5()), meta, content_type)
        tmp = self._tmp_path()
        try:
            h = hashlib.md5()
            with open(tmp, "wb") as out:
                if data is not None:
                    h.update(data)
                    out.write(data)
                else:
                    try:
                        src = open(source, "rb")  # type: ignore[arg-type]
                    except OSError as exc:
                        raise StoreError(f"upload {self.url}/{key}: cannot read {source}: {exc.strerror}") from None
                    with src:
                        while chunk := src.read(_CHUNK):
                            h.update(chunk)
                            out.write(chunk)
            st = tmp.stat()
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                raise IsADirectoryError(key)
            etag = _quoted_md5(h)
            self._write_sidecar(key, {"etag": etag, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "metadata": meta,
                                      "content_type": content_type})
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return ObjectInfo(key, st.st_size, st.st_mtime, etag, meta, content_type)

    async def delete(self, key: str) -> None:
        await self._run("delete", key, self._delete, key)
        self._count("delete")

    def _delete(self, key: str) -> None:
        self._require_root()
        path = self._path(key)
        if key.endswith("/"):
            (self._meta / (key + _SUFFIX)).unlink(missing_ok=True)
            self._prune(path)
        else:
            try:
                if path.is_file():
                    path.unlink()
            except FileNotFoundError:
                pass
            (self._meta / (key + _SUFFIX)).unlink(missing_ok=True)
            self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove directories left empty, up to the root, stopping at a marker."""
        while directory != self.root and self.root in directory.parents:
            rel = directory.relative_to(self.root).as_posix() + "/"
            if self._is_marker(rel):
                return
            try:
                directory.rmdir()
            except OSError:
                return
            meta_dir = self._meta / rel
            try:
                meta_dir.rmdir()
            except OSError:
                pass
            directory = directory.parent

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None, *,
                   content_type: str | None = None) -> None:
        await self._run("copy", src, self._copy, src, dst, metadata, content_type)
        self._count("copy")

    def _copy(self, src: str, dst: str, metadata: Mapping[str, str] | None, content_type: str | None) -> None:
        info = self._head(src)
        if metadata is None:
            metadata, content_type = info.metadata, info.content_type
        if src.endswith("/"):
            self._put(dst, b"", None, metadata, content_type)
        else:
            self._put(dst, None, self._path(src), metadata, content_type)

    # --- multipart uploads, part by part ---------------------------------
    # An upload is a directory .pailfs-store/tmp/mpu-<id>/ holding upload.json (key,
    # metadata, content type) and one file per part; completing joins the parts
    # through _put (a temp file renamed into place), so the object appears whole.
    async def create_multipart(self, key: str, metadata: Mapping[str, str] | None = None, *,
                               content_type: str | None = None) -> str:
        upload_id = uuid.uuid4().hex
        await self._run("upload", key, self._create_multipart, key, upload_id, metadata, content_type)
        self._count("create_multipart")
        return upload_id

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise StoreError(f"upload id {upload_id!r} is not one this store made")
        return self._tmp / f"mpu-{upload_id}"

    def _create_multipart(self, key: str, upload_id: str, metadata: Mapping[str, str] | None,
                          content_type: str | None) -> None:
        self._require_root()
        self._path(key)  # validates
        folder = self._upload_dir(upload_id)
        folder.mkdir(parents=True)
        record = {"key": key, "metadata": dict(metadata or {}), "content_type": content_type}
        (folder / "upload.json").write_text(json.dumps(record))

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        etag = await self._run("upload", key, self._upload_part, key, upload_id, number, bytes(data))
        self._count("put_part", up=len(data))
        return etag

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        folder = self._upload_dir(upload_id)
        if not (folder / "upload.json").is_file():
            raise NotFound(f"upload {self.url}/{key}: no such upload")
        if not 1 <= number <= 10000:
            raise StoreError(f"upload {self.url}/{key}: part number {number} is out of range")
        tmp = folder / f"{number}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / str(number))
        return _quoted_md5(hashlib.md5(data))

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str | None:
        info = await self._run("upload", key, self._complete_multipart, key, upload_id, list(parts))
        self._count("complete_multipart")
        return info.etag

    def _complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> ObjectInfo:
        folder = self._upload_dir(upload_id)
        try:
            record = json.loads((folder / "upload.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"upload {self.url}/{key}: no such upload") from None
        numbers = [n for n, _ in parts]
        if not parts or numbers != sorted(set(numbers)) or record["key"] != key:
            raise StoreError(f"upload {self.url}/{key}: the part list is not ascending, or names another key")
        joined = self._tmp_path()
        try:
            with open(joined, "wb") as out:
                for number, etag in parts:
                    try:
                        data = (folder / str(number)).read_bytes()
                    except FileNotFoundError:
                        raise StoreError(f"upload {self.url}/{key}: part {number} was never uploaded") from None
                    if _quoted_md5(hashlib.md5(data)) != etag:
                        raise StoreError(f"upload {self.url}/{key}: part {number} does not match its ETag")
                    out.write(data)
            info = self._put(key, None, joined, record["metadata"], record["content_type"])
        finally:
            joined.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return info

    async def list_uploads(self, prefix: str = "") -> AsyncIterator[Upload]:
        def scan() -> list[Upload]:
            found = []
            for folder in self._tmp.glob("mpu-*") if self._tmp.is_dir() else ():
                try:
                    key = json.loads((folder / "upload.json").read_text())["key"]
                    started = (folder / "upload.json").stat().st_mtime  # written once, when it began
                except (OSError, ValueError, KeyError):
                    continue  # completed or aborted meanwhile, or not one of ours
                if key.startswith(prefix):
                    found.append(Upload(key, folder.name[len("mpu-"):], started))
            return sorted(found)
        for upload in await self._run("list uploads", prefix, scan):
            yield upload

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._run("abort upload", key, lambda: shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True))
        self._count("abort_multipart")

    # --- lifecycle -------------------------------------------------------
    async def check(self) -> None:
        await self._run("open", None, self._require_root)

    async def create_bucket(self) -> None:
        def create() -> None:
            try:
                self.root.mkdir(parents=True)
            except FileExistsError:
                raise StoreError(f"create bucket {self.url}: it already exists") from None
        await self._run("create bucket", None, create)

    async def abort_stale_uploads(self, older_than: float, prefix: str = "",
                                  select: Callable[[str], bool] | None = None) -> int:
        """Remove temp files of puts that never finished (a killed writer) older than
        `older_than` seconds. They belong to no key yet, so `prefix`/`select` do not apply."""
        def sweep() -> int:
            cutoff = time.time() - older_than
            removed = 0
            try:
                entries = list(os.scandir(self._tmp))
            except FileNotFoundError:
                return 0
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # finished (renamed) meanwhile
            return removed
        return await self._run("abort uploads", None, sweep)

    async def delete_bucket(self) -> None:
        def rm() -> None:
            self._require_root()
            if self._list_all("", "/"):
                raise StoreError(f"delete bucket {self.url}: it is not empty")
            shutil.rmtree(self.root / RESERVED, ignore_errors=True)
            self.root.rmdir()
        await self._run("delete bucket", None, rm)
