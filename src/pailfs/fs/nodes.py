"""Inodes of the object file system.

A Node is both the inode and the Attr the front end packs (it has the same
attribute names as pailfs.fs.types.Attr), so answering a cached GETATTR or a
READDIRPLUS entry allocates nothing. Nodes are kept compact (slots, shared
defaults) because one exists per cached stat entry.

Two families of kinds: read-only mounts use FileNode/DirNode (a float mtime,
atime = ctime = mtime, no extended attributes: the data set's 386 B an entry);
read-write mounts use RwFileNode/RwDirNode, which keep mtime, ctime and atime
in nanoseconds and the extended attributes, all persisted in object metadata
(see object_metadata).
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import stat
import urllib.parse
from dataclasses import dataclass
from typing import Any, Mapping

from pailfs.config import Options
from pailfs.store.base import ObjectInfo


@dataclass(slots=True)
class Presentation:
    """How objects are shown: owner and default modes (one per file system)."""

    uid: int
    gid: int
    file_mode: int  # permission bits for objects without mode metadata
    dir_mode: int
    root_mode: int


def presentation(options: Options) -> Presentation:
    uid = options.uid if options.uid is not None else os.getuid()
    gid = options.gid if options.gid is not None else os.getgid()
    if options.umask is not None:
        file_mode = dir_mode = 0o777 & ~options.umask
    else:
        file_mode, dir_mode = 0o640, 0o750  # ossfs defaults for objects without mode metadata
    root_mode = 0o777 & ~options.mp_umask if options.mp_umask is not None else dir_mode
    return Presentation(uid, gid, file_mode, dir_mode, root_mode)


def meta_from_object(metadata: Mapping[str, str] | None) -> tuple[int | None, int | None, int | None] | None:
    """(mode, uid, gid) from s3fs-style x-amz-meta-mode/uid/gid; None when absent."""
    if not metadata:
        return None

    def num(name: str) -> int | None:
        try:
            return int(metadata[name]) if name in metadata else None
        except ValueError:
            return None

    values = (num("mode"), num("uid"), num("gid"))
    return values if any(v is not None for v in values) else None


NS = 1_000_000_000
DIR_META = ".pailfs-dirmeta"  # the object under a directory's prefix holding its metadata
DIR_CONTENT_TYPE = "application/x-directory"
# objects without a trailing '/' that s3fs-fuse (and Nextcloud) show as directories
DIR_CONTENT_TYPES = frozenset({DIR_CONTENT_TYPE, "httpd/unix-directory"})
XATTR_META = "xattr"
# x-amz-meta-* of all kinds together: S3 allows 2 KB of user metadata; the times,
# mode and owner take about 110 bytes of it
XATTR_META_MAX = 1800
# file types kept in the mode metadata (s3fs-fuse's way); anything else shows as a file
SPECIAL_TYPES = frozenset({stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK})


def format_ns(ns: int) -> str:
    """Seconds with nine decimals ('1600000000.200000000'), as s3fs-fuse writes times."""
    seconds, fraction = divmod(ns, NS)
    return f"{seconds}.{fraction:09d}"


def parse_ns(text: str | None) -> int | None:
    """Nanoseconds from 'SECONDS[.FRACTION]' (s3fs-fuse, rclone and older pailfs write
    these); None if absent or malformed."""
    if not text:
        return None
    whole, _, fraction = text.strip().partition(".")
    if not (whole.lstrip("-").isdigit() and (fraction.isdigit() or not fraction)):
        return None
    return int(whole) * NS + int((fraction + "000000000")[:9])


def mtime_ns_from_object(info: ObjectInfo) -> int:
    found = parse_ns(info.metadata.get("mtime")) if info.metadata else None
    return found if found is not None else round(info.mtime * NS)


def encode_xattrs(xattrs: Mapping[str, bytes]) -> str:
    """s3fs-fuse's x-amz-meta-xattr: a URL-encoded JSON object of name -> base64 value."""
    doc = json.dumps({name: base64.b64encode(value).decode() for name, value in sorted(xattrs.items())},
                     separators=(",", ":"), ensure_ascii=True)
    return urllib.parse.quote(doc, safe="")


def decode_xattrs(text: str | None) -> dict[str, bytes]:
    """The inverse of encode_xattrs; what cannot be decoded is ignored (other tools' data)."""
    if not text:
        return {}
    try:
        doc = json.loads(urllib.parse.unquote(text))
    except ValueError:
        return {}
    out: dict[str, bytes] = {}
    if isinstance(doc, dict):
        for name, value in doc.items():
            try:
                out[str(name)] = base64.b64decode(value, validate=True)
            except (ValueError, TypeError):
                continue
    return out


