"""What a read-write mount reads besides a listing: the metadata of each object
(mode, owner, times, xattrs — only a HEAD returns them; a directory's are in its
DIR_META object), s3fs-style directory objects, and close-to-open revalidation.
A read-only data-set mount never comes here: it trusts its listings.
Runs on the file system's loop thread."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pailfs.errors import NotFound
from pailfs.fs.nodes import (DIR_CONTENT_TYPES, DIR_META, XATTR_META, Node, decode_xattrs, meta_from_object,
                             mtime_ns_from_object, parse_ns)
from pailfs.store.base import ObjectInfo

if TYPE_CHECKING:
    from pailfs.fs.namespace import Namespace

RW_LISTING_TTL = 1.0   # seconds a read-write mount's readdir reuses a listing


def set_rich(node: Node, metadata: dict) -> None:
    """ctime, atime and extended attributes of a read-write inode from its metadata."""
    node.ctime_ns = parse_ns(metadata.get("ctime"))
    node.atime_ns = parse_ns(metadata.get("atime"))
    node.xattrs = decode_xattrs(metadata.get(XATTR_META)) or None


class RwMetadata:
    def __init__(self, namespace: "Namespace") -> None:
        self.ns = namespace

    async def load(self, node: Node) -> Node:
        """Read-write mounts show chmod/chown/touch/xattr metadata, which only a HEAD
        returns: of the object, or of a directory's DIR_META object. Returns the node
        (a new directory node if the object turns out to be an s3fs-style directory);
        NotFound (and the node detached) if the object is gone."""
        if self.ns.is_staged(node.ino) or node.parent is None:
            if node.meta is None:
                node.meta = ()
            return node
        if node.is_dir:
            async with self.ns.meta_sem:
                info = await self.ns.head_or_none(node.key() + DIR_META)
            if info is not None and info.metadata:
                node.meta = meta_from_object(info.metadata) or ()
                if "mtime" in info.metadata:
                    node.mtime_ns = mtime_ns_from_object(info)
                set_rich(node, info.metadata)
            elif node.meta is None:
                node.meta = ()
            return node
        async with self.ns.meta_sem:
            info = await self.ns.head_or_none(node.key())
        if info is None:
            parent = node.parent
            self.ns.detach(node)
            raise NotFound(parent.child_key(node.name))
        if self.is_plain_marker(info):
            return await self._as_plain_marker_dir(node)
        self.ns.set_attrs(node, info)
        if node.meta is None:
            node.meta = ()
        return node

    def is_plain_marker(self, info: ObjectInfo) -> bool:
        return not self.ns.read_only and info.size == 0 and not info.key.endswith("/") \
            and (info.content_type or "").split(";")[0].strip() in DIR_CONTENT_TYPES

    async def _as_plain_marker_dir(self, node: Node) -> Node:
        """An object `name` (no trailing '/') with Content-Type application/x-directory
        is a directory, as in s3fs-fuse; its children are under `name/`."""
        parent, name = node.parent, node.name
        self.ns.detach(node)
        dnode = self.ns.new_node(parent, name, True, mtime=node.mtime)
        dnode.plain_marker = True
        self.ns.stat_cache.admit(dnode)
        return await self.load(dnode)

    async def revalidate(self, node: Node) -> Node:
        """Close-to-open: the object's current ETag and attributes (one HEAD). A change
        drops every cached byte of it (content_changed); NotFound if it is gone."""
        if self.ns.is_staged(node.ino) or node.parent is None or node.is_dir:
            return node
        node = await self.load(node)
        self.ns.stat_cache.admit(node)
        return node

    async def readdir(self, dnode: Node) -> list[Node]:
        """A read-write mount's readdir: a listing at most RW_LISTING_TTL old (other
        clients' changes show), every entry with its object metadata (one HEAD each
        the first time: the kernel takes READDIRPLUS attributes as they are, so a
        symlink, a FIFO or a restored mtime must be right in the listing itself)."""
        if dnode.listed_until <= time.monotonic():
            listed = await self.ns.ensure_listed(dnode)
        else:
            listed = list(dnode.children.values())  # type: ignore[union-attr]

        async def complete(node: Node) -> Node | None:
            if node.meta is not None:
                return node
            try:
                return await self.load(node)
            except NotFound:
                return None  # deleted since the listing

        entries = [n for n in await asyncio.gather(*(complete(n) for n in listed)) if n is not None]
        dnode.entries = entries
        dnode.entries_until = time.monotonic() + RW_LISTING_TTL
        return entries
