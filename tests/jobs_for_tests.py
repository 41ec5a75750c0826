"""Jobs the worker tests run, loaded through BACKSTOP_TASK_MODULES=tests.jobs_for_tests."""

from __future__ import annotations

import os
import time

from pydantic import Field

from backstop import define_job
from backstop.contracts import Payload


class Mark(Payload):
    key: str = Field(default="test:marks", max_length=100)
    seconds: float = Field(default=0, ge=0, le=60)


def _mark(payload: Mark, ctx, outcome: str) -> None:
    ctx.redis.rpush(payload.key, f"{ctx.job_id}:{ctx.attempt}:{outcome}:{time.time()}")


@define_job("test.work", queue="system", model=Mark)
def work(payload: Mark, ctx):
    """Records its start, works for `seconds` (reporting progress), records its end."""
    _mark(payload, ctx, "start")
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline:
        ctx.progress(int(100 * (1 - (deadline - time.monotonic()) / payload.seconds)))
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    _mark(payload, ctx, "end")
    return {"attempt": ctx.attempt}


@define_job("test.fail", queue="system", model=Mark)
def fail(payload: Mark, ctx):
    """Fails on every attempt, recording when it ran."""
    _mark(payload, ctx, "fail")
    raise ValueError(f"order {ctx.job_id} could not be charged")


@define_job("test.crash", queue="system", model=Mark)
def crash(payload: Mark, ctx):
    """Kills its own worker process, every time (a poison job)."""
    _mark(payload, ctx, "crash")
    os._exit(13)
