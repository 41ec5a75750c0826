"""One object per process for the helpers that run a thread of their own (the mode watcher,
the outbox drainer, the direct runner): made on first use, and made again in a forked child
(a gunicorn worker), whose parent's threads did not survive the fork."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """make() builds (and starts) the object; stop(obj) ends its threads; stale(obj) says
    the object no longer fits (e.g. the process now talks to another Redis)."""

    def __init__(self, make: Callable[[], T], stop: Callable[[T], None] = lambda obj: None,
                 stale: Callable[[T], bool] = lambda obj: False):
        self.make, self.stop, self.stale = make, stop, stale
        self.held: tuple[int, T] | None = None
        self.lock = threading.Lock()

    def get(self) -> T:
        held = self.held
        if held is not None and held[0] == os.getpid() and not self.stale(held[1]):
            return held[1]
        with self.lock:
            held = self.held
            if held is None or held[0] != os.getpid() or self.stale(held[1]):
                self._stop(held)
                held = self.held = (os.getpid(), self.make())
            return held[1]

    def peek(self) -> T | None:
        """This process's object if it exists (never makes one)."""
        held = self.held
        return held[1] if held is not None and held[0] == os.getpid() else None

    def forget(self) -> None:
        """Stop this process's object; the next get() makes a new one."""
        with self.lock:
            self._stop(self.held)
            self.held = None

    def _stop(self, held: tuple[int, T] | None) -> None:
        if held is not None and held[0] == os.getpid():  # a parent's threads are not ours
            self.stop(held[1])