def content_type_of(name: str) -> str:
    """Content-Type for an object named `name`, from its extension (as s3fs-fuse does)."""
    guessed, _encoding = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def object_metadata(node: Any) -> dict[str, str]:
    """s3fs-compatible metadata of a node: x-amz-meta-mode/uid/gid/mtime, and on
    read-write kinds ctime, atime and xattr."""
    meta = {"mtime": format_ns(node.mtime_ns)}
    if node.meta:
        for name, value in zip(("mode", "uid", "gid"), node.meta):
            if value is not None:
                meta[name] = str(value)
    if node.rich:
        if node.ctime_ns is not None:
            meta["ctime"] = format_ns(node.ctime_ns)
        if node.atime_ns is not None:
            meta["atime"] = format_ns(node.atime_ns)
        if node.xattrs:
            meta[XATTR_META] = encode_xattrs(node.xattrs)
    return meta


def etag_text(etag: bytes | str | None) -> str | None:
    """A node's ETag as the store spelled it (the inverse of compact_etag)."""
    if etag is None or isinstance(etag, str):
        return etag
    text = etag[:16].hex()
    if len(etag) > 16:
        text += f"-{int.from_bytes(etag[16:], 'big')}"
    return f'"{text}"'


def compact_etag(etag: str | None) -> bytes | str | None:
    """An ETag as kept in a node: '"<32 hex>"' (or '"<hex>-N"' for multipart) as raw
    bytes — 49 bytes instead of an 83-byte str — anything else as given."""
    if etag is None:
        return None
    text = etag.strip('"')
    body, dash, parts = text.partition("-")
    # only lower-case hex is packed: OSS spells ETags in upper case, and a conditional
    # GET must send them back as the store spelled them (etag_text)
    if len(body) == 32 and body == body.lower() and etag == f'"{text}"' and (not dash or parts.isdigit()):
        try:
            raw = bytes.fromhex(body)
        except ValueError:
            return etag
        return raw + (int(parts).to_bytes(2, "big") if dash else b"")
    return etag


class Node:
    """An inode; FileNode and DirNode are the two kinds (a kind never changes)."""

    __slots__ = ("ino", "parent", "name", "size", "mtime", "etag", "expires", "nlookup", "meta", "used")
    is_dir = False
    look: Presentation  # a class attribute of the kinds made for one file system (node_kinds)
    # what read-write kinds add, as class attributes here: no memory per inode
    rich = False
    times_ns = None       # (atime s, ns, mtime s, ns, ctime s, ns) when known exactly
    ctime_ns = None
    atime_ns = None
    xattrs: dict[str, bytes] | None = None
    plain_marker = False
    listed_once = False   # rw directories: listed by this mount at least once

    def __init__(self, ino: int, parent: "DirNode | None", name: str,
                 size: int = 0, mtime: float = 0.0, etag: str | None = None) -> None:
        self.ino = ino
        self.parent = parent
        self.name = name
        self.size = size
        self.mtime = mtime
        self.etag = etag
        self.expires = 0.0        # attributes trusted until (monotonic); 0 = ask the store
        self.nlookup = 0          # references the kernel holds
        self.meta: tuple[int | None, int | None, int | None] | tuple[()] | None = None
        # (mode, uid, gid) from object metadata; () = known to have none; None = not read yet
        self.used = 0             # stat-cache clock tick of the last use

    # --- the Attr protocol ------------------------------------------------
    @property
    def mode(self) -> int:
        meta_mode = self.meta[0] if self.meta else None
        if self.is_dir:
            perm = self.look.root_mode if self.parent is None else self.look.dir_mode
            return stat.S_IFDIR | (perm if meta_mode is None else meta_mode & 0o7777)
        if meta_mode is not None and stat.S_IFMT(meta_mode) in SPECIAL_TYPES:
            return meta_mode
        return stat.S_IFREG | (self.look.file_mode if meta_mode is None else meta_mode & 0o7777)

    @property
    def uid(self) -> int:
        return self.meta[1] if self.meta and self.meta[1] is not None else self.look.uid

    @property
    def gid(self) -> int:
        return self.meta[2] if self.meta and self.meta[2] is not None else self.look.gid

    @property
    def nlink(self) -> int:
        return 2 if self.is_dir else 1

    @property
    def ctime(self) -> float:
        return self.mtime

    @property
    def atime(self) -> float:
        return self.mtime

    @property
    def mtime_ns(self) -> int:
        return round(self.mtime * NS)

    @mtime_ns.setter
    def mtime_ns(self, value: int) -> None:
        self.mtime = value / NS

    # --- keys ---------------------------------------------------------------
    def key(self) -> str:
        """The store key of a file, or the prefix (ending in '/') of a directory; '' for the root."""
        parts: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        if not parts:
            return ""
        path = "/".join(reversed(parts))
        return path + "/" if self.is_dir else path

    def child_key(self, name: str) -> str:
        return self.key() + name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ino}, {self.key()!r})"


class FileNode(Node):
    __slots__ = ()
    # what a directory has, a file reads as "nothing" (class attributes: no memory per file)
    children = None
    listed_until = 0.0
    entries = None
    entries_until = 0.0
    ahead = False


