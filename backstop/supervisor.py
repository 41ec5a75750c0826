"""Several worker processes under one supervisor: `python worker.py --processes N|auto`.

How it is built, and why:
- Each child is a fresh interpreter (`python worker.py ... --supervised-by PID`), not a fork.
  A fork would copy whatever the parent held (Redis connections, locks taken by threads that
  do not exist in the child); a fresh process builds its WorkerProcess exactly as a single
  worker does, and its exit code or killing signal comes straight from Popen. The supervisor
  itself never talks to Redis.
- Each child is a whole WorkerProcess: its own worker id (host:pid:random), processing lists
  and heartbeat. A child that dies is to the reaper like any dead worker: once its heartbeat
  expires, a live worker (a sibling or its replacement) returns its jobs to their queues.
- Children run in a session of their own, so a terminal's Ctrl-C reaches only the
  supervisor, which forwards each SIGTERM/SIGINT once to every child: the first makes them
  shut down gracefully, a second makes them hurry (as a single worker does).
- A child asks the kernel for SIGTERM when its supervisor dies, even by SIGKILL (Linux's
  PR_SET_PDEATHSIG; elsewhere a thread watches the parent pid): it then shuts down
  gracefully, returning its jobs, instead of running on as an orphan.
- A child that exits unasked is restarted: at once if it had run for STABLE_SECONDS, else
  after a back-off that doubles with each quick crash, up to MAX_BACKOFF_SECONDS. A child that
  exits with code 2 (a configuration error, e.g. no Redis configured) stops them all: no
  restart can help.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("backstop.supervisor")

STABLE_SECONDS = 10.0  # a child that ran this long before it died is restarted at once
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
CONFIGURATION_ERROR = 2  # worker.py's exit code when it cannot start as configured
POLL_SECONDS = 0.1
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def cores() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def backoff_seconds(quick_crashes: int) -> float:
    """How long to wait before restarting a child that died this many times in a row, each
    within STABLE_SECONDS of its start (0: restart at once)."""
    if quick_crashes <= 0:
        return 0.0
    return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (quick_crashes - 1))


def describe_exit(returncode: int) -> str:
    """"exited with code 1" or "killed by SIGKILL" (Popen's negative return codes)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass
class Child:
    """One slot of the supervisor: the process filling it now (None between two)."""

    slot: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    quick_crashes: int = 0
    restart_at: float = 0.0  # monotonic; when proc is None and the supervisor is not stopping


class Supervisor:
    """Keeps `processes` children of `command` running until SIGTERM or SIGINT."""

    def __init__(self, command: list[str], processes: int):
        self.command = command
        self.children = [Child(slot) for slot in range(processes)]
        self.signals = 0
        self.exit_code = 0

    @property
    def stopping(self) -> bool:
        return self.signals > 0 or self.exit_code != 0

    def run(self) -> int:
        """Start every child, keep them running, and after a signal wait for all of them.
        Returns 0, or 2 if a child could not start as configured."""
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        log.info("supervisor %d starting %d worker processes", os.getpid(), len(self.children))
        for child in self.children:
            if not self.stopping:
                self.start(child)
        while not self.stopping or any(child.proc for child in self.children):
            self.tend()
            time.sleep(POLL_SECONDS)
        log.info("supervisor %d: every worker process has exited", os.getpid())
        return self.exit_code

    def tend(self) -> None:
        """Notice children that exited; start the ones whose restart is due."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                self.exited(child, now)
            if child.proc is None and not self.stopping and now >= child.restart_at:
                self.start(child)

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(self.command, start_new_session=True)
        child.started = time.monotonic()
        log.info("worker process %d started: pid %d", child.slot, child.proc.pid)
        if self.signals:  # it came while the child was being made: forward() missed it
            child.proc.send_signal(signal.SIGTERM)

    def exited(self, child: Child, now: float) -> None:
        assert child.proc is not None
        code, pid, ran = child.proc.returncode, child.proc.pid, now - child.started
        child.proc = None
        if self.stopping:
            log.info("worker process %d (pid %d) %s", child.slot, pid, describe_exit(code))
            return
        if code == CONFIGURATION_ERROR:
            log.error("worker process %d (pid %d) could not start as configured (exit code "
                      "2); stopping the others", child.slot, pid)
            self.exit_code = CONFIGURATION_ERROR
            self.forward(signal.SIGTERM)
            return
        child.quick_crashes = child.quick_crashes + 1 if ran < STABLE_SECONDS else 0
        delay = backoff_seconds(child.quick_crashes)
        child.restart_at = now + delay
        log.warning("worker process %d (pid %d) %s after %.1f s, unasked; restarting it %s",
                    child.slot, pid, describe_exit(code), ran,
                    f"in {delay:g} s (quick crash {child.quick_crashes} in a row)"
                    if delay else "now")

    def on_signal(self, signum: int, frame) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            log.info("%s: stopping %d worker processes (signal again to hurry)", name,
                     sum(child.proc is not None for child in self.children))
        else:
            log.info("%s again: worker processes hurry", name)
        self.forward(signum)

    def forward(self, signum: int) -> None:
        for child in self.children:
            if child.proc is not None:
                child.proc.send_signal(signum)


def follow_supervisor(supervisor_pid: int) -> None:
    """In a child: be sent SIGTERM when the supervisor dies, however it dies. Raises
    SystemExit if it is gone already (it died before the request was made)."""
    if not _parent_death_signal(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(supervisor_pid,), name="supervisor-watch",
                         daemon=True).start()
    if os.getppid() != supervisor_pid:
        raise SystemExit(f"worker.py: supervisor {supervisor_pid} is gone; not starting")


def _parent_death_signal(signum: int) -> bool:
    """Ask Linux to send signum when the parent dies (True if it agreed)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(supervisor_pid: int) -> None:
    """Where there is no PR_SET_PDEATHSIG: a parent pid that changed means it died."""
    while os.getppid() == supervisor_pid:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)
