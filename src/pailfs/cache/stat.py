"""The stat cache policy: how many metadata entries are trusted, and for how long.

Entries are the file system's own inode objects (anything with `expires` and
`used` attributes), so the cache costs no extra mapping per entry: it keeps a
count, and when the count passes the bound it sweeps the population the owner
hands it and evicts the least recently used ~10 %. `used` is a clock tick
stamped on each use (an attribute store: cheap on the hot path); eviction is
amortised O(log n) per admission.

Thread-safety: admit/forget/sweep run on the file system's loop thread only;
the hot path (reader thread) only reads `expires` and writes `used`.
"""

from __future__ import annotations

import logging
import math
import time
from operator import attrgetter
from typing import Callable, Iterable, Protocol

log = logging.getLogger(__name__)


class Cached(Protocol):
    expires: float
    used: int


class StatCache:
    def __init__(self, capacity: int, ttl: float, population: Callable[[], Iterable[Cached]],
                 on_evict: Callable[[Cached], None]) -> None:
        self.capacity = capacity
        self.ttl = math.inf if ttl < 0 else float(ttl)
        self._population = population
        self._on_evict = on_evict
        self.count = 0
        self.tick = 0
        self._now = self._deadline = -1.0
        self.hits = 0
        self.evictions = 0
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.ttl > 0

    def admit(self, entry: Cached, now: float | None = None) -> None:
        """Trust entry's attributes for ttl seconds from now."""
        if not self.enabled:
            entry.expires = 0.0
            return
        if entry.expires == 0.0:
            self.count += 1
        now = time.monotonic() if now is None else now
        if now != self._now:
            # one deadline and one tick object per admission time (a whole LIST page
            # shares them): no float and int objects per entry
            self._now, self._deadline = now, now + self.ttl
            self.tick += 1
        entry.expires = self._deadline
        entry.used = self.tick
        if self.count > self.capacity:
            self._sweep()

    def forget(self, entry: Cached) -> None:
        """Stop trusting entry (changed, deleted, or evicted)."""
        if entry.expires != 0.0:
            entry.expires = 0.0
            self.count -= 1

    def _sweep(self) -> None:
        now = time.monotonic()
        cached = [e for e in self._population() if e.expires != 0.0]
        self.count = len(cached)
        target = int(self.capacity * 0.9)
        if self.count <= target:
            return
        # expired entries go first, then least recently used (ticks mostly follow the
        # population's order, so the sort is close to one linear pass)
        excess = self.count - target
        if not self._warned:
            self._warned = True
            log.warning("the stat cache is full (max_stat_cache_size=%d): evicted entries cost a HEAD "
                        "each when looked up again; size it to the number of files and directories "
                        "the job uses (about 400 bytes of memory each)", self.capacity)
        victims = [e for e in cached if e.expires <= now][:excess]
        if len(victims) < excess:
            live = [e for e in cached if e.expires > now]
            live.sort(key=attrgetter("used"))
            victims += live[: excess - len(victims)]
        for entry in victims:
            entry.expires = 0.0
            self.evictions += 1
            self._on_evict(entry)
        self.count = target