class DirNode(Node):
    __slots__ = ("children", "listed_until", "entries", "entries_until", "ahead")
    is_dir = True

    def __init__(self, ino: int, parent: "DirNode | None", name: str,
                 size: int = 0, mtime: float = 0.0, etag: str | None = None) -> None:
        super().__init__(ino, parent, name, size, mtime, etag)
        self.children: dict[str, Node] = {}
        self.listed_until = 0.0   # children is the complete listing until then
        self.entries: list[Node] | None = None  # readdir answer, built lazily
        self.entries_until = 0.0  # an incomplete listing's entries serve readdir paging until then
        self.ahead = False        # listed ahead of a walk; its subdirectories not queued yet


class RichTimes:
    """What read-write kinds add: times in nanoseconds (mtime in the `_mtime_ns` slot,
    shadowing Node's float slot; ctime/atime None = same as mtime) and extended
    attributes. The float `mtime` stays, for the code that compares and sorts."""

    __slots__ = ()
    rich = True

    def _init_rich(self) -> None:
        self.ctime_ns = self.atime_ns = None
        self.xattrs = None

    @property
    def mtime(self) -> float:
        return self._mtime_ns / NS

    @mtime.setter
    def mtime(self, value: float) -> None:
        self._mtime_ns = round(value * NS)

    @property
    def mtime_ns(self) -> int:
        return self._mtime_ns

    @mtime_ns.setter
    def mtime_ns(self, value: int) -> None:
        self._mtime_ns = value

    @property
    def ctime(self) -> float:
        return (self._mtime_ns if self.ctime_ns is None else self.ctime_ns) / NS

    @property
    def atime(self) -> float:
        return (self._mtime_ns if self.atime_ns is None else self.atime_ns) / NS

    @property
    def times_ns(self) -> tuple[int, int, int, int, int, int]:
        """The three times split for the kernel: exact to the nanosecond."""
        m = self._mtime_ns
        a = m if self.atime_ns is None else self.atime_ns
        c = m if self.ctime_ns is None else self.ctime_ns
        return (*divmod(a, NS), *divmod(m, NS), *divmod(c, NS))

    def touch(self, now_ns: int, modified: bool = True) -> None:
        """A change of the data (modified) or only of the inode (chmod, rename...)."""
        if modified:
            self._mtime_ns = now_ns
        self.ctime_ns = now_ns


_RICH_SLOTS = ("_mtime_ns", "ctime_ns", "atime_ns", "xattrs")


class RwFileNode(RichTimes, FileNode):
    __slots__ = _RICH_SLOTS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._init_rich()
        super().__init__(*args, **kwargs)


class RwDirNode(RichTimes, DirNode):
    # plain_marker: shown as a directory because an object without a trailing '/'
    # of this name has Content-Type application/x-directory (s3fs-fuse's old layout)
    __slots__ = (*_RICH_SLOTS, "plain_marker", "listed_once")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._init_rich()
        self.plain_marker = self.listed_once = False
        super().__init__(*args, **kwargs)


def node_kinds(look: Presentation, rich: bool = False) -> tuple[type[FileNode], type[DirNode]]:
    """FileNode and DirNode for one file system (RwFileNode/RwDirNode when rich), with
    its Presentation as a class attribute: the same for every inode, so no inode
    spends a slot on it."""
    file_base, dir_base = (RwFileNode, RwDirNode) if rich else (FileNode, DirNode)
    return (type("FileNode", (file_base,), {"__slots__": (), "look": look}),
            type("DirNode", (dir_base,), {"__slots__": (), "look": look}))


class InodeTable:
    """ino -> node as a list indexed by the inode number: one 8-byte slot an inode,
    where a dict costs about 50 bytes an entry. Numbers are never reused (a node
    the kernel still names may be put back; see ObjectFileSystem.ref), so a
    dropped inode leaves an empty slot: 8 bytes per inode ever created."""

    def __init__(self, root: Node) -> None:
        self._slots: list[Node | None] = [None] * root.ino + [root]
        self._count = 1

    def next_ino(self) -> int:
        return len(self._slots)

    def reserve(self, next_ino: int) -> None:
        """Numbers below next_ino are taken (a predecessor's, pailfs.fs.state)."""
        self._slots.extend([None] * (next_ino - len(self._slots)))

    def get(self, ino: int) -> Node | None:
        try:
            return self._slots[ino] if ino > 0 else None
        except IndexError:
            return None

    def add(self, node: Node) -> None:
        """Insert (or put back) node at its number."""
        if node.ino == len(self._slots):
            self._slots.append(node)
            self._count += 1
        elif self._slots[node.ino] is None:
            self._slots[node.ino] = node
            self._count += 1
        else:
            self._slots[node.ino] = node

    def remove(self, node: Node) -> None:
        if self.get(node.ino) is node:
            self._slots[node.ino] = None
            self._count -= 1

    def values(self) -> list[Node]:
        return [n for n in self._slots if n is not None]

    def __len__(self) -> int:
        return self._count
