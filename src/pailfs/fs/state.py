"""Handing a live file system to a successor process: the state the kernel sees.

The kernel names inodes by number (with a lookup count it will FORGET later)
and open files by handle; the successor must answer for exactly those, so what
goes over (as JSON, plus file descriptors) is:

* every inode the kernel holds (nlookup > 0), every inode with staged writes,
  and their ancestors (a key is its parent chain): number, parent, name, kind,
  size, mtime, ETag, metadata, lookup count, the seconds its attributes are
  still trusted, and whether its parent's listing names it;
* the next inode number (numbers are never reused);
* the write handles (fh -> inode) and the staged writes, each staging file as an
  open descriptor: dirty data is handed over, neither uploaded half-written nor
  lost, and the successor goes on writing where the predecessor stopped.

Not handed over: cached bytes, listings and negative entries — the successor
asks the store again. The caller has drained the FUSE requests: nothing of the
file system is in flight when export_state() runs (uploads in progress finish
first), and the predecessor calls forget_exported() once the successor serves.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from pailfs.errors import MountError
from pailfs.fs.nodes import Node
from pailfs.fs.types import ROOT_INO
from pailfs.errors import NoSpace, StoreError
from pailfs.fs.writes import Staged

if TYPE_CHECKING:
    from pailfs.fs.core import ObjectFileSystem

FORMAT = 2


async def export_state(fs: "ObjectFileSystem") -> tuple[dict[str, Any], list[int]]:
    """The state a successor needs, and the descriptors to send with it (not closed here)."""
    ns, wb = fs.namespace, fs.writes
    for st in list(wb.staged.values()):
        async with st.lock:  # an upload in progress finishes before its file changes hands
            pass
        wb.check_stream(st)  # a part that failed poisons the file before it changes hands
    keep: dict[int, Node] = {}

    def with_ancestors(node: Node | None) -> None:
        while node is not None and node.ino not in keep:
            keep[node.ino] = node
            node = node.parent

    with_ancestors(ns.root)
    for node in ns.inodes.values():
        if node.nlookup > 0 or wb.busy(node.ino):
            with_ancestors(node)
    now = time.monotonic()
    nodes = [_node_record(node, now) for node in keep.values()]
    fds: list[int] = []
    staged = []
    for st in wb.staged.values():
        # A streamed file goes over as a plain staged file: the successor uploads it
        # whole; the predecessor's multipart upload is left to abort_stale_uploads.
        staged.append({"ino": st.node.ino, "fd": len(fds), "size": st.size,
                       "dirty": st.dirty or st.stream is not None,
                       "uploaded_once": st.uploaded_once, "dirty_bytes": st.dirty_bytes, "failed": st.failed,
                       "handles": sorted(st.handles), "orphan": st.orphan,
                       # a poisoned file stays poisoned: never uploaded by the successor either
                       "error": None if st.error is None else {"nospace": isinstance(st.error, NoSpace),
                                                                "message": str(st.error)}})
        fds.append(st.fd)
    state = {"format": FORMAT, "next_ino": ns.inodes.next_ino(), "nodes": nodes,
             "handles": [[fh, ino] for fh, ino in wb.handles.items()], "staged": staged, "kept": list(wb.kept)}
    return state, fds


def _node_record(node: Node, now: float) -> dict[str, Any]:
    parent = node.parent
    etag = node.etag
    return {
        "ino": node.ino, "parent": parent.ino if parent is not None else 0, "name": node.name,
        "dir": node.is_dir, "size": node.size, "mtime": node.mtime,
        "etag": {"raw": etag.hex()} if isinstance(etag, bytes) else etag,
        "meta": list(node.meta) if node.meta is not None else None,
        "nlookup": node.nlookup,
        "ttl": max(0.0, node.expires - now) if node.expires else 0.0,
        "linked": parent is not None and parent.children is not None and parent.children.get(node.name) is node,
    }


def import_state(fs: "ObjectFileSystem", state: dict[str, Any], fds: list[int]) -> None:
    """Make a freshly built file system answer for the predecessor's inodes and handles."""
    if state.get("format") != FORMAT:
        raise MountError(f"the running mount hands over state format {state.get('format')}, "
                         f"this pailfs reads {FORMAT}: upgrade by remounting")
    ns, wb = fs.namespace, fs.writes
    ns.inodes.reserve(state["next_ino"])
    now = time.monotonic()
    made: dict[int, Node] = {ROOT_INO: ns.root}
    for rec in state["nodes"]:
        if rec["ino"] != ROOT_INO:
            made[rec["ino"]] = ns.restore(rec["ino"], rec["name"], rec["dir"])
    for rec in state["nodes"]:
        node = made[rec["ino"]]
        etag = rec["etag"]
        node.size, node.mtime = rec["size"], rec["mtime"]
        node.etag = bytes.fromhex(etag["raw"]) if isinstance(etag, dict) else etag
        node.meta = tuple(rec["meta"]) if rec["meta"] is not None else None
        if node is ns.root:
            continue
        node.nlookup = rec["nlookup"]
        node.parent = made.get(rec["parent"])  # type: ignore[assignment]
        if rec["linked"] and node.parent is not None:
            node.parent.children[node.name] = node  # type: ignore[index]
        if rec["ttl"] > 0 and ns.stat_cache.enabled:
            ns.stat_cache.admit(node, now)
            node.expires = min(node.expires, now + rec["ttl"])
    for rec in state["staged"]:
        node = made[rec["ino"]]
        fd = fds[rec["fd"]]
        # the predecessor's staging file, reached through the descriptor it sent (its
        # directory may be in another container's file system)
        wb.staged[node.ino] = Staged(node, f"/proc/self/fd/{fd}", fd, rec["size"], dirty=rec["dirty"],
                                     uploaded_once=rec["uploaded_once"], dirty_bytes=rec["dirty_bytes"],
                                     failed=rec["failed"], handles=set(rec["handles"]), orphan=rec["orphan"],
                                     error=_error(rec["error"]))
    wb.handles.update({fh: ino for fh, ino in state["handles"]})
    wb._next_fh = max([wb._next_fh, *(fh + 1 for fh, _ in state["handles"])])  # handles stay unique
    wb.kept.extend(state["kept"])


def _error(rec: dict[str, Any] | None) -> BaseException | None:
    if rec is None:
        return None
    return NoSpace(rec["message"]) if rec["nospace"] else StoreError(rec["message"])


def forget_exported(fs: "ObjectFileSystem") -> None:
    """The successor serves: drop the staged writes it now owns, without uploading them
    (its descriptors keep the data; the files leave this mount's staging dir)."""
    wb = fs.writes
    for st in list(wb.staged.values()):
        try:
            os.close(st.fd)
            os.unlink(st.path)
        except OSError:
            pass
    wb.staged.clear()
    wb.handles.clear()
