"""Listing ahead of a walk: a directory read is usually part of one (os.walk,
find, a DataLoader building its file list), so its subdirectories are listed
while the walker is still busy with it. Runs on the file system's loop thread."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING

from pailfs.fs.nodes import Node

if TYPE_CHECKING:
    from pailfs.fs.namespace import Namespace

log = logging.getLogger(__name__)

LISTINGS_AHEAD = 8     # directory listings a walk keeps in flight ahead of the walker
AHEAD_QUEUE = 4096     # subdirectories waiting to be listed ahead


class WalkAhead:
    def __init__(self, namespace: "Namespace") -> None:
        self.ns = namespace
        self._queue: collections.deque[Node] = collections.deque(maxlen=AHEAD_QUEUE)
        self._running = 0

    def queue(self, entries: list[Node]) -> None:
        """A directory read is usually a walk: queue its subdirectories to be listed
        in the walker's order, a few at a time, while the walker is still busy with
        this one. Depth first, like os.walk and find: a new batch goes to the front.
        Only while the stat cache has room for the walker's directory and those listed
        ahead of it (judged by the largest listing yet), so they are still cached when
        the walker gets there; and one level ahead only (see cached_readdir)."""
        if not self.ns.stat_cache.enabled:
            return
        subdirs = [node for node in entries if node.is_dir]
        if subdirs:
            self._queue.extendleft(reversed(subdirs))
            self._pump()

    def _pump(self) -> None:
        now = time.monotonic()
        capacity = self.ns.stat_cache.capacity
        # as many in flight as the cache holds next to the walker's own directory
        in_flight = min(LISTINGS_AHEAD, capacity // max(1, self.ns.largest_listing) - 1)
        if in_flight <= 0:
            self._queue.clear()
            return
        while self._running < in_flight and self._queue:
            if self.ns.stat_cache.count >= capacity:
                self._queue.clear()
                return
            node = self._queue.popleft()
            if node.listed_until > now or self.ns.listing_in_flight(node.ino) or self.ns.inodes.get(node.ino) is not node:
                continue
            self._running += 1
            task = asyncio.get_running_loop().create_task(self.ns.ensure_listed(node))
            task.add_done_callback(lambda t, node=node: self._listed(t, node))

    def _listed(self, task: asyncio.Task, node: Node) -> None:
        # a listing ahead that failed is simply not there: the walker's own will retry and report
        self._running -= 1
        if task.cancelled():
            return
        if task.exception() is not None:
            log.debug("listing ahead failed: %s", task.exception())
        else:
            node.ahead = True  # its own subdirectories are queued when the walker reads it
        self._pump()

    def close(self) -> None:
        self._queue.clear()
