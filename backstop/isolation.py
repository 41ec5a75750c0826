"""Run one job in a child process, so that a job that kills its process takes only itself.

A job that was running in a worker process when it died (its record's ``lost`` count is at
least 1) is a suspect: every thread of that process was running something, and any of them
may have killed it. Its next attempts run in a child (``python -m backstop.isolation``). If the
child dies, that attempt is charged to that job alone, as a WorkerLost failure that is retried
and ends in the DLQ like any other; jobs that were merely running beside it are not charged
(the reaper gives their attempt back) and simply run again.

The parent sends one JSON line (the job's context) and then the framed message on stdin; the
child answers one JSON line on its own copy of stdout: {"ok": true, "result": ...} or
{"ok": false, "error": {type, message, stack, code}, "permanent": bool}.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from .connection import client
from .dlq import describe_exception
from .errors import JobTimeout, PermanentFailure, WorkerLost
from .execution import enter_job
from .hueys import message_task, open_message
from .jobs import load_handlers


@dataclass(frozen=True)
class Isolated:
    """What the child needs to know of the attempt it runs."""

    job_id: str
    job_name: str
    queue: str
    attempt: int
    max_attempts: int
    timeout: float


_children: set[subprocess.Popen] = set()
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class HandlerFailed(Exception):
    """The job's handler raised in the child: its described error, and whether it is final."""

    def __init__(self, error: dict, permanent: bool):
        super().__init__(error.get("message", ""))
        self.error = error
        self.permanent = permanent


def run_isolated(attempt: Isolated, message: bytes):
    """Run the framed message's job in a child process; return the handler's result.

    Raises JobTimeout (the child ran past the timeout and was killed), WorkerLost (the child
    died without answering) or HandlerFailed (the handler raised).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.Popen([sys.executable, "-m", "backstop.isolation"], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    request = json.dumps(asdict(attempt)).encode() + b"\n" + message
    _children.add(child)
    try:
        out, _ = child.communicate(request, timeout=attempt.timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise JobTimeout(f"ran past the {attempt.queue} queue's timeout of "
                         f"{attempt.timeout:g} s (in an isolated process)") from None
    finally:
        _children.discard(child)
    return _reply(child.returncode, out)


def stop_children() -> None:
    """Kill every isolated job still running (a worker that shuts down requeues them)."""
    for child in list(_children):
        child.kill()


def _reply(returncode: int, out: bytes):
    lines = out.strip().splitlines()
    if returncode != 0 or not lines:
        raise WorkerLost(f"the job killed the process running it (exit code {returncode}); "
                         "it ran isolated because a worker died while it was running")
    reply = json.loads(lines[-1])
    if reply["ok"]:
        return reply["result"]
    raise HandlerFailed(reply["error"], reply["permanent"])


def child_main() -> None:
    """The child: run one attempt, answer on the original stdout (handlers' prints go to
    stderr)."""
    _die_with_parent()
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    header, message = sys.stdin.buffer.read().split(b"\n", 1)
    attempt = Isolated(**json.loads(header))
    try:
        result = _execute(attempt, message)
        reply = {"ok": True, "result": result}
    except Exception as exc:  # noqa: BLE001  (every handler error is reported to the parent)
        reply = {"ok": False, "error": describe_exception(exc),
                 "permanent": isinstance(exc, PermanentFailure)}
    answer.write(json.dumps(reply, default=str) + "\n")
    answer.flush()


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this child if its worker dies (kill -9 included): the
    job goes back to its queue with the worker's other jobs and must not run on meanwhile."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return


def _execute(attempt: Isolated, message: bytes):
    load_handlers()
    task = message_task(attempt.queue, *open_message(message))
    enter_job(attempt.job_id, attempt.job_name, attempt.queue, attempt.attempt,
              attempt.max_attempts, time.monotonic() + attempt.timeout, client())
    return task.execute()


if __name__ == "__main__":
    child_main()
