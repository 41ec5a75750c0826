"""The handler registry and the context a handler runs with.

A handler is ``fn(payload: Model, ctx: JobContext) -> JSON-able result or None``.
Register one with ``@handler("email.send")``; add a whole new job with
``@define_job("myapp.report", queue="system", model=ReportPayload)``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import BaseModel

from .config import settings
from .connection import is_try_later
from .contracts import register_job

Handler = Callable[[BaseModel, "JobContext"], Any]
HANDLERS: dict[str, Handler] = {}


def handler(job_name: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler of an existing job name."""

    def decorate(fn: Handler) -> Handler:
        HANDLERS[job_name] = fn
        return fn

    return decorate


def define_job(job_name: str, *, queue: str, model: type[BaseModel]) -> Callable:
    """Register a new job name with its contract and handler (the extension point)."""
    register_job(job_name, queue, model)
    return handler(job_name)


@dataclass
class JobContext:
    """What a running handler knows and can do."""

    job_id: str
    job_name: str
    queue: str
    attempt: int
    max_attempts: int
    deadline: float
    redis: redis.Redis
    report: Callable[[str, int, str], None] = field(repr=False, default=lambda *a: None)

    def remaining(self) -> float:
        """Seconds left before the queue's timeout; use it for I/O timeouts."""
        return max(0.1, self.deadline - time.monotonic())

    def progress(self, percent: int, message: str = "") -> None:
        """Report progress (0-100 and a message); stored and published as an event.

        Progress is advisory: while Redis cannot take it (an outage, maxmemory) it is dropped
        rather than failing the job.
        """
        try:
            self.report(self.job_id, max(0, min(100, int(percent))), message[:500])
        except redis.RedisError as exc:
            if not is_try_later(exc):
                raise

    def enqueue(self, job_name: str, payload: Any, **options) -> str:
        """Enqueue a follow-up job; see backstop.producers.enqueue."""
        from .producers import enqueue

        return enqueue(job_name, payload, **options)


_loaded = False


def load_handlers() -> None:
    """Import Backstop's own task modules and those named in BACKSTOP_TASK_MODULES."""
    global _loaded
    if _loaded:
        return
    modules = ["ai", "workflows", "analytics", "email", "plugins", "system"]
    for name in modules:
        importlib.import_module(f"backstop.tasks.{name}")
    for name in filter(None, (m.strip() for m in settings().backstop_task_modules.split(","))):
        importlib.import_module(name)
    _loaded = True
