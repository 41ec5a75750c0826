"""A process's short memory of the API tokens, panel sessions and users it verified in Redis,
so callers stay authenticated through a Redis outage.

Decisions:
- Only positive answers are kept, each for AUTH_CACHE_SECONDS after Redis gave it (0: none
  kept). An unknown token is asked of Redis every time, so a token works the moment it is
  created; nothing is ever refused on the cache's word.
- A revocation in this process (tokens.revoke, users.close_session, revoke_all, set_role,
  delete) drops the entries it concerns at once. Every other process keeps trusting what it
  verified until its entry is AUTH_CACHE_SECONDS old: a revocation reaches every process
  within AUTH_CACHE_SECONDS. There is no invalidation message: it would need the Redis that
  may be down, and the bound holds without one.
- Ages are measured on the monotonic clock, so a wall-clock jump neither extends nor ends
  an entry.
- Bounded: at most MAX_ENTRIES per cache; the entry verified longest ago goes first.
- Per process and fork-safe: a forked child (a gunicorn worker) starts with empty caches and
  a fresh lock, so it trusts only what it verified itself, and never inherits a lock some
  thread of the parent held at the fork.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from .config import settings

MAX_ENTRIES = 10_000
_every_cache: weakref.WeakSet[TrustCache] = weakref.WeakSet()


def ttl() -> float:
    """AUTH_CACHE_SECONDS: how long a positive verification is trusted (0: not at all)."""
    return max(settings().float("auth_cache_seconds"), 0.0)


class TrustCache:
    """Positive verifications by key, each trusted for AUTH_CACHE_SECONDS; thread-safe."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        _every_cache.add(self)

    def put(self, key: Hashable, value: Any) -> None:
        """Remember value as verified now (nothing, when the cache is off)."""
        if not ttl():
            return
        with self._lock:
            self._entries[key] = (time.monotonic(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, key: Hashable) -> Any | None:
        """The value verified less than AUTH_CACHE_SECONDS ago, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry[0] >= ttl():
                del self._entries[key]
                return None
            return entry[1]

    def drop(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def drop_where(self, doomed: Callable[[Any, Any], bool]) -> None:
        """Drop every entry for which doomed(key, value) is true."""
        with self._lock:
            for key in [k for k, (_t, v) in self._entries.items() if doomed(k, v)]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    def _start_afresh(self) -> None:
        self._lock = threading.Lock()
        self._entries = OrderedDict()


def forget() -> None:
    """Empty every cache of this process (a forked child does this; so can tests)."""
    for cache in list(_every_cache):
        cache._start_afresh()


os.register_at_fork(after_in_child=forget)
