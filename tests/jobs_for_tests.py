"""Jobs the worker tests run, loaded through BACKSTOP_TASK_MODULES=tests.jobs_for_tests."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import Field

from backstop import define_job
from backstop.contracts import Payload
from backstop.tasks.plugins import WebhookError


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


class Cause(Payload):
    cause: int = Field(default=0, ge=0, le=3)
    n: int = Field(default=0, ge=0)
    note: str = Field(default="", max_length=10_000)
    api_token: str = Field(default="", max_length=100)


def _charge(n: int):
    raise ValueError(f"order {n} could not be charged: card 4{n:03d} declined")


def _lookup(n: int):
    raise KeyError(f"customer {n:08x}-1f2e-4d3c-9b8a-{n:012x} not found")


def _call_upstream(n: int):
    raise TimeoutError(f"upstream 10.0.0.{n % 250} timed out after {n} ms")


@define_job("test.flaky", queue="system", model=Cause)
def flaky(payload: Cause, ctx):
    """Fails with one of three root causes (cause 1-3) whose messages vary; 0 succeeds."""
    causes = {1: _charge, 2: _lookup, 3: _call_upstream}
    if payload.note.startswith("error:"):
        raise ValueError(payload.note[6:] + b" \xff\xfe".decode("utf-8", "surrogateescape"))
    if payload.cause:
        causes[payload.cause](payload.n)
    return {"ok": True, "api_token_seen": bool(payload.api_token)}


class Flip(Payload):
    label: str = Field(default="", max_length=100)


@define_job("test.flip", queue="system", model=Flip)
def flip(payload: Flip, ctx):
    """Fails the first time a label runs, succeeds afterwards (a fixed-by-replay bug)."""
    if ctx.redis.set(f"test:flip:{payload.label}", 1, nx=True):
        raise RuntimeError(f"first run of {payload.label!r} fails")
    return {"label": payload.label}


class Nap(Payload):
    seconds: float = Field(default=0, ge=0, le=60)


@define_job("test.nap", queue="system", model=Nap)
def nap(payload: Nap, ctx):
    """Sleeps without touching Redis; each run appends "<id> <attempt>" to $TEST_RUNS_FILE."""
    time.sleep(payload.seconds)
    runs = os.environ.get("TEST_RUNS_FILE")
    if runs:
        with open(runs, "a") as out:
            out.write(f"{ctx.job_id} {ctx.attempt}\n")
    return {"slept": payload.seconds}


class Leak(Payload):
    url: str = Field(default="", max_length=2_000)
    secret: str = Field(default="", max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)
    error: str = Field(default="", max_length=10_000)
    max_tokens: int = Field(default=0, ge=0)


@define_job("test.leak", queue="system", model=Leak)
def leak(payload: Leak, ctx):
    """Fails like a webhook whose URL and answer carry secrets: reports `error` as progress,
    then raises a WebhookError with it (redaction tests)."""
    ctx.progress(50, payload.error)
    raise WebhookError(payload.error)


class Steps(Payload):
    steps: int = Field(default=4, ge=1, le=100)
    pause: float = Field(default=0.05, ge=0, le=5)


@define_job("test.steps", queue="system", model=Steps)
def steps(payload: Steps, ctx):
    """Reports progress 0, then each step's share up to 100, pausing between reports."""
    for step in range(payload.steps + 1):
        ctx.progress(100 * step // payload.steps, f"step {step} of {payload.steps}")
        time.sleep(payload.pause)
    return {"steps": payload.steps}


class Ledger(Payload):
    path: str = Field(max_length=500)


@define_job("test.ledger", queue="system", model=Ledger)
def ledger(payload: Ledger, ctx):
    """Appends its id to a file, one line per run: a record outside Redis, which a failover
    cannot roll back (tests/test_sentinel_failover.py counts jobs run twice with it)."""
    with open(payload.path, "a") as out:
        out.write(f"{ctx.job_id}\n")
